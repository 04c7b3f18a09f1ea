"""Shared pieces of the reliability probes: the results file, the commit, a background load of Embed requests."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import subprocess
from pathlib import Path

import grpc
from grpc import aio

from arctic_protos.arctic.embed.v1 import embed_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "load_tests" / "results"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def results_path(date: str | None = None) -> Path:
    return RESULTS / f"reliability_{date or dt.datetime.now(dt.UTC).strftime('%Y%m%d')}.json"


def record(server: str, figures: dict, path: Path | None = None) -> Path:
    """Merge `figures` into this server's row of the results file (one row per server: embed, gen)."""
    path = path or results_path()
    rows = json.loads(path.read_text()) if path.exists() else []
    row = next((r for r in rows if r.get("server") == server), None)
    if row is None:
        row = {"server": server}
        rows.append(row)
    row.update(figures)
    row["commit"] = commit()
    row["recorded_utc"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return path


async def steady_load(target: str, clients: int, stop: asyncio.Event, texts_per_request: int = 16,
                      text: str = "a request under fault injection") -> collections.Counter:
    """`clients` closed-loop clients on one channel until `stop` is set; status counts of their requests."""
    codes: collections.Counter = collections.Counter()
    async with aio.insecure_channel(target) as channel:
        embed = channel.unary_unary("/arctic.embed.v1.EmbedService/Embed",
                                    request_serializer=pb.EmbedRequest.SerializeToString,
                                    response_deserializer=pb.EmbedResponse.FromString)

        async def client(c: int) -> None:
            i = 0
            while not stop.is_set():
                texts = [f"{text} {c} {i} {j}" for j in range(texts_per_request)]
                try:
                    reply = await embed(pb.EmbedRequest(texts=texts), timeout=300)
                    codes["OK" if len(reply.embeddings) == texts_per_request else "WRONG"] += 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] += 1
                i += 1

        await asyncio.gather(*(client(c) for c in range(clients)))
    return codes
