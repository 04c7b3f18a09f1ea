"""arctic_gen plugin core: the patch registry (version ranges, double patching, revert), the Arctic config
validation, and the engine arguments as LLM(...) keywords and OpenAI-server CLI flags (no engine started)."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
from packaging.specifiers import SpecifierSet

from arctic_gen.config import ArcticConfig, ArcticParallelConfig, ArcticSpeculativeConfig, ConfigError
from arctic_gen.patching import (
    AlreadyPatched,
    Patch,
    PatchError,
    PatchRegistry,
    PatchTargetMissing,
    UnsupportedVllmVersion,
)
from arctic_gen.testing import cpu_vllm_env

cpu_vllm_env()


# --- the registry, on a fake target ----------------------------------------------------------------------------


@pytest.fixture
def fake_module(monkeypatch):
    module = types.ModuleType("fake_vllm_target")

    class Engine:
        def step(self) -> str:
            return "step"

        @staticmethod
        def build() -> str:
            return "built"

    module.Engine = Engine
    monkeypatch.setitem(sys.modules, "fake_vllm_target", module)
    return module


def _step_patch(name: str = "engine.step", versions: str = ">=0.26.0,<0.33") -> Patch:
    def build(cls):
        original = cls.step

        def step(self) -> str:
            return "arctic+" + original(self)

        return {"step": step, "arctic_flag": True}

    return Patch(name=name, target="fake_vllm_target:Engine", versions=SpecifierSet(versions), build=build,
                 replaces=("step",), adds=("arctic_flag",))


@pytest.mark.parametrize("version, ok", [("0.26.0", True), ("0.26.0+cu130", True), ("0.32.0", True),
                                         ("0.32.3", True), ("0.32.1.dev4+gabcdef", True), ("0.25.9", False),
                                         ("0.33.0", False), ("0.33.0rc1", False)])
def test_patch_version_range(version: str, ok: bool) -> None:
    assert _step_patch().supports(version) is ok


def test_apply_wraps_records_and_reverts(fake_module) -> None:
    registry = PatchRegistry()
    patch = _step_patch()
    registry.register(patch)
    registry.register(patch)  # registering the same patch again is a no-op
    registry.apply_all("0.32.0")
    engine = fake_module.Engine()
    assert engine.step() == "arctic+step" and fake_module.Engine.arctic_flag is True
    assert registry.is_applied("engine.step")
    assert registry.original("engine.step", "step")(engine) == "step"
    registry.apply_all("0.32.0")  # idempotent: applied patches are skipped
    assert engine.step() == "arctic+step"
    registry.revert_all()
    assert engine.step() == "step" and not hasattr(fake_module.Engine, "arctic_flag")


def test_double_patching_is_refused(fake_module) -> None:
    registry = PatchRegistry()
    registry.register(_step_patch())
    registry.apply("engine.step", "0.32.0")
    with pytest.raises(AlreadyPatched):
        registry.apply("engine.step", "0.32.0")
    registry.register(_step_patch(name="engine.step.again"))
    with pytest.raises(AlreadyPatched):  # same attribute, another patch (and arctic_flag exists already)
        registry.apply("engine.step.again", "0.32.0")
    with pytest.raises(AlreadyPatched):  # a different patch object under a taken name
        registry.register(_step_patch())
    registry.revert_all()


def test_outside_the_range_fails_loudly_unless_forced(fake_module) -> None:
    registry = PatchRegistry()
    registry.register(_step_patch(versions=">=0.26.0,<0.27"))
    with pytest.raises(UnsupportedVllmVersion, match=r"engine.step.*0\.26\.0,<0\.27|ARCTIC_GEN_SKIP_VERSION_CHECK"):
        registry.apply_all("0.32.0")
    assert fake_module.Engine().step() == "step"  # nothing half-applied
    registry.apply_all("0.32.0", skip_version_check=True)
    assert fake_module.Engine().step() == "arctic+step"
    registry.revert_all()


def test_missing_targets_are_errors(fake_module) -> None:
    registry = PatchRegistry()
    registry.register(Patch("gone.module", "fake_vllm_missing_module:Engine", SpecifierSet(">=0"), lambda t: {}))
    registry.register(Patch("gone.class", "fake_vllm_target:Gone", SpecifierSet(">=0"), lambda t: {}))
    registry.register(Patch("gone.attr", "fake_vllm_target:Engine", SpecifierSet(">=0"),
                            lambda t: {"nope": 1}, replaces=("nope",)))
    for name in ("gone.module", "gone.class", "gone.attr"):
        with pytest.raises(PatchTargetMissing):
            registry.apply(name, "0.32.0")
    registry.register(Patch("undeclared", "fake_vllm_target:Engine", SpecifierSet(">=0"),
                            lambda t: {"step": None, "extra": 1}, replaces=("step",)))
    with pytest.raises(PatchError, match="declares"):
        registry.apply("undeclared", "0.32.0")
    assert fake_module.Engine().step() == "step"


def test_skip_env_is_read_by_config(monkeypatch) -> None:
    from arctic_gen.config import skip_version_check

    monkeypatch.delenv("ARCTIC_GEN_SKIP_VERSION_CHECK", raising=False)
    assert not skip_version_check()
    monkeypatch.setenv("ARCTIC_GEN_SKIP_VERSION_CHECK", "1")
    assert skip_version_check()


# --- config validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [
    ({"ulysses_sequence_parallel_size": 0}, "ulysses_sequence_parallel_size"),
    ({"ulysses_sequence_parallel_size": "2"}, "ulysses_sequence_parallel_size"),
    ({"ulysses_sequence_parallel_size": True}, "ulysses_sequence_parallel_size"),
    ({"enable_shift_parallel": True}, "enable_shift_parallel"),
    ({"enable_shift_parallel": "yes"}, "enable_shift_parallel"),
    ({"shift_parallel_threshold": -1}, "shift_parallel_threshold"),
])
def test_parallel_config_errors_name_the_field(kwargs, field) -> None:
    with pytest.raises(ConfigError, match=f"^{field}"):
        ArcticParallelConfig(**kwargs)


@pytest.mark.parametrize("raw, field", [
    ({"method": "arctic"}, "speculative_config.model"),
    ({"method": "arctic", "model": "/m"}, "speculative_config.num_speculative_tokens"),
    ({"method": "arctic", "model": "/m", "num_speculative_tokens": 0}, "speculative_config.num_speculative_tokens"),
    ({"method": "suffix", "model": "/m"}, "speculative_config.model"),
    ({"method": "suffix", "suffix_min_token_prob": 1.5}, "speculative_config.suffix_min_token_prob"),
    ({"method": "suffix", "suffix_cache_max_depth": 0}, "speculative_config.suffix_cache_max_depth"),
    ({"method": "suffix", "suffix_cache_max_requests": -1}, "speculative_config.suffix_cache_max_requests"),
    ({"method": "suffix", "suffix_max_spec_factor": -0.5}, "speculative_config.suffix_max_spec_factor"),
    ({"method": "arctic", "enable_suffix_decoding": 1}, "speculative_config.enable_suffix_decoding"),
    ({"method": "arctic", "model": "/m", "num_speculative_tokens": 3, "disable_by_batch_size": 0},
     "speculative_config.disable_by_batch_size"),
    ({"method": "suffix", "uniform_drafts": "yes"}, "speculative_config.uniform_drafts"),
    ({"method": "suffix", "bogus": 1}, "speculative_config.bogus"),
    ({"method": "suffix", "suffix_decoding_max_tree_depth": 8}, "speculative_config.suffix_decoding_max_tree_depth"),
])
def test_speculative_config_errors_name_the_field(raw, field) -> None:
    with pytest.raises(ConfigError, match=f"^{field}"):
        ArcticSpeculativeConfig.from_dict(raw)


def test_speculative_config_defaults_and_round_trip() -> None:
    seed = ArcticSpeculativeConfig.from_dict({"method": "arctic", "model": "/spec", "num_speculative_tokens": 3,
                                              "enable_suffix_decoding": True, "disable_by_batch_size": 64})
    assert (seed.suffix_cache_max_depth, seed.suffix_max_spec_factor, seed.suffix_max_spec_offset,
            seed.suffix_min_token_prob, seed.suffix_cache_max_requests) == (64, 1.0, 0.0, 0.1, 100000)
    assert seed.uses_suffix and seed.draft_tokens == 3
    suffix = ArcticSpeculativeConfig.from_dict({"method": "suffix", "suffix-cache-max-depth": 16})
    assert suffix.draft_tokens == 16
    config = ArcticConfig(speculative=seed)
    assert ArcticConfig.from_dict(config.to_dict()) == config and not config.is_default
    assert ArcticConfig().is_default


# --- vLLM's EngineArgs with the plugin ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugged():
    pytest.importorskip("vllm")
    import vllm.plugins

    vllm.plugins.load_general_plugins()
    from arctic_gen import plugin

    plugin.register()  # idempotent: vLLM already called it
    assert plugin.is_registered()
    from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs

    return EngineArgs, AsyncEngineArgs


@pytest.fixture(scope="module")
def model_dir() -> str:
    from arctic_gen.testing import tiny_llama

    return str(tiny_llama())


@pytest.mark.vllm
def test_engine_args_accept_the_seed_keywords(plugged, model_dir) -> None:
    EngineArgs, AsyncEngineArgs = plugged
    for cls in (EngineArgs, AsyncEngineArgs):
        args = cls(model=model_dir, tensor_parallel_size=1, ulysses_sequence_parallel_size=1,
                   enable_shift_parallel=False, shift_parallel_threshold=256)
        assert (args.ulysses_sequence_parallel_size, args.enable_shift_parallel, args.shift_parallel_threshold) == (
            1, False, 256)
    assert EngineArgs(model=model_dir).shift_parallel_threshold == 512
    with pytest.raises(ConfigError, match="^enable_shift_parallel"):
        EngineArgs(model=model_dir, enable_shift_parallel=True)
    with pytest.raises(ConfigError, match="^speculative_config.model"):
        EngineArgs(model=model_dir, speculative_config={"method": "arctic", "num_speculative_tokens": 3})
    with pytest.raises(TypeError):
        EngineArgs(model=model_dir, not_an_argument=1)


def _openai_parser():
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser  # vLLM 0.32
    except ImportError:
        from vllm.entrypoints.openai.cli_args import make_arg_parser  # vLLM 0.26

    return make_arg_parser(FlexibleArgumentParser())


@pytest.mark.vllm
def test_openai_server_cli_flags(plugged, model_dir) -> None:
    _, AsyncEngineArgs = plugged
    parser = _openai_parser()
    args = parser.parse_args(["--model", model_dir, "--ulysses-sequence-parallel-size", "1",
                              "--no-enable-shift-parallel", "--shift-parallel-threshold", "1024",
                              "--speculative-config", '{"method": "suffix", "suffix_cache_max_depth": 32}'])
    engine_args = AsyncEngineArgs.from_cli_args(args)
    assert engine_args.shift_parallel_threshold == 1024 and engine_args.ulysses_sequence_parallel_size == 1
    assert engine_args.speculative_config["method"] == "suffix"
    with pytest.raises(ConfigError, match="^ulysses_sequence_parallel_size"):
        AsyncEngineArgs.from_cli_args(
            parser.parse_args(["--model", model_dir, "--ulysses-sequence-parallel-size", "0"]))


@pytest.mark.vllm
def test_speculative_methods_map_to_vllm(plugged, monkeypatch) -> None:
    from arctic_gen.patches import engine_args as patch

    suffix = ArcticSpeculativeConfig.from_dict({"method": "suffix", "num_speculative_tokens": 8})
    monkeypatch.setitem(patch.PROPOSERS, "suffix", "arctic_gen.config.ArcticConfig")  # any importable class
    assert patch.vllm_speculative_config(suffix) == {
        "method": "custom_class", "model": "arctic_gen.config.ArcticConfig", "num_speculative_tokens": 8}
    monkeypatch.setitem(patch.PROPOSERS, "arctic", "arctic_gen_not_built_yet.Proposer")
    seed = ArcticSpeculativeConfig.from_dict({"method": "arctic", "model": "/s", "num_speculative_tokens": 3})
    with pytest.raises(ConfigError, match="^speculative_config.method='arctic'.*not part of this build"):
        patch.vllm_speculative_config(seed)


@pytest.mark.vllm
def test_default_engine_config_is_untouched_and_arctic_options_travel(plugged, model_dir) -> None:
    EngineArgs, _ = plugged
    model = model_dir
    plain = EngineArgs(model=model, max_model_len=256, kv_cache_memory_bytes=32 * 2**20).create_engine_config()
    assert "arctic" not in plain.additional_config
    assert ArcticConfig.from_vllm_config(plain) == ArcticConfig()
    tuned = EngineArgs(model=model, max_model_len=256, kv_cache_memory_bytes=32 * 2**20,
                       shift_parallel_threshold=128).create_engine_config()
    assert ArcticConfig.from_vllm_config(tuned).parallel.shift_parallel_threshold == 128


@pytest.mark.vllm
def test_plugin_refuses_unsupported_versions_and_double_patching(plugged, monkeypatch) -> None:
    from arctic_gen import plugin

    monkeypatch.delenv("ARCTIC_GEN_SKIP_VERSION_CHECK", raising=False)
    with pytest.raises(UnsupportedVllmVersion, match="0.25.0"):
        plugin.register(registry=PatchRegistry(), version="0.25.0")
    monkeypatch.setenv("ARCTIC_GEN_SKIP_VERSION_CHECK", "1")
    with pytest.raises(AlreadyPatched):  # forced past the version check, but this process is patched already
        plugin.register(registry=PatchRegistry(), version="0.25.0")


@pytest.mark.vllm
def test_pooling_engine_config_is_untouched(plugged, model_dir) -> None:
    EngineArgs, _ = plugged
    config = EngineArgs(model=model_dir, runner="pooling", max_model_len=256,
                        kv_cache_memory_bytes=32 * 2**20).create_engine_config()
    assert "arctic" not in config.additional_config and config.speculative_config is None


@pytest.mark.vllm
def test_unavailable_method_is_rejected_at_start_up(plugged, model_dir, monkeypatch) -> None:
    from arctic_gen.patches import engine_args as patch

    EngineArgs, _ = plugged
    monkeypatch.setitem(patch.PROPOSERS, "arctic", "arctic_gen_not_built_yet.Proposer")
    args = EngineArgs(model=model_dir, max_model_len=256, kv_cache_memory_bytes=32 * 2**20, speculative_config={
        "method": "arctic", "model": "/spec", "num_speculative_tokens": 3, "enable_suffix_decoding": True})
    with pytest.raises(ConfigError, match="^speculative_config.method='arctic'"):
        args.create_engine_config()
    assert args.speculative_config["method"] == "arctic"  # the user's config is left as it was


@pytest.mark.vllm
def test_vllm_plugins_env_excludes_the_plugin() -> None:
    code = ("import vllm.plugins; vllm.plugins.load_general_plugins(); import arctic_gen.plugin as p; "
            "print(p.is_registered())")
    for allow, expected in (("arctic_gen", "True"), ("someone_else", "False")):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "VLLM_PLUGINS": allow},
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == expected
