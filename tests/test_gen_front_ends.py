"""`arctic-gen serve --api-server-count 2`: two gRPC front ends on one engine and one port. Connections spread over
both, greedy text equals LLM.generate through either, SIGTERM lets a running stream finish, and a front end
or the engine that dies takes the whole server down (no half-alive server, no orphan processes)."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest

from arctic_gen.testing import cpu_vllm_env

cpu_vllm_env()
pytestmark = pytest.mark.vllm

ARGS = ["--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes", str(64 * 2**20), "--enforce-eager",
        "--api-server-count", "2"]
PROMPTS = ["Hello world the model", "one two three four", "The river and the mountain", "red green blue yellow"]


def _start(tmp_path, name: str):
    from arctic_gen.testing import start_gen_server, tiny_llama

    return start_gen_server(tiny_llama(), ARGS, log_path=tmp_path / f"{name}.log")


def _stub(target: str):
    from arctic_protos.arctic.gen.v1 import generate_pb2_grpc

    # A channel of its own (own TCP connection): SO_REUSEPORT spreads connections, not calls.
    channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, generate_pb2_grpc.GenerateServiceStub(channel)


def _front_ends(server) -> list:
    import psutil

    from arctic_gen.server.front_ends import FRONT_END_TITLE

    children = psutil.Process(server.process.pid).children(recursive=True)
    return [p for p in children if FRONT_END_TITLE in " ".join(p.cmdline())]


def test_two_front_ends_serve_the_same_greedy_text_and_drain_on_sigterm(tmp_path) -> None:
    pytest.importorskip("vllm")
    from arctic_gen.testing import reference_generate, tiny_llama
    from arctic_protos.arctic.gen.v1 import generate_pb2

    reference = reference_generate(tiny_llama(), PROMPTS, max_tokens=24)  # shared with test_gen_server
    server = _start(tmp_path, "drain")
    try:
        assert len(_front_ends(server)) == 2
        seen: dict[int, int] = {}
        for i in range(16):
            channel, stub = _stub(server.target)
            info = stub.Info(generate_pb2.InfoRequest(), timeout=30)
            assert info.front_end_count == 2
            seen[info.front_end_index] = seen.get(info.front_end_index, 0) + 1
            prompt, ref = PROMPTS[i % len(PROMPTS)], reference[i % len(PROMPTS)]
            request = generate_pb2.GenerateRequest(text=prompt, sampling=generate_pb2.SamplingOptions(
                max_tokens=24, temperature=0.0, ignore_eos=True))
            messages = list(stub.Generate(request, timeout=60))
            assert [t for m in messages for t in m.token_ids] == ref["token_ids"], (info.front_end_index, prompt)
            assert "".join(m.text for m in messages) == ref["text"]
            channel.close()
        assert set(seen) == {0, 1}, seen  # 16 connections: both front ends took some

        # SIGTERM while a long stream runs: it finishes whole, then the server exits 0.
        channel, stub = _stub(server.target)
        request = generate_pb2.GenerateRequest(text=PROMPTS[0], sampling=generate_pb2.SamplingOptions(
            max_tokens=300, temperature=0.0, ignore_eos=True))
        got: list = []

        def consume() -> None:
            for message in stub.Generate(request, timeout=120):
                got.append(message)

        reader = threading.Thread(target=consume)
        reader.start()
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        reader.join(120)
        channel.close()
        assert sum(len(m.token_ids) for m in got) == 300 and got[-1].finish_reason == 2  # LENGTH
        assert server.process.wait(120) == 0
    finally:
        server.stop()


@pytest.mark.parametrize("victim", ["front end", "engine"])
def test_a_process_that_dies_stops_the_server(tmp_path, victim: str) -> None:
    pytest.importorskip("vllm")
    import psutil

    server = _start(tmp_path, "kill")
    try:
        everything = psutil.Process(server.process.pid).children(recursive=True)
        front_ends = _front_ends(server)
        engines = [p for p in everything if p not in front_ends and "EngineCore" in " ".join(p.cmdline())]
        assert len(front_ends) == 2 and len(engines) == 1, [p.cmdline() for p in everything]
        (front_ends[0] if victim == "front end" else engines[0]).kill()
        assert server.process.wait(120) != 0  # the launcher notices and stops with an error
        _, alive = psutil.wait_procs(everything, timeout=60)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        server.stop()


def test_the_shared_port_is_never_silently_shared_with_another_server() -> None:
    import socket

    from arctic_gen.server.front_ends import reserve_port

    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even a server that allows sharing
    other.bind(("127.0.0.1", 0))
    other.listen()
    try:
        with pytest.raises(OSError):
            reserve_port("127.0.0.1", other.getsockname()[1])
    finally:
        other.close()
    holder, port = reserve_port("127.0.0.1", 0)
    try:
        front_end = socket.socket()  # what each front end's gRPC server does (SO_REUSEPORT)
        front_end.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        front_end.bind(("127.0.0.1", port))
        front_end.close()
    finally:
        holder.close()


def test_serve_on_a_busy_port_exits_with_a_clear_error() -> None:
    import os
    import socket
    import subprocess
    import sys

    pytest.importorskip("vllm")
    from arctic_gen.testing import tiny_llama

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        out = subprocess.run([sys.executable, "-m", "arctic_gen.server.cli", "serve", "--model", str(tiny_llama()),
                              "--host", "127.0.0.1", "--port", str(busy.getsockname()[1]), *ARGS],
                             capture_output=True, text=True, timeout=300, env=dict(os.environ))
    finally:
        busy.close()
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cannot listen on 127.0.0.1:" in out.stderr
