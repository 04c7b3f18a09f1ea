"""Reliability probes against `arctic-gen serve` (tiny random Llama on the CPU): malformed bytes on every method,
a deadline mid-stream, SIGTERM with streams in flight. Results merged into
load_tests/results/reliability_<yyyymmdd>.json (row `server: gen`).

    .venv/bin/python load_tests/reliability/gen_probes.py [--streams 32] [--max-tokens 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import record  # noqa: E402

from arctic_embed import probes  # noqa: E402

LOG_DIR = Path(os.environ.get("RELIABILITY_LOG_DIR", "/tmp/arctic-reliability"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=32, help="streams in flight at SIGTERM")
    parser.add_argument("--max-tokens", type=int, default=300)
    args = parser.parse_args()

    from arctic_gen.client import build_request
    from arctic_gen.testing import cpu_vllm_env, start_gen_server, tiny_llama
    from arctic_protos.arctic.gen.v1 import generate_pb2_grpc

    cpu_vllm_env()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    server = start_gen_server(str(tiny_llama()), ["--dtype", "float32", "--max-model-len", "512",
                                                  "--kv-cache-memory-bytes", str(64 * 2**20), "--enforce-eager",
                                                  "--grace-period", "5"], log_path=LOG_DIR / "gen.log", timeout_s=900)
    try:
        report = probes.malformed_probe(server.target, probes.GEN_UNARY, probes.GEN_SERVER_STREAMING,
                                        probes.REFLECTION, timeout_s=20)
        print(f"malformed: {report.cases} cases {dict(report.statuses)} hangs {report.hangs} {report.details[:5]}")
        with grpc.insecure_channel(server.target) as channel:
            stub = generate_pb2_grpc.GenerateServiceStub(channel)
            try:
                for _ in stub.Generate(build_request(text="long", max_tokens=400, ignore_eos=True), timeout=0.5):
                    pass
                deadline_status = "OK"
            except grpc.RpcError as exc:
                deadline_status = exc.code().name
        print(f"deadline: {deadline_status}")
        started = time.monotonic()
        ended, late = asyncio.run(probes.gen_streams(
            server.target, n=args.streams, max_tokens=args.max_tokens,
            on_started=lambda: server.process.send_signal(signal.SIGTERM), late_after_start=True))
        exit_code = server.process.wait(300)
        print(f"sigterm: {args.streams} streams in flight -> {dict(ended)}; new stream after SIGTERM: {late}; "
              f"exit {exit_code} after {time.monotonic() - started:.0f}s")
    finally:
        server.stop()
    path = record("gen", {
        "malformed_cases": report.cases, "malformed_statuses": dict(report.statuses),
        "unknown_or_internal": report.unknown_or_internal, "hangs": report.hangs,
        "deadline_status": deadline_status, "sigterm_in_flight": args.streams,
        "sigterm_finished": ended.get("finished", 0), "sigterm_statuses": dict(ended),
        "sigterm_new_request_status": late, "sigterm_exit_code": exit_code, "model": "tiny random Llama (CPU)"})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
