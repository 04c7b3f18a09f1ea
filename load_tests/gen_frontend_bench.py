"""What one Generate front-end process can stream: our gRPC server + GenerationCore over a synthetic engine.

    python load_tests/gen_frontend_bench.py [--streams 64 256] [--tokens 256] [--step-ms 2] [--client-procs 2]

The engine is replaced by `SyntheticEngine`, which every `--step-ms` gives each running request one token (the text
is one short word per token) through a per-request collector that merges outputs the consumer has not taken yet,
as AsyncLLM's does. It does no detokenization and no model work, so what is measured is our part of a front end:
GenerationCore, the servicer's protobuf building and gRPC's per-message work, in one process on one event loop.
The clients run in `--client-procs` other processes (load_tests/gen_bench.py's ClientPool, token-id prompts).
Reported per stream count: tokens/s and messages/s delivered, tokens per message (merging), and the server
process's CPU seconds per 1,000 messages. Use it to see when one front end saturates (then raise
`--api-server-count`) and to compare changes to the per-message path. Rows go to
load_tests/results/gen_frontend_<yyyymmdd>.json and a README line.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import resource
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WORDS = ["the", " river", " and", " mountain", " speak", " of", " time", "."]


@dataclass
class _Collector:
    """One request's pending output: tokens merge until the consumer takes them (AsyncLLM's DELTA collector)."""

    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    finished: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class SyntheticEngine:
    """The subset of AsyncLLM that GenerationCore uses, producing tokens on a timer."""

    errored = False

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.model_config = SimpleNamespace(max_model_len=4096, max_logprobs=20, model="synthetic",
                                            served_model_name="synthetic", get_vocab_size=lambda: 50_000)
        self.vllm_config = SimpleNamespace(speculative_config=None)
        self.running: dict[str, tuple[_Collector, int]] = {}
        self.output_processor = SimpleNamespace(get_num_unfinished_requests=lambda: len(self.running))
        self.steps = 0
        self._task: asyncio.Task | None = None

    def get_tokenizer(self):
        return SimpleNamespace(encode=lambda text: [1 + len(word) for word in text.split()])

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.step_s)
            self.steps += 1
            for request_id, (collector, left) in list(self.running.items()):
                token = self.steps % 50_000
                collector.token_ids.append(token)
                collector.text.append(WORDS[token % len(WORDS)])
                left -= 1
                if left == 0:
                    collector.finished = True
                    del self.running[request_id]
                else:
                    self.running[request_id] = (collector, left)
                collector.ready.set()

    async def generate(self, prompt: dict, params: Any, request_id: str):
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        collector = _Collector()
        self.running[request_id] = (collector, params.max_tokens)
        try:
            while True:
                await collector.ready.wait()
                collector.ready.clear()
                ids, text = collector.token_ids, "".join(collector.text)
                collector.token_ids, collector.text = [], []
                completion = SimpleNamespace(token_ids=ids, text=text, logprobs=None, stop_reason=None,
                                             finish_reason="length" if collector.finished else None)
                yield SimpleNamespace(outputs=[completion], finished=collector.finished, metrics=None,
                                      num_cached_tokens=0)
                if collector.finished:
                    return
        finally:
            self.running.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        self.running.pop(request_id, None)

    def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _serve(step_s: float, port_box: list, stop: threading.Event, counters: dict) -> None:
    import uvloop

    from arctic_gen.server.app import GenerateServer, ServerConfig
    from arctic_gen.server.core import GenerationCore

    async def main() -> None:
        engine = SyntheticEngine(step_s)
        core = GenerationCore(engine, max_concurrent_streams=4096)
        server = GenerateServer(engine, core, ServerConfig(host="127.0.0.1", port=0))
        await server.start()
        counters["core"] = core
        port_box.append(server.port)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await server.server.stop(0)
        engine.shutdown()

    uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--tokens", type=int, default=256, help="tokens per request (default: 256)")
    parser.add_argument("--step-ms", type=float, default=2.0, help="synthetic engine step (default: 2 ms)")
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()

    from gen_bench import ClientPool, _commit, default_machine  # load_tests/gen_bench.py

    # The server runs in this process (a thread with its own event loop); the clients in other processes.
    # Process CPU time below is this process: the server plus the idle coordinator.
    port_box: list[int] = []
    stop = threading.Event()
    counters: dict = {}
    thread = threading.Thread(target=_serve, args=(args.step_ms / 1e3, port_box, stop, counters), daemon=True)
    thread.start()
    while not port_box:
        time.sleep(0.05)
    target = f"127.0.0.1:{port_box[0]}"
    pool = ClientPool(args.client_procs, channels=2)
    rows = []
    try:
        pool.level("grpc", target, "", min(args.streams), 1, args.tokens)  # warm-up
        for streams in args.streams:
            core = counters["core"]
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            msgs0 = core.messages_streamed
            result = pool.level("grpc", target, "", streams, args.requests_per_stream, args.tokens)
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            messages = core.messages_streamed - msgs0
            cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            row = {"streams": streams, "tokens_per_s": result["tokens_per_s"],
                   "messages_per_s": round(messages / result["wall_s"], 1),
                   "tokens_per_message": round(result["output_tokens"] / max(messages, 1), 2),
                   "server_cpu_ms_per_1k_messages": round(cpu_s * 1e6 / max(messages, 1), 1),
                   "server_cpu_util": round(cpu_s / result["wall_s"], 2), "ttft_p50_ms": result["ttft_p50_ms"],
                   "step_ms": args.step_ms, "tokens": args.tokens, "commit": _commit(),
                   "machine": default_machine()}
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        pool.close()
        stop.set()
        thread.join(10)

    today = datetime.date.today().strftime("%Y%m%d")
    out = args.out or HERE / "results" / f"gen_frontend_{today}.json"
    existing = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(existing + rows, indent=1) + "\n")
    if not args.no_readme:
        command = "python load_tests/gen_frontend_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        summary = "; ".join(f"{r['streams']} streams: {r['tokens_per_s']:.0f} tok/s, {r['messages_per_s']:.0f} msg/s, "
                            f"{r['tokens_per_message']} tok/msg, {r['server_cpu_ms_per_1k_messages']} ms CPU per "
                            f"1k msg, CPU {r['server_cpu_util']}" for r in rows)
        with open(HERE / "results" / "README.md", "a") as f:
            f.write(f"- {datetime.date.today().isoformat()} · {default_machine()} · `{command.strip()}` · "
                    f"one front end over a synthetic {args.step_ms} ms/step engine: {summary} → `{out.name}`\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
