#!/usr/bin/env bash
# gen_gpu_check.sh — the plugin on the lent GPU with vLLM 0.26.0 (issue 6, "must show" 4), in ONE device command:
#   1. vLLM loads the arctic_gen plugin (entry point vllm.general_plugins) and its version check passes on 0.26.0;
#   2. the seed's offline example (load_tests/gen_offline_example.py) runs on a small model;
#   3. `arctic-gen serve` starts and streams over gRPC (Generate, Info, health, chat);
#   4. (optional, GEN_BENCH=1) load_tests/gen_bench.py: our gRPC server vs vLLM's OpenAI server at 1 and 16 streams.
#
# Before the device call (here, on the CPU machine):
#   - stage vLLM 0.26.0 as ../shared/DEVICE.md says (prepare.sh → .vstage000 … .vstage014, one `run` per chunk);
#   - `bash load_tests/gen_gpu_check.sh --prepare`: the cp312 wheels the device lacks into .whl/ (git-ignored):
#     grpcio + grpcio-tools, grpcio-health-checking, grpcio-reflection 1.85 (shadowing the device's grpcio 1.84, as
#     the embedding checks do) for the protos and the server, cmake + ninja for the native build (~42 MB; carry it
#     with carry=[".whl"]). Keep one version per package in .whl: everything there is installed together.
#   - optional: SmolLM2 (python -m arctic_gen.testing builds .cache/models/smollm2-135m-instruct-v1, 269 MB: carry
#     it in chunks) and pass SMOLLM2_DIR=...; without it the check uses the tiny random Llama built on the device.
# On the device, in the same warm hold as the staging:
#   run(command="bash /tmp/chunks/unpack.sh && bash load_tests/gen_gpu_check.sh", carry=[".whl"], timeout_s=600)
# Everything it prints is also written under $OUT (logs + gen_gpu_check.json).
# Local dry run on a CPU machine: SKIP_INSTALL=1 PY=.venv/bin/python OFFLINE_ARGS=--cpu \
#   SERVE_ARGS="--dtype float32 --kv-cache-memory-bytes 67108864" bash load_tests/gen_gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--prepare" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  ${PIP:-python3 -m pip} download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "grpcio==${GRPC_VERSION:-1.85.3}" "grpcio-tools==${GRPC_TOOLS_VERSION:-1.85.1}" \
    "grpcio-health-checking==${GRPC_TOOLS_VERSION:-1.85.1}" "grpcio-reflection==${GRPC_TOOLS_VERSION:-1.85.1}" cmake ninja
  ls -la .whl; du -sh .whl
  exit 0
fi
OUT=${OUT:-/tmp/gen_gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export ARCTIC_MODEL_CACHE=${ARCTIC_MODEL_CACHE:-/tmp/arctic-models}
export VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-/tmp/vllm-cache}
PY=${PY:-python3}
log() { echo "[gen_gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

log "vLLM: $($PY -c 'import vllm; print(vllm.__version__)')"
if [[ "${SKIP_INSTALL:-0}" != "1" ]]; then  # SKIP_INSTALL=1: use what is importable already (a local dry run)
  if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  fi
  log "installing arctic-serve into /tmp/site"
  $PY -m pip install -q --no-build-isolation --no-deps --target /tmp/site . > "$OUT/install.log" 2>&1 \
    || { tail -40 "$OUT/install.log"; exit 1; }
fi

log "1. plugin load + version check"
$PY - <<'PY' 2>&1 | tee "$OUT/plugin.log"
import vllm, vllm.plugins
vllm.plugins.load_general_plugins()
import arctic_gen.plugin as plugin
from arctic_gen.patching import REGISTRY
assert plugin.is_registered(), "arctic_gen plugin was not loaded by vLLM"
from vllm.engine.arg_utils import EngineArgs
print("vllm", vllm.__version__, "patches:", [p.name for p in REGISTRY.patches if REGISTRY.is_applied(p.name)])
print("EngineArgs knows ulysses_sequence_parallel_size:", EngineArgs.ulysses_sequence_parallel_size)
PY

MODEL=${SMOLLM2_DIR:-$($PY -c 'from arctic_gen.testing import tiny_llama; print(tiny_llama())')}
log "model: $MODEL"

log "2. the seed's offline example"
$PY load_tests/gen_offline_example.py --model "$MODEL" --max-tokens 128 ${OFFLINE_ARGS:---eager} 2>&1 | tee "$OUT/offline.log" | tail -3

log "3. arctic-gen serve + streaming"
PORT=50551
# shellcheck disable=SC2086
$PY -m arctic_gen.server.cli serve --model "$MODEL" --host 127.0.0.1 --port $PORT --enforce-eager --max-model-len 1024 \
  ${SERVE_ARGS:---gpu-memory-utilization 0.3} > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q "arctic-gen: serving" "$OUT/serve.log" && break; sleep 1
  kill -0 $SERVER 2>/dev/null || { tail -40 "$OUT/serve.log"; exit 1; }; done
MODEL="$MODEL" PORT=$PORT OUT="$OUT" $PY - <<'PY' 2>&1 | tee "$OUT/stream.log"
import json, os, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from arctic_gen.client import GenerateClient

target = f"127.0.0.1:{os.environ['PORT']}"
health = health_pb2_grpc.HealthStub(grpc.insecure_channel(target)).Check(health_pb2.HealthCheckRequest(), timeout=10)
prompts = ["Write an essay about the importance of higher education.", "Hello, my name is", "def fibonacci(n):"]
with GenerateClient(target, timeout=300) as client:
    info = client.info()
    rows = []
    for prompt in prompts:
        start = time.perf_counter()
        messages = list(client.stream(text=prompt, max_tokens=64, temperature=0.0, ignore_eos=True))
        rows.append({"prompt": prompt, "messages": len(messages),
                     "tokens": sum(len(m.token_ids) for m in messages), "s": round(time.perf_counter() - start, 3),
                     "text": "".join(m.text for m in messages)[:120]})
    chat = client.generate(chat=[{"role": "user", "content": "Say hi."}], max_tokens=16, temperature=0.0)
result = {"health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status), "vllm": info.vllm_version,
          "arctic_config": json.loads(info.arctic_config_json), "streams": rows, "chat": chat.text}
print(json.dumps(result, indent=1))
json.dump(result, open(os.path.join(os.environ["OUT"], "gen_gpu_check.json"), "w"), indent=1)
assert all(r["tokens"] == 64 and r["messages"] > 1 for r in rows)
PY
kill $SERVER; wait $SERVER || true
trap - EXIT

if [[ "${GEN_BENCH:-0}" == "1" ]]; then
  log "4. gen_bench: gRPC vs OpenAI server"
  $PY load_tests/gen_bench.py --model "$MODEL" --streams 1 16 --max-tokens 128 --rounds 2 \
    --engine-args "--max-model-len 1024 --gpu-memory-utilization 0.3" --machine "lent H100 (vLLM 0.26.0)" \
    --out "$OUT/gen_gpu_bench.json" --no-readme 2>&1 | tail -6 | tee -a "$OUT/summary.txt"
fi
log "done: plugin loaded, offline example ran, arctic-gen serve streamed"
