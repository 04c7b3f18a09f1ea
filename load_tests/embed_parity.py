"""Parity and restart figures for the embedding service, through `arctic-embed serve` as `make serve` runs it.

    .venv/bin/python load_tests/embed_parity.py

200 varied texts (short, past 256 tokens, unicode, code): min cosine to sentence-transformers on the same model
directory for float32 and float16 outputs; then SIGKILL replica 0 and time until a new replica process is ready.
"""

from __future__ import annotations

import json
import os
import signal
import time

import grpc
import numpy as np
from sentence_transformers import SentenceTransformer

from arctic_embed.client import EmbedClient
from arctic_embed.config import default_model_path
from arctic_embed.testing import start_server, varied_texts
from arctic_protos.arctic_inference import inference_pb2, inference_pb2_grpc


def min_cosine(ours: np.ndarray, reference: np.ndarray) -> float:
    ours = ours.astype(np.float32)
    return float(((ours / np.linalg.norm(ours, axis=1, keepdims=True)) * reference).sum(axis=1).min())


def replica_zero(stub: inference_pb2_grpc.InferenceServiceStub) -> tuple[bool, int]:
    info = stub.GetReplicaInfo(inference_pb2.ReplicaInfoRequest()).replica_infos[0]
    return info.ready, json.loads(info.parallel_config)["pid"]


def main() -> None:
    texts = varied_texts(200, seed=0)
    reference = SentenceTransformer(str(default_model_path()), device="cpu").encode(texts, normalize_embeddings=True)
    server = start_server(["--replicas-per-device", "2", "--tokenizer-workers", "1", "--torch-threads", "1"])
    try:
        with EmbedClient(server.target) as client:
            fp32 = client.embed(texts, batch_size=50)
            fp16 = client.embed(texts, dtype="float16")
        print(json.dumps({"texts": len(texts), "min_cos_float32": min_cosine(fp32, reference),
                          "min_cos_float16": min_cosine(fp16, reference)}))
        with grpc.insecure_channel(server.target) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            _, victim = replica_zero(stub)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            while (state := replica_zero(stub)) and not (state[0] and state[1] != victim):
                time.sleep(0.05)
            print(json.dumps({"replica_back_after_s": round(time.monotonic() - killed, 2)}))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
