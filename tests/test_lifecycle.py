"""Deadlines, cancellation (work is dropped), Abort, backpressure, EmbedStream, and graceful drain on SIGTERM."""

import asyncio
import signal
import threading
import time

import grpc
import pytest

from arctic_embed.client import AsyncEmbedClient, EmbedClient, build_request
from arctic_embed.testing import free_port, start_server
from arctic_protos.arctic.embed.v1 import embed_pb2 as pb
from arctic_protos.arctic.embed.v1 import embed_pb2_grpc as pb_grpc
from arctic_protos.arctic_inference import inference_pb2, inference_pb2_grpc

LONG = "word " * 300  # truncated to 256 tokens
BIG = [LONG] * 1000  # 256K tokens: tens of seconds on a 2-core CPU


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def server():
    server = start_server(["--replicas-per-device", "1", "--torch-threads", "2", "--max-queued-tokens", "270000",
                           "--drain-grace", "20", "--metrics-port", str(METRICS_PORT)])
    yield server
    server.stop()


@pytest.fixture()
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.EmbedServiceStub(channel)


def _quick(stub) -> float:
    started = time.monotonic()
    stub.Embed(build_request(["quick one"]), timeout=60)
    return time.monotonic() - started


def test_deadline_exceeded_drops_the_work(stub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(build_request(BIG), timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Had the 256K tokens stayed queued, this would wait for them (tens of seconds).
    assert _quick(stub) < 8


def test_client_cancel_drops_the_work(stub) -> None:
    call = stub.Embed.future(build_request(BIG), timeout=120)
    time.sleep(0.5)
    call.cancel()
    assert call.cancelled()
    assert _quick(stub) < 8


def test_backpressure_is_resource_exhausted(stub) -> None:
    first = stub.Embed.future(build_request(BIG), timeout=120)
    time.sleep(0.5)
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(build_request([LONG] * 100), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    first.cancel()
    time.sleep(0.2)
    assert _quick(stub) < 8  # admitted again once the queue drained


def test_arctic_abort_cancels_the_request(server) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        call = stub.Encode.future(inference_pb2.EncodeRequest(request_id="job-7", prompts=BIG), timeout=120)
        time.sleep(0.5)
        reply = stub.Abort(inference_pb2.AbortRequest(request_id="job-7"))
        assert reply.success, reply.message
        with pytest.raises(grpc.RpcError) as err:
            call.result()
        assert err.value.code() == grpc.StatusCode.CANCELLED
        assert "aborted" in err.value.details()


def test_embed_stream_answers_every_item_and_reports_bad_ones(server) -> None:
    async def run() -> list[pb.EmbedStreamResponse]:
        async with AsyncEmbedClient(server.target) as client:
            stub = client._stub

            async def requests():
                for i in range(20):
                    texts = [] if i == 7 else [f"text {i}", "another"]
                    yield pb.EmbedRequest(request_id=f"r{i}", texts=texts)

            return [r async for r in stub.EmbedStream(requests(), timeout=60)]

    responses = asyncio.run(run())
    assert sorted(r.request_id for r in responses) == sorted(f"r{i}" for i in range(20))
    bad = [r for r in responses if r.HasField("error")]
    assert [r.request_id for r in bad] == ["r7"]
    assert bad[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert all(len(r.response.embeddings) == 2 for r in responses if r.request_id != "r7")


def test_clients_split_large_inputs_and_keep_order(server) -> None:
    texts = [f"number {i}" for i in range(300)]
    with EmbedClient(server.target) as client:
        whole = client.embed(texts, batch_size=1000)
        split = client.embed(texts, batch_size=37, concurrency=3)
    assert (abs(whole - split) < 1e-6).all()

    async def run():
        async with AsyncEmbedClient(server.target) as client:
            return await client.embed(texts, batch_size=50)

    assert (abs(asyncio.run(run()) - whole) < 1e-6).all()


def test_sigterm_drains_in_flight_requests_then_exits() -> None:
    server = start_server(["--replicas-per-device", "1", "--drain-grace", "30"])
    result: dict = {}

    def long_request() -> None:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.EmbedServiceStub(channel)
            result["response"] = stub.Embed(build_request([LONG] * 40), timeout=120)

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    worker.join(120)
    assert len(result["response"].embeddings) == 40  # finished although SIGTERM came first
    assert server.process.wait(60) == 0


def test_several_gateways_share_one_port_and_stop_together() -> None:
    port = free_port()
    server = start_server(["--gateways", "2", "--replicas-per-device", "1", "--torch-threads", "1"], port=port)
    try:
        for _ in range(3):  # fresh channels: connections land on either gateway
            with EmbedClient(server.target) as client:
                assert client.embed(["one", "two"]).shape == (2, 384)
                assert client.info().n_healthy_replicas == 1
    finally:
        assert server.stop() == 0


def test_prometheus_metrics(server, stub) -> None:
    import urllib.request

    stub.Embed(build_request(["metrics one", "metrics two"]), timeout=60)
    with pytest.raises(grpc.RpcError):
        stub.Embed(pb.EmbedRequest(), timeout=10)
    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).read().decode()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values['arctic_embed_requests_total{rpc="Embed"}'] >= 2
    assert values['arctic_embed_request_failures_total{code="INVALID_ARGUMENT",rpc="Embed"}'] >= 1
    assert values["arctic_embed_replicas_ready"] == 1
    assert values["arctic_embed_queued_tokens"] == 0  # nothing left behind once requests are answered
    for name in ("queue", "tokenize", "inference"):
        assert values[f"arctic_embed_{name}_duration_seconds_count"] >= 1
    assert values["arctic_embed_request_duration_seconds_count"] >= 1
    assert values["arctic_embed_engine_batch_sequences_count"] >= 1
    assert values["arctic_embed_engine_batch_tokens_sum"] >= 8
