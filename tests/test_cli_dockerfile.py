"""The Dockerfile, checked without a container runtime: its COPY sources exist and reach the build context, the
image is CUDA-based, installs our wheel with the GPU extra, runs as a non-root user, exposes the servers' default
ports, its ARCTIC_EMBED_* variables are real options, and its entrypoint and health check commands run here."""

from __future__ import annotations

import fnmatch
import shlex
import subprocess
import sys
from pathlib import Path

from arctic_embed.cli import build_parser
from arctic_embed.config import ServerConfig
from arctic_embed.testing import free_port

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _ignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)


def _exec_form(args: str) -> list[str]:
    import json

    return json.loads(args) if args.startswith("[") else shlex.split(args)


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    copies = [args for word, args in instructions() if word == "COPY" and "--from=" not in args]
    assert copies
    for args in copies:
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not _ignored(source), f"COPY {source}: excluded by .dockerignore"
            assert subprocess.run(["git", "ls-files", "--error-unmatch", source], cwd=ROOT,
                                  capture_output=True).returncode == 0, f"COPY {source}: not tracked by git"


def test_cuda_base_gpu_extra_non_root_ports() -> None:
    steps = instructions()
    bases = [args for word, args in steps if word == "FROM"]
    assert bases and all("nvidia/cuda" in b for b in bases)
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "[gpu]" in runs
    gpu_extra = [line for line in (ROOT / "pyproject.toml").read_text().splitlines() if line.startswith("gpu = [")]
    assert gpu_extra and '"vllm' in gpu_extra[0]
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    exposed = {int(p) for word, args in steps if word == "EXPOSE" for p in args.split()}
    defaults = ServerConfig()
    assert {defaults.port, defaults.http_port} <= exposed


def test_environment_names_real_options() -> None:
    _, serve = build_parser()
    dests = {a.dest.upper() for a in serve._actions}
    env_line = " ".join(args for word, args in instructions() if word == "ENV")
    names = [item.split("=")[0] for item in shlex.split(env_line) if item.startswith("ARCTIC_EMBED_")]
    assert names
    for name in names:
        assert name.removeprefix("ARCTIC_EMBED_") in dests, name


def _console(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module = {"arctic-embed": "arctic_embed", "arctic-gen": "arctic_gen.cli", "python": None}[name]
    return [sys.executable] if module is None else [sys.executable, "-m", module]


def test_entrypoint_command_runs_here() -> None:
    steps = dict(instructions())
    command = _exec_form(steps["ENTRYPOINT"]) + _exec_form(steps["CMD"])
    result = subprocess.run([*_console(command[0]), *command[1:], "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--http-port" in result.stdout


def test_healthcheck_command_runs_here() -> None:
    steps = dict(instructions())
    health = steps["HEALTHCHECK"]
    command = _exec_form(health[health.index("CMD") + 3:].strip())
    assert command[:3] == ["python", "-m", "arctic_embed.healthcheck"]
    target = f"127.0.0.1:{free_port()}"  # nothing listens: unhealthy, one line, quickly
    result = subprocess.run([sys.executable, *command[1:3], target, "--timeout", "1"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and result.stdout.strip().startswith(target)
