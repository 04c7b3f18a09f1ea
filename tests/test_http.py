"""HTTP next to gRPC on one server (subprocess, as `make serve` starts it): the official `openai` client and TEI's
/embed get the same vectors as gRPC Embed; bad input is a 4xx with a JSON body and the server stays up; JSON logs
carry one access line per request; reflection answers under v1 and v1alpha."""

from __future__ import annotations

import base64
import json
import time

import grpc
import httpx
import numpy as np
import openai
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from arctic_embed.client import EmbedClient
from arctic_embed.testing import free_port, start_server, varied_texts

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("http") / "server.log"
    http_port = free_port()
    proc = start_server(["--http-port", str(http_port), "--tokenizer-workers", "1", "--max-inputs-per-request", "64",
                         "--max-message-bytes", str(2**20), "--access-log", "--log-format", "json"],
                        log_path=str(log))
    proc.http = f"http://127.0.0.1:{http_port}"  # type: ignore[attr-defined]
    proc.log = log  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def grpc_client(server):
    with EmbedClient(server.target, timeout_s=120) as c:
        yield c


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.http + "/v1", api_key="unused", max_retries=0, timeout=120)


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


TEXTS = varied_texts(12, seed=3)


def test_openai_client_text_matches_grpc(oai, grpc_client) -> None:
    reference = grpc_client.embed(TEXTS)
    tokens = int(sum(len(ids) for ids in grpc_client.tokenize(TEXTS)))
    for fmt in ("float", openai.omit):  # omitted: the client asks for base64 and decodes it itself
        response = oai.embeddings.create(model=MODEL, input=TEXTS, encoding_format=fmt)
        ours = np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)], dtype=np.float32)
        assert ours.shape == (len(TEXTS), 384)
        assert _min_cos(ours, reference) >= 0.9999
        assert response.model == MODEL
        assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    one = oai.embeddings.create(model=MODEL, input="hello world")
    assert len(one.data) == 1 and _min_cos(np.array([one.data[0].embedding]), grpc_client.embed(["hello world"])) \
        >= 0.9999


def test_openai_token_arrays_dimensions_and_base64_match_grpc(oai, grpc_client, server) -> None:
    ids = grpc_client.tokenize(TEXTS[:6])
    reference = grpc_client.embed(ids, dimensions=128)
    response = oai.embeddings.create(model="", input=[a.tolist() for a in ids], dimensions=128)
    ours = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert ours.shape == (6, 128) and _min_cos(ours, reference) >= 0.9999
    # One token list (not a list of lists) is one input.
    single = oai.embeddings.create(model=MODEL, input=ids[0].tolist(), encoding_format="float")
    assert len(single.data) == 1
    assert _min_cos(np.array([single.data[0].embedding]), grpc_client.embed(ids[:1])) >= 0.9999
    # Raw base64 bytes are the little-endian float32 vector, exactly.
    raw = httpx.post(server.http + "/v1/embeddings", json={"input": TEXTS[:2], "encoding_format": "base64",
                                                           "dimensions": 64}, timeout=60).json()
    vectors = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]])
    assert vectors.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert _min_cos(vectors, grpc_client.embed(TEXTS[:2], dimensions=64)) >= 0.9999


