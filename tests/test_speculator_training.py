"""Speculator training pipeline (arctic_gen.training.speculator): token shards and batches, the objective against
the model's own forward, acceptance against a plain loop, the prompt corpus, and the CLI end to end on the tiny
Llama (vLLM data stage → train → export → eval, with resume)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arctic_gen.models.speculator_config import SpeculatorConfig, build_speculator, load_speculator
from arctic_gen.training.speculator.cli import main
from arctic_gen.training.speculator.corpus import builtin_conversations, chat_prompts, file_conversations
from arctic_gen.training.speculator.objective import (
    SpeculatorObjective,
    acceptance_counts,
    acceptance_summary,
    shifted,
)
from arctic_gen.training.speculator.tokens import (
    Sequences,
    epoch_plan,
    make_batch,
    read_split,
    shard_path,
    token_budget_batches,
    write_shard,
)

V, H = 61, 16


def _spec(method: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = SpeculatorConfig(n_predict=3, input_hidden_dim=H, inner_dim=24, emb_dim=24, proj_dim=24, vocab_size=V,
                           tie_weights=method == "sum_lstm", tie_lstm_embs=True, method=method)
    return build_speculator(cfg)


def test_shards_round_trip_and_batches(tmp_path):
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(0, V, size=int(n))) for n in rng.integers(6, 40, size=50)]
    prompt_lens = [int(rng.integers(1, 5)) for _ in seqs]
    write_shard(shard_path(tmp_path, "train", 0), Sequences.from_lists(seqs[:20], prompt_lens[:20]))
    write_shard(shard_path(tmp_path, "train", 1), Sequences.from_lists(seqs[20:], prompt_lens[20:]))
    data = read_split(tmp_path, "train")
    assert len(data) == 50 and [list(data.get(i)[0]) for i in range(50)] == seqs
    assert data.completion_tokens == sum(len(s) for s in seqs) - sum(prompt_lens)
    assert len(read_split(tmp_path, "held_out")) == 0

    batch = make_batch(data, [3, 7], max_len=30)
    for row, i in enumerate([3, 7]):
        n = min(len(seqs[i]), 30)
        assert list(batch.input_ids[row, :n]) == seqs[i][:n] and not batch.input_ids[row, n:].any()
        assert batch.target_mask[row].sum() == n - prompt_lens[i] and batch.target_mask[row, prompt_lens[i]]

    plan = epoch_plan(data, 120, 40, seed=1, epoch=0)
    assert sorted(i for b in plan for i in b) == list(range(50))
    assert all(len(b) * max(min(len(seqs[i]), 40) for i in b) <= 120 or len(b) == 1 for b in plan)
    assert plan != epoch_plan(data, 120, 40, seed=1, epoch=1)
    ranks = [token_budget_batches(data, 120, 40, seed=1, rank=r, world_size=2) for r in range(2)]
    per_rank = [[next(stream) for _ in range(len(plan) // 2)] for stream in ranks]
    assert per_rank[0] + per_rank[1] and sorted(per_rank[0] + per_rank[1]) == sorted(plan[:len(plan) // 2 * 2])
    assert next(ranks[0]) == epoch_plan(data, 120, 40, seed=1, epoch=1)[0]


@pytest.mark.parametrize("method", ["sum_rnn", "sum_lstm"])
def test_objective_matches_forward_cross_entropy(method):
    spec = _spec(method)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (3, 12), generator=g)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[:, 4:] = True
    mask[2, 9:] = False  # a shorter row
    hidden = torch.randn(3, 12, H, generator=g)
    ids_ext, mask_ext = shifted(ids, mask, 3)
    loss, stats = SpeculatorObjective(spec)(hidden, ids_ext, mask_ext)
    logits = spec(hidden, ids_ext[:, :12 + 3])  # [n, B, T, V]: head i at t predicts token t + 2 + i
    expected = 0.0
    for i in range(3):
        sel = mask_ext[:, 2 + i:2 + i + 12]
        expected += F.cross_entropy(logits[i][sel], ids_ext[:, 2 + i:2 + i + 12][sel])
        assert int(stats[i, 2]) == int(sel.sum())
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in spec.parameters())


def test_acceptance_counts_match_a_position_loop():
    spec = _spec("sum_lstm", seed=2).eval()
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 10, H, generator=g)
    ids = torch.randint(0, V, (2, 10), generator=g)
    lengths = torch.tensor([10, 8])
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 3:10] = True
    mask[1, 2:8] = True
    # make some drafts right: plant the greedy chain of position (0, 3) into the sequence
    ids[0, 5:8] = spec.propose(hidden[0, 3:4], ids[0, 4:5], 3)[0]
    counts = acceptance_counts(spec, hidden, ids, mask, lengths)
    expected = torch.zeros(4, dtype=torch.long)
    for b in range(2):
        for t in range(10):
            if t + 1 < 10 and mask[b, t + 1] and t + 4 < lengths[b]:
                drafts = spec.propose(hidden[b, t:t + 1], ids[b, t + 1:t + 2], 3)[0]
                expected[0] += 1
                for i in range(3):
                    if drafts[i] != ids[b, t + 2 + i]:
                        break
                    expected[1 + i] += 1
    assert torch.equal(counts, expected) and expected[3] >= 1
    summary = acceptance_summary(counts)
    assert summary["positions"] == int(expected[0])
    assert summary["mean_accepted_len"] == pytest.approx(float(expected[1:].sum()) / float(expected[0]), abs=1e-4)


def test_prompt_sources(tmp_path):
    train, held = builtin_conversations("train"), builtin_conversations("held_out")
    assert len(train) > 1000 and len(held) > 50
    train_texts = {c[0]["content"] for c in train}
    assert not train_texts & {c[0]["content"] for c in held}
    assert any("```python" in t for t in train_texts) and any("essay" in t for t in train_texts)

    path = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                          {"role": "user", "content": "Tell me more"}]},
            {"conversations": [{"from": "human", "value": "ShareGPT style"}]},
            {"text": "word " * 400}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    convs = file_conversations(path)
    assert convs[1] == [{"role": "user", "content": "ShareGPT style"}] and len(convs[0]) == 3

    from transformers import AutoTokenizer

    from arctic_gen.testing import tiny_llama

    tok = AutoTokenizer.from_pretrained(tiny_llama())
    prompts = chat_prompts(tok, convs, max_prompt_tokens=64)
    assert len(prompts) >= 2 + 1 + 6  # two user turns, one ShareGPT turn, the long text cut into chunks
    assert all(len(p) <= 64 for p in prompts)
    assert tok.decode(prompts[0]).rstrip().endswith("assistant")
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(ValueError, match="bad turn"):
        file_conversations(tmp_path / "bad.jsonl")


# --- end to end on the tiny Llama ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from arctic_gen.testing import cpu_vllm_env, tiny_llama

    cpu_vllm_env()
    model = tiny_llama()
    root = tmp_path_factory.mktemp("spec_train")
    prompts = root / "prompts.jsonl"
    rng = np.random.default_rng(0)
    words = "river token model stream draft cache tree code value list answer question write essay".split()
    with open(prompts, "w") as f:
        for i in range(80):
            f.write(json.dumps({"prompt": " ".join(rng.choice(words, size=8 + i % 7))}) + "\n")
    argv = ["data", "--model", str(model), "--out-dir", str(root / "data"), "--prompts", str(prompts),
            "--samples-per-prompt", "2", "--max-new-tokens", "40", "--max-prompt-tokens", "64",
            "--prompts-per-shard", "32", "--held-out-prompts", "8", "--dtype", "float32", "--no-progress",
            "--engine-arg", "enforce_eager=true", "--engine-arg", f"kv_cache_memory_bytes={64 * 2**20}"]
    runs = []
    for extra in (["--max-seconds", "0.000001"], []):  # a run stopped by its budget, then its resumption
        run = [sys.executable, "-m", "arctic_gen.training.speculator.cli", *argv, *extra]
        done = subprocess.run(run, capture_output=True, text=True, timeout=600, env=dict(os.environ))
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.splitlines()[-1]))
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):  # nothing left to generate: no engine, in-process
        assert main(argv) == 0
    return {"model": model, "root": root, "data": root / "data", "budget": runs[0], "first": runs[1],
            "again": json.loads(capture.getvalue().splitlines()[-1]), "data_argv": argv}


@pytest.mark.vllm
def test_data_stage_writes_resumable_shards(tiny_data):
    budget, first, again = tiny_data["budget"], tiny_data["first"], tiny_data["again"]
    # over budget at once, the held-out shard and one training shard are still made (the train stage needs one)
    assert budget["stopped_by_time"] and budget["shards_written"] == 2 and budget["shards_total"] >= 4
    assert first["shards_done_before"] == 2 and first["shards_written"] == first["shards_total"] - 2
    assert first["completion_tokens"] > 500 and not first["stopped_by_time"]
    assert again["shards_written"] == 0 and again["shards_done_before"] == first["shards_total"]
    train, held = read_split(tiny_data["data"], "train"), read_split(tiny_data["data"], "held_out")
    assert len(held) >= 1 and len(train) >= 100  # 2 samples per training prompt, 1 greedy per held-out prompt
    assert all(len(train.get(i)[0]) > train.get(i)[1] for i in range(len(train)))
    changed = [a if a != "40" else "41" for a in tiny_data["data_argv"]]  # other --max-new-tokens
    assert main(changed) == 2  # refuses to mix settings in one directory


def _train(tiny_data, method: str, steps: int) -> tuple[list[str], dict]:
    out = tiny_data["root"] / f"train_{method}"
    argv = ["train", "--model", str(tiny_data["model"]), "--data-dir", str(tiny_data["data"]), "--out-dir",
            str(out), "--method", method, "--n-predict", "3", "--tokens-per-batch", "1024", "--log-every", "4",
            "--lr", "3e-3", "--export-dtype", "float32", "--device", "cpu", "--no-progress", "--save-every", "8"]
    assert main([*argv, "--max-steps", str(steps)]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    losses = [h["loss"] for h in summary["history"]]
    assert summary["steps"] == steps and losses[-1] < 0.7 * losses[0], losses
    assert summary["held_out"]["positions"] > 0
    return argv, summary


@pytest.mark.vllm
def test_mlp_speculator_trains_and_exports(tiny_data):
    _, summary = _train(tiny_data, "sum_rnn", 12)
    spec = load_speculator(summary["export_dir"], "cpu", torch.float32)
    assert spec.config.method == "sum_rnn" and spec.config.tie_weights and spec.n_predict == 3


@pytest.mark.vllm
def test_lstm_speculator_trains_exports_evaluates_and_resumes(tiny_data, capsys):
    argv, summary = _train(tiny_data, "sum_lstm", 12)
    out = tiny_data["root"] / "train_sum_lstm"
    method = "sum_lstm"

    spec_dir = out / "speculator"
    config = json.loads((spec_dir / "config.json").read_text())
    assert config["architectures"] == ["ArcticLSTMSpeculatorPreTrainedModel"] and config["method"] == method
    assert config["input_hidden_dim"] == 128 and config["vocab_size"] == 1024 and config["n_predict"] == 3
    exported = load_speculator(spec_dir, "cpu", torch.float32)
    state = torch.load(out / "train_state.pt", weights_only=False)
    trained = build_speculator(SpeculatorConfig.from_dict(state["spec_config"]))
    trained.load_state_dict(state["model"])
    g = torch.Generator().manual_seed(0)
    hidden, last = torch.randn(8, 128, generator=g), torch.randint(0, 1024, (8,), generator=g)
    assert torch.equal(exported.propose(hidden, last, 3), trained.eval().propose(hidden, last, 3))

    assert main(["export", "--train-dir", str(out), "--out", str(out / "exported"), "--dtype", "float32"]) == 0
    again = load_speculator(out / "exported", "cpu", torch.float32)
    assert torch.equal(again.propose(hidden, last, 3), exported.propose(hidden, last, 3))
    capsys.readouterr()
    assert main(["eval", "--speculator", str(spec_dir), "--model", str(tiny_data["model"]), "--data-dir",
                 str(tiny_data["data"]), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["positions"] == summary["held_out"]["positions"]
    assert evaluated["per_head"] == pytest.approx(summary["held_out"]["per_head"], abs=0.02)

    assert main([*argv, "--max-steps", "16"]) == 0  # resumes from train_state.pt at step 12
    resumed = json.loads((out / "train_summary.json").read_text())
    assert resumed["steps"] == 16 and resumed["history"][0]["step"] > 12


@pytest.mark.vllm
def test_trained_lstm_serves_in_vllm_with_method_arctic(tiny_data):
    """The export of the LSTM test above loads in vLLM as method "arctic": greedy text equals no speculation and
    its drafts are accepted (it was trained on this model's own continuations)."""
    spec_dir = tiny_data["root"] / "train_sum_lstm" / "speculator"
    if not (spec_dir / "config.json").exists():
        pytest.skip("needs test_lstm_speculator_trains_exports_evaluates_and_resumes (same module) to run first")
    from vllm import LLM, SamplingParams

    words = "river token model stream draft cache tree code value list answer question write essay".split()
    rng = np.random.default_rng(1)
    prompts = [" ".join(rng.choice(words, size=9)) for _ in range(6)]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    outputs, counters = {}, {}
    for name, spec in [("plain", None), ("arctic", {"method": "arctic", "model": str(spec_dir),
                                                    "num_speculative_tokens": 3, "adaptive_draft_length": False})]:
        llm = LLM(model=str(tiny_data["model"]), dtype="float32", max_model_len=256, enforce_eager=True,
                  kv_cache_memory_bytes=32 * 2**20, speculative_config=spec, disable_log_stats=False)
        outputs[name] = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
        counters[name] = {m.name: m.value for m in llm.get_metrics() if hasattr(m, "value")}
        del llm
    assert outputs["arctic"] == outputs["plain"]
    assert counters["arctic"]["vllm:spec_decode_num_draft_tokens"] > 0
    assert counters["arctic"]["vllm:spec_decode_num_accepted_tokens"] > 0
