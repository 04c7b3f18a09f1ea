"""Prometheus metrics of the gateway (served over HTTP on --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0)

REQUESTS = Counter("arctic_embed_requests_total",
                   "gRPC calls received, by method name (every service on the port: health and reflection too)",
                   ["rpc"])
HTTP_REQUESTS = Counter("arctic_embed_http_requests_total", "HTTP requests answered, by route and status code",
                        ["route", "code"])
HTTP_CLIENT_GONE = Counter("arctic_embed_http_client_disconnects_total",
                           "HTTP embedding requests whose client left before the answer (their work was dropped)")
FAILURES = Counter("arctic_embed_request_failures_total", "Requests that ended with an error", ["rpc", "code"])
INPUTS = Counter("arctic_embed_inputs_total", "Inputs embedded")
TOKENS = Counter("arctic_embed_tokens_total", "Tokens embedded")
QUEUE_DURATION = Histogram("arctic_embed_queue_duration_seconds", "Time from admission to the first batch",
                           buckets=_LATENCY_BUCKETS)
TOKENIZE_DURATION = Histogram("arctic_embed_tokenize_duration_seconds", "Tokenization time per request",
                              buckets=_LATENCY_BUCKETS)
INFERENCE_DURATION = Histogram("arctic_embed_inference_duration_seconds", "Engine time per request",
                               buckets=_LATENCY_BUCKETS)
TOTAL_DURATION = Histogram("arctic_embed_request_duration_seconds", "Total time per request", buckets=_LATENCY_BUCKETS)
BATCH_INPUTS = Histogram("arctic_embed_request_inputs", "Inputs per request",
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096))
ENGINE_BATCH_SEQUENCES = Histogram("arctic_embed_engine_batch_sequences", "Sequences per engine batch (replicas)",
                                   buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096))
ENGINE_BATCH_TOKENS = Histogram("arctic_embed_engine_batch_tokens", "Tokens per engine batch (replicas)",
                                buckets=(16, 64, 256, 1024, 4096, 16384, 65536, 262144))
QUEUED_TOKENS = Gauge("arctic_embed_queued_tokens", "Tokens admitted and not yet answered")
REPLICAS_READY = Gauge("arctic_embed_replicas_ready", "Replicas ready to serve")
REPLICAS_FAILED = Gauge("arctic_embed_replicas_failed",
                        "Replicas taken out of routing because they keep failing (restarted with backoff)")
REPLICA_BATCH_FAILURES = Counter("arctic_embed_replica_batch_failures_total", "Engine batches that failed")
TOKENIZER_WORKERS_ALIVE = Gauge("arctic_embed_tokenizer_workers_alive", "Tokenizer worker processes running")
TOKENIZER_RESTARTS = Counter("arctic_embed_tokenizer_restarts_total", "Tokenizer workers restarted after dying")
REPLICA_RESTARTS = Counter("arctic_embed_replica_restarts_total", "Replica processes restarted after dying")


FAILURE_DURATION = Histogram("arctic_embed_failure_duration_seconds",
                             "Time from a call's arrival in the handler to its failure, by status code (rejections "
                             "by admission control land in the first buckets)", ["code"], buckets=_LATENCY_BUCKETS)


def record_failure(method: str, code, seconds: float) -> None:
    """Count a failed call by method and status code (`code`: a grpc.StatusCode), and how long it took."""
    FAILURES.labels(method, code.name).inc()
    FAILURE_DURATION.labels(code.name).observe(seconds)


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    if port:
        start_http_server(port, addr=host)
