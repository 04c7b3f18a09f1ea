"""The seed's offline example (vllm.plugins.load_general_plugins(); LLM(..., ulysses_sequence_parallel_size=1,
enable_shift_parallel=False, speculative_config=...); llm.chat(...)) on SmolLM2-135M-Instruct, in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arctic_gen.testing import cpu_vllm_env

cpu_vllm_env()
pytestmark = pytest.mark.vllm

EXAMPLE = Path(__file__).resolve().parents[1] / "load_tests" / "gen_offline_example.py"


# "arctic" (in CI) runs the seed's speculative config, suffix included; "auto" (the example's default: suffix
# alone) is slow: suffix speculation's greedy text is CI's test_suffix_vllm.
@pytest.mark.parametrize("method", [pytest.param("auto", marks=pytest.mark.slow), "arctic"])
def test_seed_offline_example_runs_on_smollm2(method: str) -> None:
    pytest.importorskip("vllm")
    from arctic_gen.patches.engine_args import proposer_available
    from arctic_gen.testing import random_speculator, smollm2

    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    cmd = [sys.executable, str(EXAMPLE), "--model", str(smollm2()), "--max-tokens", "32", "--cpu", "--method", method]
    if method == "arctic":  # the seed's config: a speculator in Arctic's format, suffix on, disable_by_batch_size
        cmd += ["--speculator", str(random_speculator(smollm2(), "sum_lstm", inner_dim=32))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    # Our suffix method when its proposer is in the build; vLLM's ngram until then (vLLM's own "suffix" needs
    # arctic-inference, which must not be installed next to this plugin).
    if method == "auto":
        assert summary["method"] == ("suffix" if proposer_available("suffix") else "ngram")
    else:
        assert summary["method"] == "arctic"
    assert summary["completion_tokens"] > 0 and summary["finish_reason"] in ("length", "stop")
    assert "education" in out.stdout.lower()
    assert summary["spec"].get("num_drafts", 0) > 0
