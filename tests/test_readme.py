"""Every code block of README.md runs as written (one test per block; the test fails when a block breaks).

Each ```python / ```bash block carries a directive on the line above it, `<!-- readme-test: KIND -->`:
- `run`: runs on its own; `embed`: against an `arctic-embed serve` this module starts (gRPC + HTTP);
- `gen-serve`: a block that starts `arctic-gen serve` (run in the background until "serving"); `gen`: against it;
- `grpcurl`: grpcurl commands against the embedding server: run by grpcurl when it is installed, else each command
  is replayed through Python gRPC with the same JSON (parsed into the method's request type) and reflection;
- `skip REASON`: not run (a reason is required; the list of skipped blocks is checked below).
A block without a directive fails the test. Blocks run in a scratch directory holding a `.venv` link to the venv
running the tests (so `. .venv/bin/activate` works as from the repository root). The servers listen on free ports:
`localhost:50050`, `localhost:8080`, `localhost:50051` (and the generation server's metrics port 9400) in a block
are pointed at them, and `$MODEL` is the tiny
random Llama (the generation examples default to SmolLM2 from the Hub otherwise).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(?:<!-- readme-test: (?P<directive>[^\n]*?) -->\n)?```(?P<lang>[a-z]*)\n(?P<code>.*?)```",
                   re.S)
KINDS = ("run", "embed", "gen-serve", "gen", "grpcurl", "skip")
BLOCK_TIMEOUT_S = 300
SERVER_START_TIMEOUT_S = 600  # generous: on a shared 2-core machine a vLLM start took 4+ minutes under load


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    kind: str
    reason: str
    code: str

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}-{self.kind}"


def readme_blocks() -> list[Block]:
    text = (ROOT / "README.md").read_text()
    blocks = []
    for match in FENCE.finditer(text):
        lang = match["lang"]
        if lang not in ("python", "bash", "sh"):
            continue  # diagrams and output samples
        directive = (match["directive"] or "").strip()
        kind, _, reason = directive.partition(" ")
        line = text.count("\n", 0, match.start("code"))
        blocks.append(Block(line, lang, kind, reason.strip(), match["code"]))
    return blocks


BLOCKS = readme_blocks()


def test_every_block_has_a_directive_and_skips_have_reasons() -> None:
    assert BLOCKS
    for block in BLOCKS:
        assert block.kind in KINDS, f"README line {block.line}: add `<!-- readme-test: KIND -->` above the block"
        if block.kind == "skip":
            assert len(block.reason) > 20, f"README line {block.line}: say why the block is not run"
    runnable = [b for b in BLOCKS if b.kind != "skip"]
    assert len(runnable) >= len(BLOCKS) - 3, "most README blocks must run"


# ------------------------------------------------------------------------------------------------ set-up
@dataclass
class Ports:
    grpc: int = 0
    http: int = 0
    gen: int = 0
    gen_metrics: int = 0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("readme")
    (path / ".venv").symlink_to(sys.prefix)  # the venv running the tests (CI: the repository's .venv)
    return path


@pytest.fixture(scope="module")
def model_env() -> dict[str, str]:
    from arctic_gen.testing import cpu_vllm_env, tiny_llama

    cpu_vllm_env()
    return {**os.environ, "MODEL": str(tiny_llama())}


@pytest.fixture(scope="module")
def ports() -> Ports:
    return Ports()


@pytest.fixture(scope="module")
def embed_server(ports, workdir):
    from arctic_embed.testing import free_port, start_server

    http = free_port()
    server = start_server(["--http-port", str(http), "--tokenizer-workers", "1"],
                          log_path=str(workdir / "embed_server.log"))
    ports.grpc, ports.http = server.port, http
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gen_server(ports, workdir, model_env):
    from arctic_embed.testing import free_port

    blocks = [b for b in BLOCKS if b.kind == "gen-serve"]
    assert len(blocks) == 1, "one README block starts arctic-gen serve"
    ports.gen, ports.gen_metrics = free_port(), free_port()
    log = workdir / "gen_server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(["bash", "-ec", _localize(blocks[0].code, ports)], cwd=workdir, env=model_env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while b"arctic-gen: serving" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            _kill(process)
            pytest.fail(f"README's arctic-gen serve block did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    yield process
    _kill(process)


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _localize(code: str, ports: Ports) -> str:
    for name, port in (("localhost:50050", ports.grpc), ("localhost:8080", ports.http),
                       ("localhost:50051", ports.gen)):
        if port:
            code = code.replace(name, f"localhost:{port}")
    if ports.gen:
        code = code.replace("--port 50051", f"--port {ports.gen}")
        code = code.replace("--metrics-port 9400", f"--metrics-port {ports.gen_metrics}")
        code = code.replace("localhost:9400", f"localhost:{ports.gen_metrics}")
    return code


def _run(block: Block, ports: Ports, workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    code = _localize(block.code, ports)
    if block.lang == "python":
        script = workdir / f"block_{block.line}.py"
        script.write_text(code)
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-eo", "pipefail", "-c", code]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)


# ------------------------------------------------------------------------------------------------ grpcurl
def _grpcurl_commands(code: str) -> list[list[str]]:
    joined = code.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip().startswith("grpcurl")]


def _replay_grpcurl(argv: list[str]) -> str:
    """What grpcurl does for `-plaintext [-d JSON] HOST:PORT (list | SERVICE/METHOD)`, through Python gRPC."""
    import grpc
    from google.protobuf import descriptor_pool, json_format, message_factory
    from grpc_health.v1 import health_pb2  # noqa: F401 - registers grpc.health.v1 in the default pool
    from grpc_reflection.v1alpha import reflection_pb2

    import arctic_protos.arctic.embed.v1.embed_pb2  # noqa: F401
    import arctic_protos.arctic_inference.inference_pb2  # noqa: F401

    args = argv[1:]
    data = None
    positional: list[str] = []
    while args:
        arg = args.pop(0)
        if arg == "-d":
            data = args.pop(0)
        elif arg == "-plaintext":
            continue
        else:
            assert not arg.startswith("-"), f"grpcurl flag {arg} is not replayed"
            positional.append(arg)
    target, *rest = positional
    with grpc.insecure_channel(target) as channel:
        if rest == ["list"]:
            call = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                         request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                         response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
            reply = next(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30))
            return "\n".join(sorted(s.name for s in reply.list_services_response.service))
        (method,) = rest
        service_name, method_name = method.rsplit("/", 1)
        service = descriptor_pool.Default().FindServiceByName(service_name)
        descriptor = service.methods_by_name[method_name]
        request_cls = message_factory.GetMessageClass(descriptor.input_type)
        response_cls = message_factory.GetMessageClass(descriptor.output_type)
        request = json_format.Parse(data or "{}", request_cls())
        call = channel.unary_unary(f"/{service_name}/{method_name}", request_serializer=request_cls.SerializeToString,
                                   response_deserializer=response_cls.FromString)
        return json_format.MessageToJson(call(request, timeout=60))


# ------------------------------------------------------------------------------------------------ the blocks
@pytest.mark.vllm
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind != "skip"], ids=lambda b: b.id)
def test_readme_block_runs(block: Block, request, ports, workdir, model_env) -> None:
    if block.kind in ("embed", "grpcurl"):
        request.getfixturevalue("embed_server")
    if block.kind in ("gen", "gen-serve"):
        request.getfixturevalue("gen_server")
    if block.kind == "gen-serve":
        return  # the fixture ran it and saw it serve
    if block.kind == "grpcurl" and shutil.which("grpcurl") is None:
        for argv in _grpcurl_commands(_localize(block.code, ports)):
            assert _replay_grpcurl(argv).strip(), argv
        return
    result = _run(block, ports, workdir, model_env)
    assert result.returncode == 0, (f"README block at line {block.line} failed ({result.returncode}):\n"
                                    f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
