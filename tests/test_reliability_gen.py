"""Reliability of `arctic-gen serve` (tiny Llama): undecodable bytes are INVALID_ARGUMENT on every method (streams
end, never hang), a deadline ends a stream with DEADLINE_EXCEEDED and frees its slot, and SIGTERM lets every running
stream finish while refusing new ones."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest

from arctic_embed import probes
from arctic_gen.testing import cpu_vllm_env

cpu_vllm_env()
pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("vllm")
    from arctic_gen.testing import start_gen_server, tiny_llama

    log = tmp_path_factory.mktemp("gen-reliability") / "server.log"
    srv = start_gen_server(str(tiny_llama()), ["--dtype", "float32", "--max-model-len", "512",
                                               "--kv-cache-memory-bytes", str(64 * 2**20), "--enforce-eager",
                                               "--grace-period", "5"], log_path=log, timeout_s=900)
    yield srv
    srv.stop()


def test_malformed_bytes_are_invalid_argument_on_every_method(server) -> None:
    report = probes.malformed_probe(server.target, probes.GEN_UNARY, probes.GEN_SERVER_STREAMING, probes.REFLECTION,
                                    timeout_s=20)
    assert report.cases == 28
    assert report.details == [] and report.hangs == 0 and report.unknown_or_internal == 0


def test_deadline_ends_the_stream_and_frees_the_engine(server) -> None:
    from arctic_gen.client import GenerateClient, build_request
    from arctic_protos.arctic.gen.v1 import generate_pb2_grpc

    with grpc.insecure_channel(server.target) as channel:
        stub = generate_pb2_grpc.GenerateServiceStub(channel)
        request = build_request(text="a long one", max_tokens=400, ignore_eos=True)
        with pytest.raises(grpc.RpcError) as err:
            for _ in stub.Generate(request, timeout=0.5):
                pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with GenerateClient(server.target, timeout=120) as client:
        assert client.generate(text="after the deadline", max_tokens=8).completion_tokens == 8


def test_sigterm_lets_running_streams_finish_and_refuses_new_ones(server) -> None:
    ended, late = asyncio.run(probes.gen_streams(
        server.target, n=16, max_tokens=300, on_started=lambda: server.process.send_signal(signal.SIGTERM),
        late_after_start=True))
    assert ended == {"finished": 16}, ended
    assert late == "UNAVAILABLE"
    assert server.process.wait(120) == 0
