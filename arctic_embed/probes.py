"""Bounded reliability probes against a running server, shared by tests/test_reliability*.py (small sizes, in CI)
and load_tests/reliability/ (the issue's sizes, results in load_tests/results/reliability_<date>.json).

Each probe returns plain figures (status counts, latencies); none decides pass/fail itself.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc import aio

from arctic_protos.arctic.embed.v1 import embed_pb2 as pb
from arctic_protos.arctic_inference import inference_pb2

# Bytes no protobuf message parses: an over-long varint, wire type 7, a length running past the end, an open group.
MALFORMED_PAYLOADS: dict[str, bytes] = {
    "varint overflow": b"\xff" * 11,
    "invalid wire type": b"\x0f\x00",
    "truncated length-delimited": b"\x0a\x05ab",
    "unterminated group": b"\x0b",
}
EMBED_UNARY = ("/arctic.embed.v1.EmbedService/Embed", "/arctic.embed.v1.EmbedService/Tokenize",
               "/arctic.embed.v1.EmbedService/Info", "/arctic_inference.InferenceService/Encode",
               "/arctic_inference.InferenceService/Abort", "/arctic_inference.InferenceService/GetReplicaInfo",
               "/arctic_inference.InferenceService/HealthCheck", "/grpc.health.v1.Health/Check")
GEN_UNARY = ("/arctic.gen.v1.GenerateService/Abort", "/arctic.gen.v1.GenerateService/Info",
             "/grpc.health.v1.Health/Check")
GEN_SERVER_STREAMING = ("/arctic.gen.v1.GenerateService/Generate", "/grpc.health.v1.Health/Watch")
EMBED_SERVER_STREAMING = ("/grpc.health.v1.Health/Watch",)
REFLECTION = ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
              "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")


@dataclass
class MalformedReport:
    cases: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    hangs: int = 0
    details: list[str] = field(default_factory=list)
    """One line per case that did not end with INVALID_ARGUMENT."""

    @property
    def unknown_or_internal(self) -> int:
        return self.statuses["UNKNOWN"] + self.statuses["INTERNAL"]

    def record(self, case: str, code: grpc.StatusCode | None, hung: bool = False) -> None:
        self.cases += 1
        name = "OK" if code is None else code.name
        self.statuses[name] += 1
        if hung:
            self.hangs += 1
        if name != "INVALID_ARGUMENT":
            self.details.append(f"{case}: {name}{' (hung)' if hung else ''}")


def _code(call: Callable[[], object]) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return None


def malformed_probe(target: str, unary: Sequence[str], server_streaming: Sequence[str], bidi: Sequence[str],
                    good_stream_item: bytes | None = None, bidi_with_items: str = "",
                    timeout_s: float = 15.0) -> MalformedReport:
    """Send every malformed payload to every method; streams must end with a status well before `timeout_s`
    (a DEADLINE_EXCEEDED there is a hang). For `bidi_with_items` (e.g. EmbedStream) also: a good item then a bad
    one, and good-bad-good: the good items before the bad one are answered, then the stream ends."""
    report = MalformedReport()
    with grpc.insecure_channel(target) as channel:
        for method in unary:
            call = channel.unary_unary(method)
            for name, payload in MALFORMED_PAYLOADS.items():
                report.record(f"{method} {name}", _code(lambda c=call, p=payload: c(p, timeout=timeout_s)))
        for method in server_streaming:
            call = channel.unary_stream(method)
            for name, payload in MALFORMED_PAYLOADS.items():
                code = _code(lambda c=call, p=payload: list(c(p, timeout=timeout_s)))
                report.record(f"{method} {name}", code, hung=code == grpc.StatusCode.DEADLINE_EXCEEDED)
        for method in bidi:
            call = channel.stream_stream(method)
            sequences: list[tuple[str, list[bytes]]] = []
            for name, payload in MALFORMED_PAYLOADS.items():
                sequences.append((name, [payload]))
                if method == bidi_with_items and good_stream_item is not None:
                    sequences.append((f"good then {name}", [good_stream_item, payload]))
                    sequences.append((f"good, {name}, good", [good_stream_item, payload, good_stream_item]))
            for name, messages in sequences:
                answered: list[bytes] = []

                def run(c=call, m=messages, out=answered) -> None:
                    for response in c(iter(m), timeout=timeout_s):
                        out.append(response)

                code = _code(run)
                hung = code == grpc.StatusCode.DEADLINE_EXCEEDED
                if name.startswith("good") and not answered:
                    code = None if code is None else code  # recorded below as a missing answer
                    report.details.append(f"{method} {name}: the good item before the bad one was not answered")
                report.record(f"{method} {name}", code, hung=hung)
    return report


def good_embed_stream_item() -> bytes:
    return pb.EmbedRequest(request_id="good", texts=["a good item"]).SerializeToString()


# ------------------------------------------------------------------------------------------------ concurrency
async def concurrent_encode(target: str, n: int, concurrency: int, prompts_per_request: int = 1,
                            prompt: str = "hello " * 48, timeout_s: float = 600.0,
                            on_started: Callable[[], object] | None = None) -> collections.Counter:
    """Arctic-semantics client: ONE channel, an asyncio semaphore, `n` Encode calls; status counts."""
    codes: collections.Counter = collections.Counter()
    limit = asyncio.Semaphore(concurrency)
    options = [("grpc.max_receive_message_length", 64 * 2**20)]
    async with aio.insecure_channel(target, options=options) as channel:
        encode = channel.unary_unary("/arctic_inference.InferenceService/Encode",
                                     request_serializer=inference_pb2.EncodeRequest.SerializeToString,
                                     response_deserializer=inference_pb2.EncodeResponse.FromString)

        async def one(i: int) -> None:
            async with limit:
                request = inference_pb2.EncodeRequest(request_id=f"r{i}", n_prompts=prompts_per_request,
                                                      prompts=[f"{prompt}{i}"] * prompts_per_request)
                try:
                    reply = await encode(request, timeout=timeout_s)
                    codes["OK" if len(reply.embedding_bytes_fp32) == prompts_per_request else "WRONG"] += 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] += 1

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        if on_started is not None:
            await asyncio.sleep(0.5)
            result = on_started()
            if asyncio.iscoroutine(result):
                await result
        await asyncio.gather(*tasks)
    return codes


@dataclass
class OverloadReport:
    statuses: collections.Counter
    reject_ms: list[float]
    ok_ms: list[float]

    def reject_p99_ms(self) -> float:
        return percentile(self.reject_ms, 99)


async def overload_probe(target: str, n: int, inputs: int, text: str, timeout_s: float = 600.0) -> OverloadReport:
    """`n` concurrent Embed requests of `inputs` texts each on one channel, all started at once."""
    statuses: collections.Counter = collections.Counter()
    reject_ms: list[float] = []
    ok_ms: list[float] = []
    async with aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 256 * 2**20)]) as channel:
        embed = channel.unary_unary("/arctic.embed.v1.EmbedService/Embed",
                                    request_serializer=pb.EmbedRequest.SerializeToString,
                                    response_deserializer=pb.EmbedResponse.FromString)
        requests = [pb.EmbedRequest(texts=[f"{text} {i} {j}" for j in range(inputs)]) for i in range(n)]

        async def one(request: pb.EmbedRequest) -> None:
            started = time.perf_counter()
            try:
                await embed(request, timeout=timeout_s)
                statuses["OK"] += 1
                ok_ms.append((time.perf_counter() - started) * 1e3)
            except grpc.RpcError as exc:
                statuses[exc.code().name] += 1
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    reject_ms.append((time.perf_counter() - started) * 1e3)

        await asyncio.gather(*(one(r) for r in requests))
    return OverloadReport(statuses, reject_ms, ok_ms)


async def small_during_large(target: str, large_texts: Sequence[str], small_text: str, small_requests: int,
                             interval_s: float = 0.05, timeout_s: float = 600.0) -> tuple[list[float], str]:
    """Latencies (ms) of small requests sent one after another while one large request runs; the large one's
    final status."""
    latencies: list[float] = []
    async with aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 256 * 2**20),
                                                     ("grpc.max_send_message_length", 256 * 2**20)]) as channel:
        embed = channel.unary_unary("/arctic.embed.v1.EmbedService/Embed",
                                    request_serializer=pb.EmbedRequest.SerializeToString,
                                    response_deserializer=pb.EmbedResponse.FromString)

        async def large() -> str:
            try:
                await embed(pb.EmbedRequest(texts=list(large_texts)), timeout=timeout_s)
                return "OK"
            except grpc.RpcError as exc:
                return exc.code().name

        big = asyncio.create_task(large())
        await asyncio.sleep(0.3)
        for i in range(small_requests):
            if big.done():
                break
            started = time.perf_counter()
            await embed(pb.EmbedRequest(texts=[f"{small_text} {i}"]), timeout=timeout_s)
            latencies.append((time.perf_counter() - started) * 1e3)
            await asyncio.sleep(interval_s)
        return latencies, await big


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# ------------------------------------------------------------------------------------------------ processes
def child_pids(pid: int, module: str) -> list[int]:
    """Pids of the server's worker processes started as `python -m <module>`."""
    import psutil

    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if module in child.cmdline():
                out.append(child.pid)
        except psutil.Error:
            continue
    return out


