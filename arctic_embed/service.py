"""The embedding core: validate → tokenize → admit → route to replicas → assemble bytes. No transport here.

The gRPC servicers (ours and the Arctic-compatible one) translate protobuf to `EmbedJob` and `EmbedResult` back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from arctic_embed import metrics
from arctic_embed.config import ServerConfig
from arctic_embed.encoding import OUTPUT_DTYPES, OutputOptions, has_scales, row_bytes
from arctic_embed.errors import Cancelled, InvalidInput, NotFound, Overloaded, Unavailable
from arctic_embed.model_files import ModelSpec
from arctic_embed.replicas import ReplicaManager, ReplicaResult
from arctic_embed.tokenization import TokenBatch, TokenizeOptions
from arctic_embed.tokenizer_pool import TokenizerPool

log = logging.getLogger(__name__)
CHARS_PER_TOKEN_ESTIMATE = 4
"""Admission estimates a text's tokens from its length before tokenizing (then corrects to the exact count)."""


@dataclass
class EmbedJob:
    """One request, transport-free. Exactly one of `texts` / `token_ids` is non-empty."""

    texts: list[str] = field(default_factory=list)
    token_ids: list[bytes] = field(default_factory=list)
    request_id: str = ""
    model: str = ""
    normalize: bool = True
    dimensions: int | None = None
    """None = the model's full dimension."""
    truncate: bool = True
    truncate_left: bool = False
    prompt_name: str = ""
    prefix: str = ""
    dtype: str = "float32"
    priority: int = 0

    @property
    def n_inputs(self) -> int:
        return len(self.texts) or len(self.token_ids)


@dataclass
class StageTimes:
    queue_ns: int = 0
    tokenize_ns: int = 0
    inference_ns: int = 0
    total_ns: int = 0


@dataclass
class EmbedResult:
    """All outputs back to back in `data`; input i is `data[i * row_bytes:(i + 1) * row_bytes]`."""

    data: bytes
    n: int
    dim: int
    dtype: str
    row_bytes: int
    token_counts: np.ndarray
    scales: np.ndarray | None
    timings: StageTimes

    def rows(self) -> list[bytes]:
        view = memoryview(self.data)
        size = self.row_bytes
        return [bytes(view[i * size:(i + 1) * size]) for i in range(self.n)]


