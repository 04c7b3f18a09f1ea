"""Reliability of `arctic-embed serve` (issue 20, and issue 15's zero-failure item): no CANCELLED at 4,096 concurrent
unary calls on one channel, INVALID_ARGUMENT for undecodable bytes on every method (streams end, never hang),
admission before tokenizing, failures counted by code, crash safety of tokenizer workers and replicas (poison inputs
fail alone), metrics bound to --host."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from arctic_embed import probes
from arctic_embed.client import build_request
from arctic_embed.testing import free_port, start_server
from arctic_protos.arctic.embed.v1 import embed_pb2 as pb
from arctic_protos.arctic.embed.v1 import embed_pb2_grpc as pb_grpc

POISON_TEXT = "__poison_for_the_tokenizer__"
POISON_ID = 29999
METRICS_PORT = free_port()
QUEUE_TOKENS = 15_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("reliability") / "server.log"
    env = {"ARCTIC_EMBED_FAULT_TOKENIZER_EXIT_ON": POISON_TEXT, "ARCTIC_EMBED_FAULT_REPLICA_EXIT_ON_ID": str(POISON_ID)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        srv = start_server(["--replicas-per-device", "1", "--tokenizer-workers", "2", "--torch-threads", "1",
                            "--max-queued-tokens", str(QUEUE_TOKENS), "--metrics-port", str(METRICS_PORT)],
                           log_path=str(log))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield srv
    assert srv.stop() == 0, log.read_text()[-3000:]


@pytest.fixture()
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.EmbedServiceStub(channel)


def _metrics() -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).read().decode()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_2048_concurrent_arctic_encode_calls_on_one_channel_are_never_cancelled(server) -> None:
    # Before: grpc core's pending-call backlog protector zombied calls past ~1,000 waiting (CANCELLED, no handler).
    # (4,096 in-process: test_reliability_transport.py; 4,096 against the server: load_tests/reliability.)
    codes = asyncio.run(probes.concurrent_encode(server.target, n=2048, concurrency=2048, prompt="hello world "))
    assert codes == {"OK": 2048}, codes


def test_malformed_bytes_are_invalid_argument_on_every_method_and_streams_end(server) -> None:
    report = probes.malformed_probe(
        server.target, probes.EMBED_UNARY, probes.EMBED_SERVER_STREAMING,
        ("/arctic.embed.v1.EmbedService/EmbedStream", *probes.REFLECTION),
        good_stream_item=probes.good_embed_stream_item(), bidi_with_items="/arctic.embed.v1.EmbedService/EmbedStream",
        timeout_s=20)
    assert report.cases >= 56  # 8 unary + 1 server-streaming + 3 bidi methods; EmbedStream also good-bad(-good)
    assert report.details == [], report.details
    assert report.hangs == 0 and report.unknown_or_internal == 0
    assert report.statuses == {"INVALID_ARGUMENT": report.cases}


def test_overload_is_only_ok_or_resource_exhausted_and_rejections_are_fast(server) -> None:
    bucket = 'arctic_embed_failure_duration_seconds_bucket{code="RESOURCE_EXHAUSTED",le="%s"}'
    before = _metrics()
    report = asyncio.run(probes.overload_probe(server.target, n=100, inputs=64, text="overload"))
    after = _metrics()
    assert set(report.statuses) <= {"OK", "RESOURCE_EXHAUSTED"}, report.statuses
    assert report.statuses["RESOURCE_EXHAUSTED"] > 0 and report.statuses["OK"] > 0, report.statuses
    # Admission happens before tokenizing: in the server every rejection took under 50 ms (was 6-7 s; what the
    # client sees on top is its own and the transport's queueing on this shared 2-core machine).
    rejected = after[bucket % "+Inf"] - before.get(bucket % "+Inf", 0)
    fast = after[bucket % "0.05"] - before.get(bucket % "0.05", 0)
    assert rejected == report.statuses["RESOURCE_EXHAUSTED"] and fast == rejected, (fast, rejected)


def test_deadlines_and_cancels_are_counted_by_code(server, stub) -> None:
    before = _metrics()
    big = build_request(["word " * 300] * 100)  # 25.6K tokens: seconds of CPU work, within the queue limit
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(big, timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    call = stub.Embed.future(big, timeout=60)
    time.sleep(0.3)
    call.cancel()
    time.sleep(1.0)
    after = _metrics()
    key = 'arctic_embed_request_failures_total{code="%s",rpc="Embed"}'
    assert after.get(key % "DEADLINE_EXCEEDED", 0) >= before.get(key % "DEADLINE_EXCEEDED", 0) + 1
    assert after.get(key % "CANCELLED", 0) >= before.get(key % "CANCELLED", 0) + 1


def test_metrics_bind_follows_host(server) -> None:
    import psutil

    addresses = {c.laddr.ip for c in psutil.Process(server.process.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == METRICS_PORT}
    assert addresses == {"127.0.0.1"}


def _load(target: str, n: int, texts_per_request: int, on_started) -> list[str]:
    async def run() -> list[str]:
        failures: list[str] = []
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.EmbedServiceStub(channel)

            async def one(i: int) -> None:
                texts = [f"request {i} text {j} about crash safety" for j in range(texts_per_request)]
                try:
                    reply = await stub.Embed(pb.EmbedRequest(texts=texts), timeout=300)
                    if len(reply.embeddings) != texts_per_request:
                        failures.append("wrong count")
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")

            tasks = [asyncio.create_task(one(i)) for i in range(n)]
            await asyncio.sleep(0.3)
            await asyncio.to_thread(on_started)
            await asyncio.gather(*tasks)
        return failures

    return asyncio.run(run())


def test_sigkill_of_tokenizer_workers_under_load_loses_nothing(server) -> None:
    def kill_twice() -> None:
        for _ in range(2):
            pids = probes.child_pids(server.process.pid, "arctic_embed.tokenizer_pool")
            assert pids
            os.kill(pids[0], signal.SIGKILL)
            time.sleep(1.0)

    assert _load(server.target, n=24, texts_per_request=40, on_started=kill_twice) == []
    deadline = time.monotonic() + 60
    while len(probes.child_pids(server.process.pid, "arctic_embed.tokenizer_pool")) < 2:
        assert time.monotonic() < deadline, "tokenizer workers did not come back"
        time.sleep(0.2)


def test_poison_text_fails_alone_with_invalid_argument(server) -> None:
    result: dict = {}

    def poison() -> None:
        with grpc.insecure_channel(server.target) as channel:
            texts = [f"innocent {j}" for j in range(39)] + [POISON_TEXT]
            try:
                pb_grpc.EmbedServiceStub(channel).Embed(pb.EmbedRequest(texts=texts), timeout=120)
            except grpc.RpcError as exc:
                result["code"] = exc.code()
                result["details"] = exc.details()

    thread = threading.Thread(target=poison)
    assert _load(server.target, n=20, texts_per_request=40, on_started=thread.start) == []
    thread.join(120)
    assert result["code"] == grpc.StatusCode.INVALID_ARGUMENT, result
    assert "tokenizer" in result["details"] and "pid" not in result["details"]


def test_poison_ids_that_kill_the_replica_fail_alone(server) -> None:
    result: dict = {}

    def poison() -> None:
        with grpc.insecure_channel(server.target) as channel:
            ids = np.array([101, POISON_ID, 102], "<i4").tobytes()
            try:
                pb_grpc.EmbedServiceStub(channel).Embed(pb.EmbedRequest(token_ids=[pb.TokenIds(ids_i32=ids)]),
                                                        timeout=240)
            except grpc.RpcError as exc:
                result["code"] = exc.code()

    thread = threading.Thread(target=poison)
    assert _load(server.target, n=20, texts_per_request=8, on_started=thread.start) == []
    thread.join(240)
    assert result["code"] == grpc.StatusCode.INVALID_ARGUMENT, result
    with grpc.insecure_channel(server.target) as channel:  # the replica is back and serves
        reply = pb_grpc.EmbedServiceStub(channel).Embed(build_request(["after the poison"]), timeout=120)
    assert len(reply.embeddings) == 1


def test_a_model_that_cannot_load_fails_the_server_at_start_with_one_line(tmp_path, minilm_path) -> None:
    import subprocess
    import sys

    broken = tmp_path / "broken-minilm"
    broken.mkdir()
    for item in minilm_path.iterdir():
        if item.name != "model.safetensors":
            (broken / item.name).symlink_to(item)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    out = subprocess.run([sys.executable, "-m", "arctic_embed", "serve", "--model", str(broken), "--host",
                          "127.0.0.1", "--port", str(free_port()), "--http-port", "0", "--torch-threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot start" in errors[0] and "model could not be loaded" in errors[0], errors
