#!/usr/bin/env bash
# Issue 18, "must show" 3: 1M documents of 128 tokens, Parquet → Parquet in-process on the lent GPU, against the
# server's batch-64 throughput at 128 tokens measured in the same run (load_tests/batch_gpu.py does the work).
#
# The device has no pyarrow: its cp312 wheel (55 MB) travels on its own, so this takes two calls, back to back:
#   here:    bash load_tests/batch_gpu.sh --prepare        # pyarrow + tqdm wheels into .whl_batch/ (git-ignored)
#   device:  run(command="mkdir -p /tmp/wb && cp .whl_batch/*.whl /tmp/wb/", carry=[".whl_batch"])
#   device:  run(command="bash load_tests/batch_gpu.sh", carry=[".whl"], timeout_s=600)
# (.whl holds the grpcio/grpcio-tools/health/reflection wheels, as for embed_gpu_bench.sh / gen_gpu_check.sh.)
# Local dry run (CPU, toy size): SKIP_INSTALL=1 PY=.venv/bin/python DEVICES=cpu ROWS=500 TOKENS=16 REPLICAS=1 \
#   TOKENIZER_WORKERS=1 SERVER_SECONDS=3 BATCH_ARGS="--model bundled --concurrency 4 --processes 1" \
#   bash load_tests/batch_gpu.sh
# Writes $OUT/batch_<yyyymmdd>.json (rows: engine server|in_process, rows, input_tokens, tokens_per_s,
# server_tokens_per_s, device, commit) and $OUT/batch_gpu.log; copy the JSON to load_tests/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--prepare" ]]; then
  grep -qx '/.whl_batch/' .git/info/exclude 2>/dev/null || echo '/.whl_batch/' >> .git/info/exclude
  ${PIP:-python3 -m pip} download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl_batch "pyarrow==${PYARROW_VERSION:-26.0.1}" tqdm
  ls -la .whl_batch; du -sh .whl_batch
  exit 0
fi
OUT=${OUT:-/tmp/batch-gpu-out}
PY=${PY:-python3}
DEVICES=${DEVICES:-cuda:0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export BENCH_COMMIT=${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
if [ -z "${SKIP_INSTALL:-}" ] && [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
fi
if [ -z "${SKIP_INSTALL:-}" ] && compgen -G "/tmp/wb/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site /tmp/wb/*.whl
fi
export PYTHONPATH=/tmp/site:/tmp/gen:$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY protos/generate.py --out /tmp/gen
$PY -c "import pyarrow, tqdm" || { echo "pyarrow/tqdm missing: carry .whl_batch first (see the header)"; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/device.txt" || true
$PY load_tests/batch_gpu.py --rows "${ROWS:-1000000}" --tokens "${TOKENS:-128}" --devices "$DEVICES" \
  --replicas-per-device "${REPLICAS:-2}" --tokenizer-workers "${TOKENIZER_WORKERS:-10}" \
  --server-seconds "${SERVER_SECONDS:-20}" --out-dir "$OUT" ${BATCH_ARGS:-} 2>&1 | grep -v -i "warn" | tee "$OUT/batch_gpu.log"
