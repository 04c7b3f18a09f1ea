"""Helpers shared by tests and load tests: varied test texts, texts of exact token lengths, a server subprocess."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_WORDS = ("the quick brown fox jumps over a lazy dog while embedding servers batch tokens across replicas "
          "latency throughput vector search retrieval ranking query document passage model gradient").split()
_UNICODE = ["naïve café résumé", "日本語のテキストを埋め込む", "Ελληνικά κείμενα", "emoji 🚀🔥✨ mixed",
            "русский текст для проверки",
            "עברית מימין לשמאל", "العربية أيضا", "한국어 문장입니다", "\u00a0nbsp\tand\ttabs"]
_CODE = ["def add(a, b):\n    return a + b\n", "SELECT id, name FROM users WHERE age > 21 ORDER BY name;",
         "for (int i = 0; i < n; ++i) { sum += x[i] * y[i]; }", "fn main() { println!(\"{}\", 42); }",
         "<div class=\"row\"><span>{{ value }}</span></div>", "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}"]


def varied_texts(n: int = 200, seed: int = 0) -> list[str]:
    """Short, long (past 256 tokens), unicode and code texts, deterministic for a seed."""
    rng = random.Random(seed)
    texts: list[str] = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            texts.append(" ".join(rng.choices(_WORDS, k=rng.randint(1, 12))))
        elif kind == 1:
            texts.append(" ".join(rng.choices(_WORDS, k=rng.randint(260, 420))))
        elif kind == 2:
            texts.append(rng.choice(_UNICODE) + " " + " ".join(rng.choices(_WORDS, k=rng.randint(0, 20))))
        elif kind == 3:
            texts.append("\n".join(rng.choices(_CODE, k=rng.randint(1, 6))))
        else:
            texts.append(" ".join(rng.choices(_WORDS, k=rng.randint(20, 120))) + f" #{i}")
    return texts


def texts_of_token_length(tokenizer, n_tokens: int, count: int, seed: int = 0) -> list[str]:
    """`count` distinct texts that tokenize to exactly `n_tokens` tokens (special tokens included) with `tokenizer`
    (a `tokenizers.Tokenizer` without padding/truncation): words that are one token each, joined by spaces."""
    rng = random.Random(seed)
    special = len(tokenizer.encode("").ids)
    single = [w for w in _WORDS if len(tokenizer.encode(w).ids) == special + 1]
    out: list[str] = []
    for _ in range(count):
        text = " ".join(rng.choices(single, k=n_tokens - special))
        assert len(tokenizer.encode(text).ids) == n_tokens, text
        out.append(text)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(target: str, timeout_s: float = 120.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before serving")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{target} not serving after {timeout_s}s")


def stop_process(process: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """SIGTERM (a server drains), then SIGKILL after `timeout_s`; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class ServerProcess:
    process: subprocess.Popen
    target: str
    port: int

    def stop(self, timeout_s: float = 30.0) -> int:
        return stop_process(self.process, timeout_s)


def start_server(args: Sequence[str] = (), port: int | None = None, timeout_s: float = 180.0,
                 log_path: str | None = None) -> ServerProcess:
    """Start `arctic-embed serve` (the command `make serve` runs) as a subprocess and wait until it serves."""
    port = port or free_port()
    if not any(a == "--http-port" or a.startswith("--http-port=") for a in args):
        args = [*args, "--http-port", "0"]  # HTTP off unless asked for: test servers must not share port 8080
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, "-m", "arctic_embed", "serve", "--host", "127.0.0.1", "--port",
                                str(port), *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    target = f"127.0.0.1:{port}"
    try:
        wait_serving(target, timeout_s, process)
    except Exception:
        process.kill()
        raise
    return ServerProcess(process, target, port)
