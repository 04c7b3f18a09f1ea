#!/usr/bin/env bash
# slow_tests.sh — the tests `make test` leaves out: those marked `@pytest.mark.slow` (pyproject.toml). Each one is a
# long run (a bigger data set, a second model or variant) of a check that a faster test in `make test` keeps, so CI
# stays under 30 minutes on 2 cores. Run it before a release or after touching the code they cover:
#   bash load_tests/slow_tests.sh                 # every slow test
#   bash load_tests/slow_tests.sh tests/test_batch.py -x   # extra pytest arguments (files, -k, -x) pass through
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$#" -eq 0 ]; then set -- tests; fi
exec "$PY" -m pytest -q -m slow --durations=25 "$@"
