"""Non-BERT architectures through the whole server (gateway → tokenizer pool → replica → engine).

XLM-R (SentencePiece-style Unigram tokenizer) on the native torch engine; a tiny random Qwen3 decoder embedder
asked of the torch engine, which routes it to vLLM: last-token pooling and an instruction prompt from its
sentence-transformers config, checked against plain transformers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arctic_embed.client import EmbedClient
from arctic_embed.models.random_models import SentenceTransformersFiles, Shape, build_random_model
from arctic_embed.testing import start_server, varied_texts

SERVER_ARGS = ["--replicas-per-device", "1", "--tokenizer-workers", "1", "--torch-threads", "1",
               "--max-inputs-per-request", "256"]
QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages\nQuery: "


def test_xlm_roberta_through_the_server_matches_sentence_transformers(tmp_path) -> None:
    from sentence_transformers import SentenceTransformer

    model = build_random_model("xlm-roberta", tmp_path / "xlmr", st=SentenceTransformersFiles(pooling="cls"), seed=3)
    texts = varied_texts(200, seed=31)
    server = start_server(["--model", str(model), *SERVER_ARGS], log_path=str(tmp_path / "server.log"))
    try:
        with EmbedClient(server.target, timeout_s=120) as client:
            info = client.info()
            ours = client.embed(texts)
    finally:
        server.stop()
    assert info.engine == "torch" and info.max_input_tokens == 128
    assert (info.architecture, info.pooling, info.pooling_source) == ("XLMRobertaModel", "cls", "modules.json")
    ref = SentenceTransformer(str(model), device="cpu").encode(texts, normalize_embeddings=True)
    assert float((ours * ref).sum(axis=1).min()) >= 0.9999


@pytest.mark.vllm
def test_qwen3_decoder_routes_to_vllm_with_last_token_pooling_and_prompts(tmp_path) -> None:
    pytest.importorskip("vllm")
    from transformers import AutoModel, AutoTokenizer

    st = SentenceTransformersFiles(pooling=None, prompts={"query": QUERY_PROMPT, "document": ""})
    model = build_random_model("qwen3", tmp_path / "qwen3", Shape(hidden=128, layers=2, heads=4, intermediate=256),
                               st=st, seed=5)
    texts = varied_texts(40, seed=32)
    server = start_server(["--model", str(model), "--engine", "torch", "--replica-startup-timeout", "900",
                           *SERVER_ARGS], timeout_s=900, log_path=str(tmp_path / "server.log"))
    try:
        with EmbedClient(server.target, timeout_s=300) as client:
            info = client.info()
            plain = client.embed(texts)
            queries = client.embed(texts[:10], prompt_name="query")
    finally:
        server.stop()
    assert info.engine == "vllm" and info.pooling == "lasttoken"
    assert info.pooling_source.startswith("default for decoder") and list(info.prompt_names) == ["document", "query"]
    assert "serving it with the vllm engine" in (tmp_path / "server.log").read_text()

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    hf = AutoModel.from_pretrained(str(model), dtype=torch.float32).eval()

    def reference(batch: list[str]) -> np.ndarray:
        rows = []
        for text in batch:  # one at a time: no padding question for last-token pooling
            ids = tokenizer(text, truncation=True, max_length=info.max_input_tokens, return_tensors="pt")["input_ids"]
            assert int(ids[0, -1]) == tokenizer.eos_token_id  # Qwen3-Embedding's appended end-of-text token
            with torch.inference_mode():
                last = hf(input_ids=ids).last_hidden_state[0, -1]
            rows.append(torch.nn.functional.normalize(last, dim=0).numpy())
        return np.stack(rows)

    assert float((plain * reference(texts)).sum(axis=1).min()) >= 0.9999
    assert float((queries * reference([QUERY_PROMPT + t for t in texts[:10]])).sum(axis=1).min()) >= 0.9999
    assert float((queries * plain[:10]).sum(axis=1).max()) < 0.9999  # the prompt changed the vectors
