"""The command lines: help lists the commands, every option says what it does and shows its default, every serve
option can come from the environment, Hub ids resolve through the HF cache (offline here) or fail in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from arctic_embed.cli import build_parser
from arctic_embed.cli import main as embed_main
from arctic_embed.envargs import HelpFormatter, options_without_help
from arctic_gen.cli import Command, CommandUnavailable, load
from arctic_gen.server.cli import CpuMemoryError, default_cpu_kv_cache_bytes


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_help_lists_subcommands() -> None:
    embed = _run("-m", "arctic_embed", "--help")
    assert embed.returncode == 0 and "serve" in embed.stdout and "batch" in embed.stdout
    gen = _run("-m", "arctic_gen.cli", "--help")
    assert gen.returncode == 0
    for command in ("serve", "train-speculator", "distill-swiftkv"):
        assert command in gen.stdout
    unknown = _run("-m", "arctic_gen.cli", "nope")
    assert unknown.returncode == 2 and "unknown command 'nope'" in unknown.stderr
    # The dispatcher reaches a training command (its --help is the cheaper of the two to import) ...
    result = _run("-m", "arctic_gen.cli", "train-speculator", "--help")
    assert result.returncode == 0 and "arctic-gen train-speculator" in result.stdout, result.stderr[-2000:]
    # ... and every command's module is where the dispatcher looks for it.
    import importlib.util

    from arctic_gen.cli import COMMANDS

    for command in COMMANDS:
        assert importlib.util.find_spec(command.module) is not None, command.module


def test_every_embed_serve_option_has_help_default_and_env() -> None:
    _, serve = build_parser()
    assert options_without_help(serve) == []
    formatter = HelpFormatter("arctic-embed serve")
    options = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 20
    for action in options:
        assert f"[env ARCTIC_EMBED_{action.dest.upper()}]" in action.help, action.dest
        assert "%(default)s" in formatter._get_help_string(action), action.dest
    text = " ".join(serve.format_help().split())
    assert "(default: 50050)" in text and "(default: 8080)" in text and "(default: text)" in text


def test_environment_sets_serve_options_and_command_line_wins(monkeypatch) -> None:
    monkeypatch.setenv("ARCTIC_EMBED_PORT", "1234")
    monkeypatch.setenv("ARCTIC_EMBED_ACCESS_LOG", "true")
    monkeypatch.setenv("ARCTIC_EMBED_LOG_FORMAT", "json")
    monkeypatch.setenv("ARCTIC_EMBED_HTTP_PORT", "0")
    parser, _ = build_parser()
    args = parser.parse_args(["serve"])
    assert (args.port, args.access_log, args.log_format, args.http_port) == (1234, True, "json", 0)
    assert parser.parse_args(["serve", "--port", "5"]).port == 5


@pytest.mark.parametrize(("name", "value"), [("ARCTIC_EMBED_PORT", "abc"), ("ARCTIC_EMBED_ENGINE", "onnx"),
                                             ("ARCTIC_EMBED_ACCESS_LOG", "maybe")])
def test_bad_environment_value_is_one_line(monkeypatch, capsys, name, value) -> None:
    monkeypatch.setenv(name, value)
    assert embed_main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"arctic-embed: {name}=") and "\n" not in err


def _fake_hub_cache(root: Path, repo: str, source: Path) -> Path:
    """The standard HF cache layout (models--org--name/{refs/main, snapshots/<rev>/...}) with links to `source`."""
    folder = root / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    for path in source.rglob("*"):
        if path.is_file():
            target = snapshot / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(snapshot.name)
    return snapshot


def test_hub_id_is_found_in_the_cache_offline_and_missing_is_one_line(tmp_path, minilm_path) -> None:
    snapshot = _fake_hub_cache(tmp_path, "acme/mini-embedder", minilm_path)
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    found = _run("-c", "from arctic_embed.hub import resolve_model; print(resolve_model('acme/mini-embedder'))",
                 env=env)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == snapshot
    missing = _run("-m", "arctic_embed", "serve", "--model", "acme/not-there", "--http-port", "0", env=env)
    assert missing.returncode == 2
    err = missing.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "acme/not-there" in err and "not in the Hugging Face cache" in err and "HF_HUB_OFFLINE" in err
    not_model = _run("-m", "arctic_embed", "serve", "--model", str(tmp_path), "--http-port", "0", env=env)
    assert not_model.returncode == 2 and "no config.json" in not_model.stderr
    assert len(not_model.stderr.strip().splitlines()) == 1


def test_missing_command_module_is_one_line() -> None:
    with pytest.raises(CommandUnavailable, match=r"arctic_gen\.no_such_module is not installed.*\[train\]"):
        load(Command("x", "arctic_gen.no_such_module", "test", extra="train"))


def test_cpu_kv_cache_default_from_free_memory() -> None:
    assert default_cpu_kv_cache_bytes(20 * 2**30) == 5 * 2**30
    assert default_cpu_kv_cache_bytes(200 * 2**30) == 8 * 2**30
    with pytest.raises(CpuMemoryError, match="MiB of memory is free"):
        default_cpu_kv_cache_bytes(100 * 2**20)


@pytest.mark.vllm
def test_gen_serve_options_help_and_env(monkeypatch) -> None:
    from arctic_gen.server.cli import build_serve_parser

    monkeypatch.setenv("ARCTIC_GEN_PORT", "4321")
    monkeypatch.setenv("ARCTIC_GEN_MAX_MODEL_LEN", "77")  # a vLLM engine argument
    monkeypatch.setenv("ARCTIC_GEN_ENFORCE_EAGER", "1")
    parser = build_serve_parser()
    args = parser.parse_args(["--model", "m"])
    assert (args.port, args.max_model_len, args.enforce_eager) == (4321, 77, True)
    ours = [a for a in parser._actions if a.dest in ("host", "port", "metrics_port", "max_concurrent_streams",
                                                      "grace_period", "max_message_bytes", "log_format",
                                                      "access_log", "api_server_count")]
    assert len(ours) == 9
    for action in ours:
        assert "(default:" in action.help and f"[env ARCTIC_GEN_{action.dest.upper()}]" in action.help


@pytest.mark.vllm
@pytest.mark.parametrize("option", ["--api-server-count", "--max-concurrent-streams"])
def test_gen_serve_refuses_counts_below_one(capsys, option: str) -> None:
    from arctic_gen.server.cli import main

    assert main(["serve", "--model", "m", option, "0"]) == 2  # before any engine or port is touched
    assert f"arctic-gen: {option} must be >= 1" in capsys.readouterr().err


def test_front_ends_refuse_a_vllm_they_were_not_written_for() -> None:
    from arctic_gen.patching import UnsupportedVllmVersion
    from arctic_gen.server.front_ends import _launcher_for

    for version in ("0.26.0", "0.32.0"):
        assert _launcher_for(version) is not None
    with pytest.raises(UnsupportedVllmVersion, match="--api-server-count 1"):
        _launcher_for("0.30.0")


def test_json_log_lines_carry_fields_and_exceptions(capsys) -> None:
    import json
    import logging

    from arctic_embed.logs import configure, log_access

    root = logging.getLogger()
    saved = (list(root.handlers), root.level, os.environ.get("ARCTIC_LOG_FORMAT"))
    try:
        configure("INFO", "json", role="gateway")
        assert os.environ["ARCTIC_LOG_FORMAT"] == "json"  # replicas and tokenizer workers log the same way
        log_access(logging.getLogger("arctic.access"), "http", "POST /v1/embeddings", 200, 0.0123, "1.2.3.4:5", 64)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("x").exception("failed")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        access, failure = lines
        assert access["message"] == "http POST /v1/embeddings 200 12.3ms peer=1.2.3.4:5 inputs=64"
        assert (access["status"], access["duration_ms"], access["inputs"], access["role"]) == (200, 12.3, 64,
                                                                                                "gateway")
        assert failure["level"] == "ERROR" and "ValueError: boom" in failure["exc"]
        with pytest.raises(ValueError, match="log format"):
            configure("INFO", "xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        if saved[2] is None:
            os.environ.pop("ARCTIC_LOG_FORMAT", None)
        else:
            os.environ["ARCTIC_LOG_FORMAT"] = saved[2]
