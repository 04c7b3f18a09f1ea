"""SwiftKV distillation on the CPU: a few steps lower the held-out loss, resuming is exact, vLLM loads the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from arctic_gen.testing import tiny_llama

ARGS = ["--max-steps", "10", "--batch-size", "4", "--seq-len", "96", "--max-examples", "40", "--held-out-fraction",
        "0.25", "--eval-examples", "8", "--lr", "3e-3", "--warmup-steps", "1", "--save-every", "3", "--no-progress",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """The tiny Llama (4 layers) with its attention and MLP weights scaled up, so that later layers matter and the
    SwiftKV student starts measurably away from the teacher."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_llama(layers=4)
    out = tmp_path_factory.mktemp("teacher") / "tiny-strong"
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("q_proj", "k_proj", "o_proj", "v_proj", "gate_proj", "up_proj", "down_proj")):
                p.normal_(0.0, 0.1)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory) -> tuple[Path, dict]:
    from arctic_gen.training.swiftkv.cli import main

    out = tmp_path_factory.mktemp("distill") / "run"
    assert main(["--model", str(teacher), "--output-dir", str(out), "--num-key-value-layers", "2", *ARGS]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_distillation_lowers_the_loss(distilled):
    _, metrics = distilled
    assert metrics["steps"] == 10
    assert metrics["held_out_kl_before"] > 0.1
    assert metrics["held_out_kl_after"] < 0.85 * metrics["held_out_kl_before"]
    assert metrics["agreement_after"] > metrics["agreement_before"]


def test_only_swiftkv_tensors_change(distilled, teacher):
    from safetensors.torch import load_file

    out, _ = distilled
    saved = load_file(str(out / "checkpoint" / "model.safetensors"))
    original = load_file(str(teacher / "model.safetensors"))
    for name, tensor in original.items():
        assert torch.equal(saved[name], tensor), name
    new = sorted(n for n in saved if "swiftkv" in n)
    assert new == sorted(["model.norm_swiftkv.weight", *(f"model.layers.{i}.self_attn.{p}_proj_swiftkv.weight"
                                                          for i in (2, 3) for p in "qkv")])
    q3 = saved["model.layers.3.self_attn.q_proj_swiftkv.weight"]
    assert not torch.equal(q3, original["model.layers.3.self_attn.q_proj.weight"])  # it trained
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["model_type"] == "llama_swiftkv" and config["num_key_value_layers"] == 2
    assert config["architectures"] == ["LlamaSwiftKVForCausalLM"]


def test_resume_continues_exactly(distilled, teacher, tmp_path):
    """4 steps, stop, then resume to 10: the same SwiftKV tensors as 10 uninterrupted steps."""
    from safetensors.torch import load_file

    from arctic_gen.training.swiftkv.cli import main

    full, _ = distilled
    out = tmp_path / "resumed"
    base = ["--model", str(teacher), "--output-dir", str(out), "--num-key-value-layers", "2", *ARGS]
    assert main([*base, "--stop-after-steps", "4"]) == 0
    assert torch.load(out / "train_state.pt", weights_only=False)["step"] == 4
    assert main(base) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 10
    resumed = load_file(str(out / "checkpoint" / "model.safetensors"))
    reference = load_file(str(full / "checkpoint" / "model.safetensors"))
    for name in reference:
        if "swiftkv" in name:
            torch.testing.assert_close(resumed[name], reference[name], rtol=0, atol=1e-6)


def test_bad_options_are_rejected(teacher, tmp_path, capsys):
    from arctic_gen.training.swiftkv.cli import main

    rc = main(["--model", str(teacher), "--output-dir", str(tmp_path / "x"), "--num-key-value-layers", "4", *ARGS])
    assert rc == 2 and "nothing to distill" in capsys.readouterr().err
    rc = main(["--model", str(teacher), "--output-dir", str(tmp_path / "y"), "--num-key-value-layers", "1",
               "--key-value-group-size", "2", *ARGS])
    assert rc == 2 and "key_value_group_size" in capsys.readouterr().err


@pytest.mark.vllm
@pytest.mark.slow
def test_distilled_checkpoint_runs_in_vllm(distilled):
    """vLLM (skip path, chunked prefill) generates the distilled student's greedy text. Slow (a vLLM process): CI
    keeps test_only_swiftkv_tensors_change (this checkpoint's tensors and config) and test_swiftkv_vllm's
    test_across_kv_matches_torch_student (vLLM vs the same torch `greedy` on a checkpoint written by the same
    `save_checkpoint`)."""
    from transformers import AutoTokenizer

    from arctic_gen.testing import reference_generate
    from arctic_gen.training.swiftkv.reference import greedy

    out, _ = distilled
    checkpoint = out / "checkpoint"
    prompts = ["the model token stream is one two three four five six seven " * 3, "river mountain city"]
    got = reference_generate(checkpoint, prompts, max_tokens=8,
                             engine_kwargs={"max_num_batched_tokens": 32, "enable_chunked_prefill": True})
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    expected = greedy(checkpoint, [tokenizer(p)["input_ids"] for p in prompts], 8)
    assert [row["token_ids"] for row in got] == expected
