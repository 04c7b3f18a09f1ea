#!/usr/bin/env bash
# One-command GPU benchmark of the embedding service (run on the lent H100 through the device tool):
#   run(command="bash load_tests/embed_gpu_bench.sh", carry=[".whl"])
# Installs the gRPC wheels carried in .whl/ (cp312), generates the stubs, builds a bert-base-shaped model with
# random weights and the MiniLM tokenizer, starts `arctic-embed serve` on cuda:0, drives it with a multi-process
# gRPC load generator, and in the same run measures plain HF BertModel (padded, fp16) and sentence-transformers.
# Results: $OUT/embed_gpu.json (+ logs); copy into load_tests/results/embed_gpu_<yyyymmdd>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/embed-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export BENCH_COMMIT=${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:/tmp/gen:$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 protos/generate.py --out /tmp/gen
[ -f /tmp/bert-base/model.safetensors ] || python3 load_tests/make_bert_base.py /tmp/bert-base > /dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"

CONFIGS=${CONFIGS:-50:1:1,50:64:64,50:64:256,50:64:1024,50:16:256,50:1:256,512:1:1,512:64:32,512:64:128,512:16:256,512:64:1024}
SERVER_ARGS=${SERVER_ARGS:---devices cuda:0 --replicas-per-device 2 --tokenizer-workers 8 --max-batch-tokens 65536 --max-batch-size 2048 --max-queued-tokens 50000000 --max-inputs-per-request 4096}
python3 load_tests/embed_bench.py --format gpu --model /tmp/bert-base \
  --device-name "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" \
  --configs "$CONFIGS" --duration "${DURATION:-6}" --processes "${LOAD_PROCESSES:-4}" \
  --baselines "${BASELINES:-hf,st}" --st-batches 256 --parity-texts 64 \
  --server-args "$SERVER_ARGS" --server-log "$OUT/server.log" --out "$OUT/embed_gpu.json" 2>&1 | grep -v -i "warn" | tee "$OUT/bench.log"
