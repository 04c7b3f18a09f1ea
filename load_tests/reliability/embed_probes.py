"""Reliability probes against `arctic-embed serve` (bundled MiniLM on the CPU), each bounded, results merged into
load_tests/results/reliability_<yyyymmdd>.json (row `server: embed`).

    .venv/bin/python load_tests/reliability/embed_probes.py                 # every probe but the soak
    .venv/bin/python load_tests/reliability/embed_probes.py --only malformed overload
    .venv/bin/python load_tests/reliability/embed_probes.py --only soak --soak-minutes 30

Probes: malformed (every method × undecodable payloads, streams), concurrency (4,096 unary calls on one channel at
batch 1 and 16), overload (2,000 concurrent × 64 inputs against --max-queued-tokens 20000), replica_kill and
tokenizer_kill (SIGKILL × 5, 3 s apart, 8 clients), sigterm (200 requests in flight), large (small requests while a
maximum-size request runs; then the large one with a 3 s deadline: how fast its work stops), soak (random lengths;
RSS of every process).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import record, steady_load  # noqa: E402

from arctic_embed import probes  # noqa: E402
from arctic_embed.testing import start_server  # noqa: E402
from arctic_protos.arctic.embed.v1 import embed_pb2 as pb  # noqa: E402
from arctic_protos.arctic.embed.v1 import embed_pb2_grpc as pb_grpc  # noqa: E402

LOG_DIR = Path(os.environ.get("RELIABILITY_LOG_DIR", "/tmp/arctic-reliability"))
BASE = ["--replicas-per-device", "1", "--torch-threads", "1", "--http-port", "0"]


def _server(name: str, args: list[str]):
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    return start_server([*BASE, *args], log_path=str(LOG_DIR / f"{name}.log"))


def probe_malformed() -> dict:
    server = _server("malformed", ["--tokenizer-workers", "1"])
    try:
        report = probes.malformed_probe(
            server.target, probes.EMBED_UNARY, probes.EMBED_SERVER_STREAMING,
            ("/arctic.embed.v1.EmbedService/EmbedStream", *probes.REFLECTION),
            good_stream_item=probes.good_embed_stream_item(),
            bidi_with_items="/arctic.embed.v1.EmbedService/EmbedStream", timeout_s=20)
    finally:
        server.stop()
    print(f"malformed: {report.cases} cases {dict(report.statuses)} hangs {report.hangs} {report.details[:5]}")
    return {"malformed_cases": report.cases, "malformed_statuses": dict(report.statuses),
            "unknown_or_internal": report.unknown_or_internal, "hangs": report.hangs}


def probe_concurrency() -> dict:
    server = _server("concurrency", ["--tokenizer-workers", "1", "--max-queued-tokens", "50000000"])
    rows = []
    try:
        for batch in (1, 16):
            started = time.perf_counter()
            codes = asyncio.run(probes.concurrent_encode(server.target, n=4096, concurrency=4096,
                                                         prompts_per_request=batch, prompt="hello world "))
            rows.append({"requests": 4096, "concurrency": 4096, "prompts_per_request": batch,
                         "statuses": dict(codes), "seconds": round(time.perf_counter() - started, 1)})
            print(f"concurrency: 4096 calls x {batch} prompts on one channel: {dict(codes)}")
    finally:
        server.stop()
    return {"concurrency_runs": rows,
            "concurrency_cancelled": sum(r["statuses"].get("CANCELLED", 0) for r in rows),
            "concurrency_failed": sum(sum(v for k, v in r["statuses"].items() if k != "OK") for r in rows)}


def _server_reject_p99_ms(metrics_port: int) -> float | None:
    """The upper bound of the histogram bucket holding the 99th percentile of RESOURCE_EXHAUSTED handler times."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).read().decode()
    buckets = []
    for line in text.splitlines():
        if line.startswith('arctic_embed_failure_duration_seconds_bucket{code="RESOURCE_EXHAUSTED"'):
            bound = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    return next(bound * 1e3 for bound, count in buckets if count >= 0.99 * total)


def probe_overload() -> dict:
    from arctic_embed.testing import free_port

    metrics_port = free_port()
    server = _server("overload", ["--tokenizer-workers", "1", "--max-queued-tokens", "20000", "--metrics-port",
                                  str(metrics_port)])
    try:
        report = asyncio.run(probes.overload_probe(server.target, n=2000, inputs=64,
                                                   text="overload probe text with several words"))
        server_p99 = _server_reject_p99_ms(metrics_port)
    finally:
        server.stop()
    p50, p99 = probes.percentile(report.reject_ms, 50), probes.percentile(report.reject_ms, 99)
    print(f"overload: {dict(report.statuses)} reject p50 {p50:.1f} ms p99 {p99:.1f} ms at the client; in the server "
          f"p99 <= {server_p99} ms")
    return {"overload_statuses": dict(report.statuses), "overload_cancelled": report.statuses.get("CANCELLED", 0),
            "reject_p50_ms": round(p50, 1), "reject_p99_ms": round(p99, 1),
            "reject_p99_ms_in_server_at_most": server_p99}


