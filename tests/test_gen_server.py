"""arctic.gen.v1 over `arctic-gen serve` on the tiny random Llama (float32): streamed greedy text equals
LLM.generate, 64 concurrent streams, backpressure, cancel/deadline/Abort free the engine slot, bad inputs are
INVALID_ARGUMENT with the server alive, health and reflection."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import grpc
import pytest

from arctic_gen.testing import cpu_vllm_env

cpu_vllm_env()
pytestmark = pytest.mark.vllm

MAX_STREAMS = 64
STREAM_TOKENS = 200  # long enough that all 64 streams are in flight together
PROMPTS = [
    "Hello world the model", "Write an essay about the importance of higher education.", "one two three four",
    "The river and the mountain", "def rename variable return value", "grpc stream server request response",
    "Speculative decoding with a suffix tree", "red green blue yellow", "Is the cache warm?", "first second last next",
    "A student asked a question about knowledge", "The sun, the moon and the stars", "batch prefill decode latency",
    "python rust code function", "hello", "error status 404", "Seven hundred thousand", "water fire stone wind",
    "could would should may might must", "the a an of to in and or for with on at by from",
]


@pytest.fixture(scope="module")
def model() -> str:
    pytest.importorskip("vllm")
    from arctic_gen.testing import tiny_llama

    return str(tiny_llama())


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    from arctic_gen.testing import start_gen_server

    log = tmp_path_factory.mktemp("gen") / "server.log"
    srv = start_gen_server(model, ["--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes",
                                   str(64 * 2**20), "--enforce-eager", "--max-concurrent-streams", str(MAX_STREAMS)],
                           log_path=log)
    yield srv
    assert srv.stop() == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def client(server):
    from arctic_gen.client import GenerateClient

    with GenerateClient(server.target, timeout=120) as c:
        yield c


def _wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError("condition not reached in time")


def test_streamed_greedy_text_equals_llm_generate(client, model) -> None:
    from arctic_gen.testing import reference_generate

    reference = reference_generate(model, PROMPTS, max_tokens=24)
    for prompt, ref in zip(PROMPTS, reference, strict=True):
        messages = list(client.stream(text=prompt, max_tokens=24, temperature=0.0, ignore_eos=True))
        ids = [t for m in messages for t in m.token_ids]
        text = "".join(m.text for m in messages)
        assert ids == ref["token_ids"], prompt
        assert text == ref["text"], prompt
        last = messages[-1]
        assert last.finish_reason == 2 and last.usage.completion_tokens == 24  # LENGTH
        assert all(m.finish_reason == 0 for m in messages[:-1])
        assert len(messages) > 1  # streamed, not one blob


def test_64_concurrent_streams_then_backpressure(server, client) -> None:
    from arctic_gen.client import AsyncGenerateClient

    async def run():
        async with AsyncGenerateClient(server.target, timeout=300) as aclient:
            gate = asyncio.Event()

            async def one(i: int):
                n = 0
                async for response in aclient.stream(text=PROMPTS[i % len(PROMPTS)], max_tokens=STREAM_TOKENS,
                                                     temperature=0.0, ignore_eos=True, request_id=f"c{i}"):
                    n += len(response.token_ids)
                    await gate.wait()
                return n, response

            tasks = [asyncio.create_task(one(i)) for i in range(MAX_STREAMS)]
            deadline = time.monotonic() + 120
            while (await aclient.info()).active_streams < MAX_STREAMS:
                assert time.monotonic() < deadline, "the 64 streams never ran at once"
                await asyncio.sleep(0.05)
            with pytest.raises(grpc.aio.AioRpcError) as excinfo:
                await aclient.generate(text="one too many", max_tokens=4)
            assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            gate.set()
            return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    assert len(results) == MAX_STREAMS
    for n, last in results:
        assert n == STREAM_TOKENS and last.usage.completion_tokens == STREAM_TOKENS and last.finish_reason == 2
    assert client.info().active_streams == 0


def test_cancelled_stream_frees_its_engine_slot(client) -> None:
    # A background stream keeps the engine stepping, so its scheduler statistics stay fresh.
    background = client.stream(text="background", max_tokens=480, temperature=0.0, ignore_eos=True)
    next(background)
    stream = client.stream(text="to be cancelled", max_tokens=480, temperature=0.0, ignore_eos=True,
                           request_id="cancel-me")
    next(stream)
    busy = _wait_for(lambda: (i := client.info()).engine_running == 2 and i)
    assert busy.active_streams == 2 and busy.engine_unfinished == 2
    stream.close()  # cancels the RPC
    after = _wait_for(lambda: (i := client.info()).engine_running == 1 and i.engine_unfinished == 1 and i)
    assert after.active_streams == 1
    background.close()
    _wait_for(lambda: client.info().engine_unfinished == 0)


def test_client_process_that_dies_mid_stream_frees_its_engine_slot(client, server) -> None:
    code = ("import os, sys; from arctic_gen.client import GenerateClient\n"
            "stream = GenerateClient(sys.argv[1]).stream(text='gone', max_tokens=480, ignore_eos=True)\n"
            "next(stream); next(stream); print('streaming', flush=True); os._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", code, server.target], capture_output=True, text=True, timeout=120)
    assert "streaming" in out.stdout, out.stderr[-2000:]
    _wait_for(lambda: (i := client.info()).engine_unfinished == 0 and i.active_streams == 0)
    assert server.alive()


def test_deadline_and_abort_free_the_engine(client) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        for _ in client.stream(text="slow", max_tokens=480, ignore_eos=True, timeout=0.5):
            pass
    assert excinfo.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_for(lambda: client.info().engine_unfinished == 0)

    got: list = []
    thread = threading.Thread(target=lambda: got.extend(client.stream(
        text="abort me", max_tokens=480, ignore_eos=True, request_id="abort-me")))
    thread.start()
    _wait_for(lambda: client.info().active_streams == 1)
    assert client.abort("abort-me") is True
    thread.join(60)
    assert not thread.is_alive()
    assert got and got[-1].finish_reason == 3  # ABORT
    assert client.abort("abort-me") is False
    _wait_for(lambda: client.info().engine_unfinished == 0)


BAD_INPUTS = [
    {"text": ""},
    {"token_ids": []},
    {"token_ids": [10**6]},
    {"chat": []},
    {"chat": [{"role": "wizard", "content": "hi"}]},
    {"chat": [{"role": "", "content": "hi"}]},
    {"text": "x", "max_tokens": 0},
    {"text": "x", "max_tokens": -5},
    {"text": "x", "max_tokens": 10**6},
    {"text": "x", "temperature": -1.0},
    {"text": "x", "temperature": float("nan")},
    {"text": "x", "top_p": 0.0},
    {"text": "x", "top_p": 1.5},
    {"text": "x", "top_k": -7},
    {"text": "x", "min_p": 2.0},
    {"text": "x", "logprobs": 10**4},
    {"text": "x", "stop": [""]},
    {"text": "x", "stop_token_ids": [10**6]},
    {"text": "x", "min_tokens": 10**5},
    {"text": "x", "repetition_penalty": 0.0},
    {"text": "x", "model": "another-model"},
    {},
]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[str(b)[:40] for b in BAD_INPUTS])
def test_bad_input_is_invalid_argument(client, server, bad) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        client.generate(**bad)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT, excinfo.value.details()
    assert server.alive()


def test_server_alive_after_bad_inputs_and_extras(client, server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    chat = client.generate(chat=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.0,
                           ignore_eos=True, logprobs=2)
    assert chat.completion_tokens == 8 and chat.prompt_tokens > 3
    first = next(client.stream(text="hello", max_tokens=3, temperature=0.0, logprobs=2))
    assert len(first.logprobs) == len(first.token_ids) and len(first.logprobs[0].top) == 2
    stop_id = chat.token_ids[2]
    stopped = client.generate(chat=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.0,
                              stop_token_ids=[stop_id])
    assert stopped.finish_reason == "stop" and stopped.stop_reason == str(stop_id)
    by_ids = client.generate(token_ids=[5, 6, 7], max_tokens=4, temperature=0.0, ignore_eos=True)
    assert by_ids.prompt_tokens == 3 and len(by_ids.token_ids) == 4
    info = client.info()
    assert info.max_model_len == 512 and info.dtype == "float32" and info.vllm_version
    channel = grpc.insecure_channel(server.target)
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="arctic.gen.v1.GenerateService"), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reply = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    names = {s.name for s in reply.list_services_response.service}
    assert "arctic.gen.v1.GenerateService" in names and "grpc.health.v1.Health" in names
    channel.close()
    assert server.alive()


def test_a_client_that_falls_behind_gets_merged_deltas_and_every_token(server) -> None:
    """A client that does not read (and whose HTTP/2 window is small) makes the server's writes wait; meanwhile the
    engine's tokens merge into fewer, larger messages. The first token is never held back, none is lost."""
    from arctic_gen.client import GenerateClient

    tokens = 400
    with GenerateClient(server.target, timeout=120) as fast:  # greedy: the same text as LLM.generate (tested above)
        reference = fast.generate(text=PROMPTS[1], max_tokens=tokens, temperature=0.0, ignore_eos=True)
    small_window = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    with GenerateClient(server.target, timeout=120, options=small_window) as slow:
        stream = slow.stream(text=PROMPTS[1], max_tokens=tokens, temperature=0.0, ignore_eos=True)
        first = next(stream)
        assert first.token_ids  # sent as soon as it existed
        # Stop reading until the engine is done with it (it keeps generating while the server's writes wait).
        _wait_for(lambda: not slow.info().active_streams or slow.info().engine_unfinished == 0, timeout_s=120)
        messages = [first, *stream]
    ids = [t for m in messages for t in m.token_ids]
    assert ids == reference.token_ids and "".join(m.text for m in messages) == reference.text
    assert messages[-1].finish_reason == 2 and messages[-1].usage.completion_tokens == tokens
    assert len(messages) < tokens / 2, len(messages)  # merged while the client was behind