def test_tei_embed_matches_grpc(server, grpc_client) -> None:
    reference = grpc_client.embed(TEXTS[:8])
    response = httpx.post(server.http + "/embed", json={"inputs": TEXTS[:8]}, timeout=60)
    assert response.status_code == 200
    assert float(response.headers["x-inference-time"]) > 0
    assert _min_cos(np.array(response.json(), dtype=np.float32), reference) >= 0.9999
    one = httpx.post(server.http + "/embed", json={"inputs": "hello", "normalize": False, "dimensions": 32},
                     timeout=60).json()
    assert len(one) == 1 and len(one[0]) == 32
    np.testing.assert_allclose(one[0], grpc_client.embed(["hello"], normalize=False, dimensions=32)[0], rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize(("path", "body", "status", "needle"), [
    ("/v1/embeddings", {"input": []}, 400, "no inputs"),
    ("/v1/embeddings", {"input": 5}, 400, "invalid request body"),
    ("/v1/embeddings", {"input": ["a"], "dimensions": 9999}, 400, "dimensions=9999"),
    ("/v1/embeddings", {"input": ["a"], "model": "gpt-4"}, 400, "unknown model"),
    ("/v1/embeddings", {"input": [[1, 2, 10**12]]}, 400, "outside"),
    ("/v1/embeddings", {"input": [[99999999]]}, 400, "vocabulary"),
    ("/v1/embeddings", {"input": ["x"] * 65}, 400, "over the limit"),
    ("/v1/embeddings", {"input": ["word " * 400], "truncate": False}, 400, "limit"),
    ("/v1/embeddings", {"input": ["a"], "encoding_format": "int8"}, 400, "encoding_format"),
    ("/v1/embeddings", {"input": ["a" * (2**20 + 10)]}, 413, "over the limit"),
    ("/embed", {"inputs": "hi", "truncation_direction": "up"}, 422, "right or left"),
    ("/embed", {"inputs": []}, 422, "no inputs"),
    ("/embed", {"inputs": "hi", "prompt_name": "nope"}, 422, "prompt_name"),
])
def test_bad_input_is_4xx_with_json_error(server, path, body, status, needle) -> None:
    response = httpx.post(server.http + path, json=body, timeout=60)
    assert response.status_code == status, response.text
    payload = response.json()
    message = payload["error"]["message"] if path.startswith("/v1/") else payload["error"]
    assert needle in message
    if path.startswith("/v1/"):
        assert payload["error"]["type"] == "invalid_request_error"
    else:
        assert payload["error_type"] == "Validation"


def test_openai_client_raises_bad_request_and_server_stays_up(oai, server) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model=MODEL, input=[])
    not_json = httpx.post(server.http + "/v1/embeddings", content=b"{not json", timeout=30,
                          headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "error" in not_json.json()
    assert server.process.poll() is None
    assert httpx.get(server.http + "/health", timeout=10).status_code == 200
    assert len(oai.embeddings.create(model=MODEL, input=["still here"]).data) == 1


def test_info_models_and_metrics(server) -> None:
    info = httpx.get(server.http + "/info", timeout=10).json()
    assert info["model_id"] == MODEL and info["dim"] == 384 and info["max_input_length"] == 256
    models = httpx.get(server.http + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    text = httpx.get(server.http + "/metrics", timeout=10).text
    assert 'arctic_embed_http_requests_total{code="200",route="/v1/embeddings"}' in text
    assert "arctic_embed_tokens_total" in text


def test_reflection_v1_and_v1alpha_list_services(server) -> None:
    with grpc.insecure_channel(server.target) as channel:
        for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
            call = channel.stream_stream(f"/{package}.ServerReflection/ServerReflectionInfo",
                                         request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                         response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
            reply = next(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
            names = {s.name for s in reply.list_services_response.service}
            assert {"arctic.embed.v1.EmbedService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                    "grpc.reflection.v1alpha.ServerReflection"} <= names, package
            symbol = reflection_pb2.ServerReflectionRequest(file_containing_symbol="arctic.embed.v1.EmbedService")
            reply = next(call(iter([symbol]), timeout=10))
            assert reply.file_descriptor_response.file_descriptor_proto, package


def test_json_logs_carry_one_access_line_per_request(server, grpc_client) -> None:
    marker = f"/health?probe={time.monotonic_ns()}"
    httpx.get(server.http + marker, timeout=10)
    httpx.post(server.http + "/v1/embeddings", json={"input": []}, timeout=10)
    grpc_client.embed(["access log"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
        access = [r for r in lines if r.get("logger") == "arctic.access"]
        http_lines = [r for r in access if r["protocol"] == "http" and r["method"] == "GET /health"]
        grpc_lines = [r for r in access if r["protocol"] == "grpc"
                      and r["method"] == "/arctic.embed.v1.EmbedService/Embed" and r["status"] == "OK"]
        if http_lines and grpc_lines:
            break
        time.sleep(0.2)
    assert http_lines and grpc_lines
    assert all(r["level"] and r["time"].endswith("Z") and "duration_ms" in r for r in access)
    bad = [r for r in access if r["protocol"] == "http" and r["status"] == 400]
    assert bad, "failed requests are logged with their status"


def test_container_healthcheck_passes_against_the_server(server) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "arctic_embed.healthcheck", server.target], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"{server.target}: SERVING"
