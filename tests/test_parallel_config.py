"""Ulysses/Shift engine configuration (no engine started): the world size vLLM sees, the checks against the model's
heads, the CLI flags, and the parallel layout the Generate service reports in `Info`."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from arctic_gen.config import ArcticConfig, ConfigError
from arctic_gen.testing import cpu_vllm_env

cpu_vllm_env()
pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def engine_args():
    pytest.importorskip("vllm")
    import vllm.plugins

    vllm.plugins.load_general_plugins()
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs


@pytest.fixture(scope="module")
def tiny() -> str:
    from arctic_gen.testing import tiny_llama

    return str(tiny_llama())


def _config(engine_args, model: str, **kwargs):
    args = engine_args(model=model, max_model_len=256, kv_cache_memory_bytes=16 * 2**20, **kwargs)
    return args.create_engine_config()


def test_sp_world_is_tp_times_sp_with_mp_workers_and_eager(engine_args, tiny) -> None:
    args = engine_args(model=tiny, max_model_len=256, kv_cache_memory_bytes=16 * 2**20,
                       ulysses_sequence_parallel_size=2, enable_shift_parallel=True, shift_parallel_threshold=64)
    config = args.create_engine_config()
    parallel = config.parallel_config
    assert (parallel.world_size, parallel.tensor_parallel_size, parallel.distributed_executor_backend) == (2, 1, "mp")
    assert config.model_config.enforce_eager
    assert ArcticConfig.from_vllm_config(config).parallel.shift_parallel_threshold == 64
    # The user's arguments are left as they were; a plain engine is untouched.
    assert (args.distributed_executor_backend, args.enforce_eager) == (None, False)
    assert _config(engine_args, tiny).parallel_config.world_size == 1


def test_heads_that_cannot_split_are_refused_at_start(engine_args, tiny) -> None:
    # tiny Llama: 2 KV heads; SP=3 cannot replicate them evenly.
    with pytest.raises(ConfigError, match="^ulysses_sequence_parallel_size=3: .*multiple of 2"):
        _config(engine_args, tiny, ulysses_sequence_parallel_size=3)
    with pytest.raises(ConfigError, match="^ulysses_sequence_parallel_size: needs distributed_executor_backend"):
        _config(engine_args, tiny, ulysses_sequence_parallel_size=2, distributed_executor_backend="ray")
    with pytest.raises(ConfigError, match="^ulysses_sequence_parallel_size: Ulysses with data_parallel_size"):
        _config(engine_args, tiny, ulysses_sequence_parallel_size=2, data_parallel_size=2)


def test_cli_flags_reach_the_engine_config(engine_args, tiny) -> None:
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = engine_args.add_cli_args(FlexibleArgumentParser())
    args = parser.parse_args(["--model", tiny, "--max-model-len", "256", "--ulysses-sequence-parallel-size", "2",
                              "--enable-shift-parallel", "--shift-parallel-threshold", "32"])
    config = engine_args.from_cli_args(args).create_engine_config()
    assert config.parallel_config.world_size == 2
    assert ArcticConfig.from_vllm_config(config).parallel.enable_shift_parallel


def test_generate_info_reports_the_parallel_layout(engine_args, tiny) -> None:
    from arctic_gen.server.core import GenerationCore

    config = _config(engine_args, tiny, ulysses_sequence_parallel_size=2, enable_shift_parallel=True,
                     shift_parallel_threshold=16)
    calls = []

    class Engine:  # what GenerationCore reads of AsyncLLM, with two ranks' counters
        model_config = config.model_config
        vllm_config = config
        output_processor = SimpleNamespace(get_num_unfinished_requests=lambda: 0)

        def get_tokenizer(self):
            return None

        async def collective_rpc(self, method):
            calls.append(method)
            return [{"steps": {"sp": 3, "tp": 40}, "tokens": {"sp": 90, "tp": 40}}] * 2

    info = asyncio.run(GenerationCore(Engine()).info_with_layout())
    layout = json.loads(info["arctic_config_json"])["layout"]
    assert layout == {"tensor_parallel_size": 1, "sequence_parallel_size": 2, "pipeline_parallel_size": 1,
                      "world_size": 2, "shift_parallel": True, "shift_parallel_threshold": 16,
                      "steps": {"sp": 3, "tp": 40}}
    assert calls == ["arctic_parallel_stats"]


def test_workers_with_an_sp_group_see_their_share_of_heads(engine_args, tiny, monkeypatch) -> None:
    from arctic_gen.parallel import ulysses

    config = _config(engine_args, tiny, ulysses_sequence_parallel_size=2)
    model, parallel = config.model_config, config.parallel_config
    assert (model.get_num_attention_heads(parallel), model.get_num_kv_heads(parallel)) == (4, 2)  # no SP group here
    monkeypatch.setattr(ulysses, "_SP_GROUP", SimpleNamespace(world_size=2, rank_in_group=1))
    assert (model.get_num_attention_heads(parallel), model.get_num_kv_heads(parallel)) == (2, 1)
