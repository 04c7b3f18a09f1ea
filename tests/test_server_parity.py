"""Through the real server (subprocess, as `make serve` starts it): vectors equal sentence-transformers'."""

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from arctic_embed.client import EmbedClient
from arctic_embed.testing import varied_texts
from arctic_protos.arctic_inference import inference_pb2, inference_pb2_grpc


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return varied_texts(200, seed=0)


@pytest.fixture(scope="module")
def reference(st_model, texts) -> np.ndarray:
    return st_model.encode(texts, normalize_embeddings=True, batch_size=64)


@pytest.fixture(scope="module")
def client(embed_server):
    with EmbedClient(embed_server.target, timeout_s=120) as c:
        yield c


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def test_200_varied_texts_float32_match_sentence_transformers(client, texts, reference) -> None:
    ours = client.embed(texts, batch_size=50)
    assert ours.shape == (200, 384) and ours.dtype == np.float32
    assert _min_cos(ours, reference) >= 0.9999


def test_float16_and_bfloat16_outputs(client, texts, reference) -> None:
    half = client.embed(texts, dtype="float16", batch_size=64)
    assert half.dtype == np.float16 and _min_cos(half.astype(np.float32), reference) >= 0.999
    bf16 = client.embed(texts[:40], dtype="bfloat16")
    assert _min_cos(bf16, reference[:40]) >= 0.99


def test_matryoshka_dimensions_and_unnormalized_output(client, texts, reference) -> None:
    small = client.embed(texts[:20], dimensions=64)
    expected = reference[:20, :64] / np.linalg.norm(reference[:20, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(small, expected, atol=2e-4)
    raw = client.embed(texts[:20], normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    assert _min_cos(raw, reference[:20]) >= 0.9999


def test_quantized_outputs(client, texts, reference) -> None:
    detailed = client.embed_detailed(texts[:10], dtype="int8")
    assert detailed.vectors.dtype == np.int8
    back = detailed.vectors.astype(np.float32) * detailed.scales[:, None]
    assert _min_cos(back, reference[:10]) >= 0.999
    bits = client.embed(texts[:10], dtype="binary")
    np.testing.assert_array_equal(bits, np.packbits(reference[:10] > 0, axis=1))


def test_token_ids_input_equals_text_input(client, texts) -> None:
    ids = client.tokenize(texts[:8])
    np.testing.assert_allclose(client.embed(ids), client.embed(texts[:8]), atol=1e-6)


def test_empty_text_and_nul_and_lone_surrogates_are_embedded(client, st_model) -> None:
    odd = ["", "nul\x00inside", "lone \ud800 surrogate", "\x00"]
    ours = client.embed(odd)
    cleaned = ["", "nul\x00inside", "lone ? surrogate", "\x00"]
    assert _min_cos(ours, st_model.encode(cleaned, normalize_embeddings=True)) >= 0.9999


def test_arctic_encode_returns_the_same_vectors_as_embed(embed_server, client, texts) -> None:
    ours = client.embed(texts[:32])
    with grpc.insecure_channel(embed_server.target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        response = stub.Encode(inference_pb2.EncodeRequest(request_id="r1", n_prompts=32, prompts=texts[:32]))
        assert response.n_prompts == 32 and response.embedding_dim == 384 and not response.error
        arctic = np.stack([np.frombuffer(b, "<f4") for b in response.embedding_bytes_fp32])
        np.testing.assert_array_equal(arctic, ours)
        ids = client.tokenize(texts[:4])
        by_ids = stub.Encode(inference_pb2.EncodeRequest(n_prompts=4, token_id_bytes_i32=[a.tobytes() for a in ids]))
        np.testing.assert_allclose(np.stack([np.frombuffer(b, "<f4") for b in by_ids.embedding_bytes_fp32]),
                                   ours[:4], atol=1e-6)
        assert stub.HealthCheck(inference_pb2.HealthCheckRequest()).healthy
        info = stub.GetReplicaInfo(inference_pb2.ReplicaInfoRequest())
        assert info.n_replicas == 2 and info.n_healthy_replicas == 2
        assert all(r.ready and r.task == "embed" for r in info.replica_infos)


def test_health_and_reflection(embed_server) -> None:
    with grpc.insecure_channel(embed_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "arctic.embed.v1.EmbedService", "arctic_inference.InferenceService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == 1
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert {"arctic.embed.v1.EmbedService", "arctic_inference.InferenceService", "grpc.health.v1.Health"} <= names


def test_info_and_stage_timings(client) -> None:
    info = client.info()
    assert (info.dim, info.max_input_tokens, info.engine, info.n_healthy_replicas) == (384, 256, "torch", 2)
    detailed = client.embed_detailed(["hello world", "second"])
    t = detailed.timings
    assert 0 < t.inference_ns <= t.total_ns and t.tokenize_ns <= t.total_ns
    assert detailed.token_counts.tolist() == [4, 3]
