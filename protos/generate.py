"""Generate the Python gRPC stubs for every .proto under protos/ into OUT/arctic_protos.

Run by CMake at build time (scikit-build-core). The stubs live under one top-level package, `arctic_protos`, so that
the proto packages (`arctic.embed.v1`, `arctic_inference`, ...) keep their wire names while the Python modules never
clash with other distributions (e.g. the real `arctic_inference` package).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PREFIX = "arctic_protos"


def generate(out: Path) -> None:
    from grpc_tools import protoc

    here = Path(__file__).resolve().parent
    protos = sorted(p.relative_to(here) for p in here.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / PREFIX
        for rel in protos:
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(here / rel, staged / rel)
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out / PREFIX, ignore_errors=True)
        include = str(Path(protoc.__file__).parent / "_proto")
        args = ["protoc", f"-I{tmp}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
                f"--grpc_python_out={out}"] + [f"{PREFIX}/{rel}" for rel in protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
    for directory in [out / PREFIX, *(p for p in (out / PREFIX).rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    generate(parser.parse_args(sys.argv[1:]).out)