def rss_mib(pids: Iterable[int]) -> dict[int, float]:
    import psutil

    out = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            continue
    return out


# ------------------------------------------------------------------------------------------------ generation
async def gen_streams(target: str, n: int, max_tokens: int, on_started: Callable[[], object] | None = None,
                      late_after_start: bool = False, timeout_s: float = 600.0) -> tuple[collections.Counter, str]:
    """`n` Generate streams of `max_tokens` (ignore_eos) on one channel; `on_started` runs once they all stream
    (e.g. a SIGTERM). Returns how they ended ("finished" = a final message with a finish reason, else the status)
    and, with `late_after_start`, the status of one more stream started after `on_started`."""
    from arctic_protos.arctic.gen.v1 import generate_pb2

    ended: collections.Counter = collections.Counter()
    streaming = asyncio.Event()
    started = 0
    async with aio.insecure_channel(target) as channel:
        generate = channel.unary_stream("/arctic.gen.v1.GenerateService/Generate",
                                        request_serializer=generate_pb2.GenerateRequest.SerializeToString,
                                        response_deserializer=generate_pb2.GenerateResponse.FromString)

        async def one(i: int) -> str:
            nonlocal started
            request = generate_pb2.GenerateRequest(
                request_id=f"s{i}", text=f"stream {i} says", sampling=generate_pb2.SamplingOptions(
                    max_tokens=max_tokens, ignore_eos=True, temperature=0.0))
            first = True
            last = None
            try:
                async for message in generate(request, timeout=timeout_s):
                    if first:
                        first = False
                        started += 1
                        if started == n:
                            streaming.set()
                    last = message
            except grpc.RpcError as exc:
                return exc.code().name
            return "finished" if last is not None and last.finish_reason else "no final message"

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        late = ""
        if on_started is not None:
            await asyncio.wait_for(streaming.wait(), timeout_s)
            result = on_started()
            if asyncio.iscoroutine(result):
                await result
            if late_after_start:
                await asyncio.sleep(0.3)
                late = await one(n)
        for status in await asyncio.gather(*tasks):
            ended[status] += 1
    return ended, late
