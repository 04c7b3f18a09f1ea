#!/usr/bin/env bash
# gpu_session.sh STEP — the lead's device runs (issues 9, 10, 11), one `run` per step, in one warm hold.
#
# Before (here): stage vLLM 0.26.0 (../shared/DEVICE.md: prepare.sh → .vstage000…014, one run per chunk copying it
# to /tmp/chunks), `bash load_tests/gen_gpu_check.sh --prepare` (.whl: grpcio-tools, cmake, ninja), and SmolLM2 as
# .smol0….smolN (tar of .cache/models/smollm2-135m-instruct-v1 split in 50 MiB parts; one run per part copying it to
# /tmp/smol/). Every step first makes sure the environment is there (idempotent, ~1 min the first time):
# vLLM unpacked to /tmp/site, the wheels and this package installed there, SmolLM2 at /tmp/models/smollm2.
#
# Steps (each writes its JSON and logs under $OUT):
#   train    speculator training for SmolLM2 (data with vLLM + LSTM + MLP + held-out acceptance) → /tmp/spec_ckpts
#   spec     spec_gpu_bench.py: METHODS (default "none suffix") at 1/16/64 concurrent, 512 greedy tokens
#   swiftkv  SwiftKV vs plain Llama, Llama-3.1-8B shape (random weights)
#   gen      gen_bench.py: `arctic-gen serve --api-server-count ${FE:-4}` vs `vllm serve`, SmolLM2, 1/16/64/256
#            streams, 256 tokens, 2 rounds (issue 16); SPEC_VARIANT='<speculative-config JSON>' adds a third server
#            (ours with that speculation, SPEC_EXTRA more engine args for it) to the same run
set -uo pipefail
cd "$(dirname "$0")/.."
STEP=${1:?step}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VLLM_CACHE_ROOT=/tmp/vllm-cache ARCTIC_MODEL_CACHE=/tmp/arctic-models
log() { echo "[gpu_session $(date +%H:%M:%S)] $*" | tee -a "$OUT/session.txt"; }

if [[ ! -f /tmp/site/.arctic_installed ]]; then
  log "setup: unpack vLLM"
  bash /tmp/chunks/unpack.sh > "$OUT/unpack.log" 2>&1 || { tail -20 "$OUT/unpack.log"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$OUT/whl.log" 2>&1 \
    || { tail -20 "$OUT/whl.log"; exit 1; }
  log "setup: install arctic-serve"
  python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/site . > "$OUT/install.log" 2>&1 \
    || { tail -40 "$OUT/install.log"; exit 1; }
  touch /tmp/site/.arctic_installed
fi
if [[ ! -f /tmp/models/smollm2/config.json ]]; then
  log "setup: SmolLM2"
  mkdir -p /tmp/models && cat /tmp/smol/smol.tar.* | tar -C /tmp/models -xf - \
    && mv /tmp/models/smollm2-135m-instruct-v1 /tmp/models/smollm2 || exit 1
fi
python3 -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__, torch.cuda.get_device_name(0))' \
  | tee -a "$OUT/session.txt"

case "$STEP" in
  setup) ;;
  train)
    log "train: speculator_train_gpu.py"
    python3 load_tests/speculator_train_gpu.py --model /tmp/models/smollm2 --out-dir /tmp/spec_ckpts ${TRAIN_ARGS:-} \
      2>&1 | tee "$OUT/train.log" | grep -v -E "it/s|s/it" | tail -40
    cp /tmp/spec_ckpts/*.json "$OUT/" 2>/dev/null || true
    ;;
  spec)
    SPEC=/tmp/spec_ckpts/lstm/speculator
    [[ -f $SPEC/config.json ]] || SPEC=""
    log "spec: methods ${METHODS:-none suffix}, speculator '${SPEC}'"
    # shellcheck disable=SC2086
    python3 load_tests/spec_gpu_bench.py --model /tmp/models/smollm2 ${SPEC:+--speculator $SPEC} \
      --methods ${METHODS:-none suffix} --out "$OUT/spec_${TAG:-a}.json" ${SPEC_ARGS:-} 2>&1 \
      | tee "$OUT/spec_${TAG:-a}.log" | grep -v -E "it/s|WARNING" | tail -30
    ;;
  swiftkv)
    log "swiftkv: bench"
    python3 load_tests/swiftkv_gpu.py bench --out "$OUT" ${SWIFTKV_ARGS:-} 2>&1 | tee "$OUT/swiftkv.log" \
      | grep -v -E "it/s|WARNING" | tail -30
    ;;
  gen)
    log "gen: gen_bench.py, ${FE:-4} front ends${SPEC_VARIANT:+, + variant 'spec': $SPEC_VARIANT}"
    # shellcheck disable=SC2206
    GEN=(--servers ${SERVERS:-grpc openai} --model /tmp/models/smollm2 --streams ${STREAMS:-1 16 64 256} --max-tokens 256 --rounds "${ROUNDS:-2}"
         --requests-per-stream 2 --client-procs "${CLIENTS:-6}"
         --engine-args "--max-model-len 1024 --gpu-memory-utilization ${GPU_UTIL:-0.3}"
         --grpc-args "--api-server-count ${FE:-4}" --out "$OUT/gen_${TAG:-a}.json" --no-readme)
    if [[ -n "${SPEC_VARIANT:-}" ]]; then  # e.g. SPEC_VARIANT='{"method": "suffix", ...}' (+ SPEC_EXTRA args)
      GEN+=(--grpc-variant spec "--api-server-count ${FE:-4} --speculative-config '$SPEC_VARIANT' ${SPEC_EXTRA:-}")
    fi
    python3 load_tests/gen_bench.py "${GEN[@]}" 2>&1 | tee "$OUT/gen_${TAG:-a}.log" \
      | grep -E "^round|tok/s|Error|error" | tail -40
    cp /tmp/arctic-gen-scratch/gen_bench/*.log "$OUT/" 2>/dev/null || true
    ;;
  *) echo "unknown step $STEP"; exit 2 ;;
esac
log "done: $STEP"