def _kill_under_load(name: str, module: str, kills: int = 5, interval_s: float = 3.0, clients: int = 8) -> dict:
    server = _server(name, ["--tokenizer-workers", "2"])
    killed: list[int] = []

    def killer() -> None:
        time.sleep(2.0)
        for _ in range(kills):
            deadline = time.monotonic() + 60
            while not (pids := probes.child_pids(server.process.pid, module)) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(interval_s)

    async def run() -> dict:
        stop = asyncio.Event()
        load = asyncio.create_task(steady_load(server.target, clients, stop, texts_per_request=40))
        await asyncio.to_thread(killer)
        await asyncio.sleep(3.0)  # the last restart serves a while under load too
        stop.set()
        return dict(await load)

    try:
        codes = asyncio.run(run())
    finally:
        server.stop()
    failed = sum(v for k, v in codes.items() if k != "OK")
    print(f"{name}: {len(killed)} SIGKILLs of {module}: {codes}")
    return {"kills": len(killed), "statuses": codes, "failed": failed}


def probe_replica_kill() -> dict:
    out = _kill_under_load("replica_kill", "arctic_embed.replica")
    return {"replica_kill": out, "replica_kill_failed": out["failed"]}


def probe_tokenizer_kill() -> dict:
    out = _kill_under_load("tokenizer_kill", "arctic_embed.tokenizer_pool")
    return {"tokenizer_kill": out, "tokenizer_kill_failed": out["failed"]}


def _embed_calls_seen(metrics_port: int) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).read().decode()
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith('arctic_embed_requests_total{rpc="Embed"}')), 0.0)


def probe_sigterm(in_flight: int = 200) -> dict:
    from arctic_embed.testing import free_port

    metrics_port = free_port()
    server = _server("sigterm", ["--tokenizer-workers", "2", "--drain-grace", "120", "--metrics-port",
                                 str(metrics_port)])
    codes: dict[str, int] = {}
    after: dict[str, int] = {}

    async def run() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.EmbedServiceStub(channel)
            long_text = "word " * 300

            async def one(i: int) -> str:
                try:
                    reply = await stub.Embed(pb.EmbedRequest(texts=[f"{i} {long_text}"] * 4), timeout=600)
                    return "OK" if len(reply.embeddings) == 4 else "WRONG"
                except grpc.RpcError as exc:
                    return exc.code().name

            tasks = [asyncio.create_task(one(i)) for i in range(in_flight)]
            # SIGTERM once every request reached the server's handler (about 200K tokens admitted: minutes of work)
            while await asyncio.to_thread(_embed_calls_seen, metrics_port) < in_flight:
                await asyncio.sleep(0.2)
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            late = await one(-1)  # admission stopped at once
            after[late] = after.get(late, 0) + 1
            for status in await asyncio.gather(*tasks):
                codes[status] = codes.get(status, 0) + 1

    started = time.monotonic()
    asyncio.run(run())
    exit_code = server.process.wait(660)
    print(f"sigterm: {in_flight} in flight -> {codes}; a request after SIGTERM: {after}; exit {exit_code} after "
          f"{time.monotonic() - started:.0f}s")
    return {"sigterm_in_flight": in_flight, "sigterm_finished": codes.get("OK", 0), "sigterm_statuses": codes,
            "sigterm_new_request_status": after, "sigterm_exit_code": exit_code}


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def probe_large(n_texts: int = 600, chars: int = 100_000) -> dict:
    # A 16K-token engine batch takes seconds on this CPU; 2,048-token batches keep each engine step short.
    server = _server("large", ["--tokenizer-workers", "2", "--max-batch-tokens", "2048",
                               "--max-message-bytes", str(128 * 2**20)])
    rng = random.Random(0)
    words = "vector search ranking passage retrieval embedding model latency throughput query".split()
    base = " ".join(rng.choices(words, k=chars // 7))[:chars]
    large = [f"{i} {base}" for i in range(n_texts)]
    try:
        latencies, status = asyncio.run(probes.small_during_large(server.target, large, "a small request",
                                                                  small_requests=10_000, interval_s=0.05))
        # The same request with a 3 s deadline: how long do the tokenizer workers and the replica keep working?
        workers = probes.child_pids(server.process.pid, "arctic_embed.tokenizer_pool") + \
            probes.child_pids(server.process.pid, "arctic_embed.replica")
        with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 128 * 2**20)]) as ch:
            try:
                pb_grpc.EmbedServiceStub(ch).Embed(pb.EmbedRequest(texts=large), timeout=3)
            except grpc.RpcError:
                pass
        deadline_at = time.monotonic()
        stop_ms = None
        previous = _cpu_seconds(workers)
        while time.monotonic() - deadline_at < 20:
            time.sleep(0.05)
            now = _cpu_seconds(workers)
            if now - previous < 0.005:  # under 10% of one core over 50 ms: idle
                stop_ms = (time.monotonic() - deadline_at) * 1e3 - 50
                break
            previous = now
        rss = probes.rss_mib(workers)
    finally:
        server.stop()
    p50, p99 = probes.percentile(latencies, 50), probes.percentile(latencies, 99)
    print(f"large: {n_texts} x {chars} chars ({status}); {len(latencies)} small requests meanwhile p50 {p50:.0f} ms "
          f"p99 {p99:.0f} ms; after a 3 s deadline the workers went idle in {stop_ms} ms; worker RSS {rss}")
    return {"large_request": f"{n_texts} x {chars} characters", "small_p50_during_large_ms": round(p50, 1),
            "small_p99_during_large_ms": round(p99, 1),
            "small_requests_during_large": len(latencies), "large_status": status,
            "deadline_work_stop_ms": None if stop_ms is None else round(max(stop_ms, 0.0)),
            "worker_rss_after_large_mib": {str(k): round(v) for k, v in rss.items()}}


