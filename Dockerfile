# syntax=docker/dockerfile:1
# arctic-serve on a CUDA host: the embedding server (gRPC 50050, HTTP 8080) by default; `arctic-gen serve` too.
#
#   docker build -t arctic-serve .
#   docker run --gpus all -p 50050:50050 -p 8080:8080 arctic-serve                          # bundled MiniLM
#   docker run --gpus all -p 50050:50050 -p 8080:8080 -v /data/my-model:/models:ro \
#       -e ARCTIC_EMBED_MODEL=/models arctic-serve                                           # a mounted directory
#   docker run --gpus all -p 50050:50050 -p 8080:8080 -v hf-cache:/home/arctic/.cache/huggingface \
#       -e ARCTIC_EMBED_MODEL=BAAI/bge-small-en-v1.5 arctic-serve                           # a Hub id (cached)
#   docker run --gpus all -p 50051:50051 --entrypoint arctic-gen arctic-serve serve --model /models ...
#
# Every `arctic-embed serve` option can be given as ARCTIC_EMBED_<OPTION> (see `arctic-embed serve --help`).
ARG CUDA_VERSION=12.8.1
ARG UBUNTU=ubuntu24.04

# ---- build: the wheel (C++ suffix tree via nanobind, gRPC stubs from protos/) ----------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/build && /opt/build/bin/pip install --no-cache-dir --upgrade pip
WORKDIR /src
COPY pyproject.toml CMakeLists.txt README.md ./
COPY protos ./protos
COPY native ./native
COPY arctic_embed ./arctic_embed
COPY arctic_gen ./arctic_gen
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- runtime: CUDA runtime, our wheel with the GPU extra (vLLM + CUDA torch), non-root ----------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/venv/bin/pip install --no-cache-dir "$(ls /wheels/arctic_serve-*.whl)[gpu]" \
    && rm -rf /wheels
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin arctic \
    && mkdir -p /models && chown arctic:arctic /models
USER arctic
WORKDIR /home/arctic
ENV PATH=/opt/venv/bin:$PATH \
    HF_HOME=/home/arctic/.cache/huggingface \
    TOKENIZERS_PARALLELISM=false \
    ARCTIC_EMBED_HOST=0.0.0.0 \
    ARCTIC_EMBED_PORT=50050 \
    ARCTIC_EMBED_HTTP_PORT=8080
EXPOSE 50050 8080 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-m", "arctic_embed.healthcheck", "localhost:50050"]
ENTRYPOINT ["arctic-embed"]
CMD ["serve"]