class EmbedCore:
    def __init__(self, config: ServerConfig, spec: ModelSpec, tokenizers: TokenizerPool,
                 replicas: ReplicaManager) -> None:
        self.config = config
        self.spec = spec
        self.tokenizers = tokenizers
        self.replicas = replicas
        self.model_name = config.model_name or spec.name
        self.vocab_size = spec.vocab_size
        self._active: dict[str, asyncio.Task] = {}
        self._aborted: set[str] = set()
        self.admitted_tokens = 0
        """Tokens of requests admitted and not yet answered (estimates until tokenized): the backpressure figure."""
        self.in_flight = 0
        self._answered = 0
        self.draining = False

    # ------------------------------------------------------------------------------------------- validation
    def _check_model(self, model: str) -> None:
        if model and model not in (self.model_name, self.model_name.rsplit("/", 1)[-1]):
            raise InvalidInput(f"unknown model {model!r}; this server serves {self.model_name!r}")

    def output_options(self, job: EmbedJob) -> OutputOptions:
        if job.dtype not in OUTPUT_DTYPES:
            raise InvalidInput(f"unknown output dtype {job.dtype!r}; one of {', '.join(OUTPUT_DTYPES)}")
        dims = job.dimensions
        if dims is not None and not 1 <= dims <= self.spec.dim:
            raise InvalidInput(f"dimensions={dims} is outside 1..{self.spec.dim} (leave it unset for the full size)")
        return OutputOptions(job.normalize, 0 if dims in (None, self.spec.dim) else dims, job.dtype)

    def tokenize_options(self, job: EmbedJob) -> TokenizeOptions:
        if job.prompt_name and job.prefix:
            raise InvalidInput("set prompt_name or prefix, not both")
        prefix = job.prefix
        if job.prompt_name:
            if job.prompt_name not in self.spec.prompts:
                known = ", ".join(sorted(self.spec.prompts)) or "none"
                raise InvalidInput(f"unknown prompt_name {job.prompt_name!r}; this model has: {known}")
            prefix = self.spec.prompts[job.prompt_name]
        elif self.spec.default_prompt_name and not job.token_ids:
            prefix = self.spec.prompts.get(self.spec.default_prompt_name, "")
        return TokenizeOptions(prefix, job.truncate, job.truncate_left)

    def _check_inputs(self, job: EmbedJob) -> None:
        if job.texts and job.token_ids:
            raise InvalidInput("send texts or token_ids, not both")
        n = job.n_inputs
        if n == 0:
            raise InvalidInput("no inputs: send at least one text or token-id list")
        if n > self.config.max_inputs_per_request:
            raise InvalidInput(f"{n} inputs is over the limit of {self.config.max_inputs_per_request} per request; "
                               "split the request (the client library does this for you)")

    def parse_token_ids(self, job: EmbedJob) -> TokenBatch:
        limit = self.spec.max_input_tokens
        arrays: list[np.ndarray] = []
        for i, raw in enumerate(job.token_ids):
            if len(raw) % 4:
                raise InvalidInput(f"token_ids[{i}] has {len(raw)} bytes, not a multiple of 4 (little-endian int32)")
            ids = np.frombuffer(raw, dtype="<i4")
            if ids.size == 0:
                raise InvalidInput(f"token_ids[{i}] is empty")
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self.vocab_size:
                bad = low if low < 0 else high
                raise InvalidInput(f"token_ids[{i}] holds id {bad}, outside the vocabulary 0..{self.vocab_size - 1}")
            if ids.size > limit:
                if not job.truncate:
                    raise InvalidInput(f"token_ids[{i}] has {ids.size} ids, over the model's limit of {limit}; "
                                       "send truncate=true or fewer ids")
                ids = ids[ids.size - limit:] if job.truncate_left else ids[:limit]
            arrays.append(ids)
        return TokenBatch.from_arrays(arrays)

    # ------------------------------------------------------------------------------------------- requests
    async def tokenize(self, job: EmbedJob) -> TokenBatch:
        self._check_model(job.model)
        self._check_inputs(job)
        if job.token_ids:
            return self.parse_token_ids(job)
        return await self.tokenizers.tokenize(job.texts, self.tokenize_options(job))

    async def embed(self, job: EmbedJob) -> EmbedResult:
        started = time.perf_counter_ns()
        task = asyncio.current_task()
        if job.request_id and task is not None:
            self._active[job.request_id] = task
        try:
            return await self._embed(job, started)
        except asyncio.CancelledError:
            if job.request_id in self._aborted:
                self._aborted.discard(job.request_id)
                raise Cancelled(f"request {job.request_id!r} was aborted") from None
            raise
        finally:
            if job.request_id and self._active.get(job.request_id) is task:
                del self._active[job.request_id]

    def estimate_tokens(self, job: EmbedJob) -> int:
        """Tokens this request will cost, from its size alone (no tokenizing): exact for ids, about
        CHARS_PER_TOKEN_ESTIMATE characters per token for texts, each capped at the model's limit."""
        limit = self.spec.max_input_tokens
        if job.token_ids:
            return sum(min(limit, len(raw) // 4) if job.truncate else len(raw) // 4 for raw in job.token_ids)
        extra = 2 + len(job.prefix) // CHARS_PER_TOKEN_ESTIMATE
        return sum(min(limit, len(text) // CHARS_PER_TOKEN_ESTIMATE + extra) for text in job.texts)

    def _admit(self, tokens: int) -> None:
        """Admission before any expensive work: a request the queue cannot take is refused in microseconds."""
        if self.draining:
            raise Unavailable("server is shutting down; send the request to another replica")
        queued = self.admitted_tokens
        if queued and queued + tokens > self.config.max_queued_tokens:
            raise Overloaded(f"server busy: {queued} tokens queued, limit {self.config.max_queued_tokens}; retry")
        self.admitted_tokens = queued + tokens
        metrics.QUEUED_TOKENS.set(self.admitted_tokens)

    def _settle(self, tokens: int) -> None:
        self.admitted_tokens -= tokens
        metrics.QUEUED_TOKENS.set(self.admitted_tokens)

    async def _embed(self, job: EmbedJob, started: int) -> EmbedResult:
        options = self.output_options(job)
        self._check_model(job.model)
        self._check_inputs(job)
        reserved = self.estimate_tokens(job)
        self._admit(reserved)
        self.in_flight += 1
        try:
            batch = await self.tokenize(job)
            tokenized = time.perf_counter_ns()
            total_tokens = batch.total
            self.admitted_tokens += total_tokens - reserved  # the estimate corrected to the exact count
            reserved = total_tokens
            results = await asyncio.gather(*(self.replicas.submit(ids, lengths, options, job.priority)
                                             for ids, lengths in self._chunks(batch)))
        finally:
            self._settle(reserved)
            self.in_flight -= 1
            self._answered += 1
        dim = options.dimensions or self.spec.dim
        data, scales = _join(results, has_scales(options.dtype))
        finished = time.perf_counter_ns()
        times = StageTimes(
            queue_ns=max(r.queue_ns for r in results),
            tokenize_ns=tokenized - started,
            inference_ns=max(r.inference_ns for r in results),
            total_ns=finished - started,
        )
        metrics.INPUTS.inc(batch.lengths.size)
        metrics.TOKENS.inc(total_tokens)
        metrics.BATCH_INPUTS.observe(batch.lengths.size)
        metrics.QUEUE_DURATION.observe(times.queue_ns / 1e9)
        metrics.TOKENIZE_DURATION.observe(times.tokenize_ns / 1e9)
        metrics.INFERENCE_DURATION.observe(times.inference_ns / 1e9)
        metrics.TOTAL_DURATION.observe(times.total_ns / 1e9)
        return EmbedResult(data, int(batch.lengths.size), dim, options.dtype, row_bytes(dim, options.dtype),
                           batch.lengths, scales, times)

    def _chunks(self, batch: TokenBatch) -> list[tuple[np.ndarray, np.ndarray]]:
        """Split a large request so that several replicas work on it at once."""
        n_ready = max(1, self.replicas.n_ready)
        budget = self.config.replica.max_batch_tokens
        if n_ready == 1 or batch.total <= budget:
            return [(batch.ids, batch.lengths)]
        target = max(budget // 2, -(-batch.total // n_ready))
        offsets = batch.offsets()
        chunks = []
        start = 0
        for end in range(1, batch.lengths.size + 1):
            if offsets[end] - offsets[start] >= target or end == batch.lengths.size:
                chunks.append((batch.ids[offsets[start]:offsets[end]], batch.lengths[start:end]))
                start = end
        return chunks

    async def drain(self, stall_s: float, cap_s: float) -> int:
        """Stop admitting (new requests get UNAVAILABLE at once) and wait for the admitted ones to finish.

        Waits while requests keep completing: it gives up only when none has completed for `stall_s` seconds, or
        after `cap_s` in all. Returns how many requests were still in flight when it stopped waiting."""
        self.draining = True
        loop = asyncio.get_running_loop()
        start = last_progress = loop.time()
        answered = self._answered
        while self.in_flight:
            await asyncio.sleep(0.05)
            now = loop.time()
            if self._answered != answered:
                answered, last_progress = self._answered, now
            if now - last_progress > stall_s or now - start > cap_s:
                log.warning("drain stops waiting with %d requests in flight (%.1fs, %.1fs without progress)",
                            self.in_flight, now - start, now - last_progress)
                break
        return self.in_flight

    def abort(self, request_id: str) -> None:
        task = self._active.get(request_id)
        if task is None:
            raise NotFound(f"no request {request_id!r} in flight")
        self._aborted.add(request_id)
        task.cancel()


def _join(results: list[ReplicaResult], with_scales: bool) -> tuple[bytes, np.ndarray | None]:
    data = bytes(results[0].data) if len(results) == 1 else b"".join(r.data for r in results)
    if not with_scales:
        return data, None
    return data, np.concatenate([np.frombuffer(r.scales, dtype=np.float32) for r in results if r.scales is not None])