def probe_soak(minutes: float, clients: int = 4, sample_s: float = 10.0) -> dict:
    server = _server("soak", ["--tokenizer-workers", "1"])
    rng = random.Random(1)
    words = "the quick brown fox jumps over a lazy dog vector search embedding token batch replica".split()
    samples: list[dict[str, float]] = []
    names: dict[int, str] = {}

    def processes() -> list[int]:
        pids = [server.process.pid]
        names[server.process.pid] = "gateway"
        for module, label in (("arctic_embed.tokenizer_pool", "tokenizer"), ("arctic_embed.replica", "replica")):
            for pid in probes.child_pids(server.process.pid, module):
                names[pid] = f"{label}:{pid}"
                pids.append(pid)
        return pids

    async def run() -> dict:
        codes: dict[str, int] = {}
        end = time.monotonic() + minutes * 60
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.EmbedServiceStub(channel)

            async def client() -> None:
                while time.monotonic() < end:
                    n = rng.randint(1, 32)
                    texts = [" ".join(rng.choices(words, k=rng.randint(1, 300))) for _ in range(n)]
                    try:
                        await stub.Embed(pb.EmbedRequest(texts=texts), timeout=300)
                        codes["OK"] = codes.get("OK", 0) + 1
                    except grpc.RpcError as exc:
                        codes[exc.code().name] = codes.get(exc.code().name, 0) + 1

            async def sampler() -> None:
                while time.monotonic() < end:
                    samples.append({names[pid]: mib for pid, mib in probes.rss_mib(processes()).items()})
                    await asyncio.sleep(sample_s)

            await asyncio.gather(sampler(), *(client() for _ in range(clients)))
        return codes

    started = time.monotonic()
    try:
        codes = asyncio.run(run())
    finally:
        server.stop()
    ran = (time.monotonic() - started) / 60
    warm = max(1, len(samples) // 5)  # the first fifth is warm-up
    growth: dict[str, float] = {}
    for name in samples[-1]:
        series = [s[name] for s in samples[warm:] if name in s]
        if len(series) >= 2:
            growth[name] = round(100 * (max(series[-3:]) - series[0]) / series[0], 1)
    first, last = samples[warm], samples[-1]
    print(f"soak: {ran:.1f} min, {codes}; RSS after warm-up {first} -> {last}; growth % {growth}")
    return {"soak_minutes": round(ran, 1), "soak_statuses": codes, "soak_rss_growth_pct": max(growth.values()),
            "soak_rss_growth_by_process_pct": growth,
            "soak_rss_mib_first_last": {k: [round(first.get(k, 0)), round(v)] for k, v in last.items()}}


PROBES = {"malformed": probe_malformed, "concurrency": probe_concurrency, "overload": probe_overload,
          "replica_kill": probe_replica_kill, "tokenizer_kill": probe_tokenizer_kill, "sigterm": probe_sigterm,
          "large": probe_large}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=[*PROBES, "soak"], default=list(PROBES))
    parser.add_argument("--soak-minutes", type=float, default=30.0)
    parser.add_argument("--large-texts", type=int, default=600, help="inputs of the maximum-size request (100K "
                        "characters each)")
    args = parser.parse_args()
    for name in args.only:
        started = time.monotonic()
        if name == "soak":
            figures = probe_soak(args.soak_minutes)
        elif name == "large":
            figures = probe_large(args.large_texts)
        else:
            figures = PROBES[name]()
        path = record("embed", figures)
        print(f"  [{name}: {time.monotonic() - started:.0f}s] -> {path}", flush=True)
    _ = threading  # (threads are used by the probes through asyncio.to_thread)


if __name__ == "__main__":
    main()
