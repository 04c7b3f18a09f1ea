"""The vLLM pooling engine behind the same gateway: same vectors as sentence-transformers."""

import numpy as np
import pytest

from arctic_embed.client import EmbedClient
from arctic_embed.testing import start_server, varied_texts

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    pytest.importorskip("vllm")
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    server = start_server(["--engine", "vllm", "--replicas-per-device", "1", "--torch-threads", "2"],
                          timeout_s=300, log_path=str(log))
    yield server
    server.stop()


def test_vllm_engine_matches_sentence_transformers(vllm_server, st_model) -> None:
    texts = varied_texts(40, seed=9)
    with EmbedClient(vllm_server.target, timeout_s=120) as client:
        info = client.info()
        ours = client.embed(texts)
        half = client.embed(texts[:10], dtype="float16", dimensions=128)
    assert info.engine == "vllm" and info.n_healthy_replicas == 1
    ref = st_model.encode(texts, normalize_embeddings=True)
    assert float((ours * ref).sum(axis=1).min()) >= 0.9999
    small = ref[:10, :128] / np.linalg.norm(ref[:10, :128], axis=1, keepdims=True)
    assert float((half.astype(np.float32) * small).sum(axis=1).min()) >= 0.999
