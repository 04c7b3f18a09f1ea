"""The generation core: validate a request, tokenize it, stream it through vLLM's AsyncLLM. No gRPC in here.

`GenerationCore.generate(GenerateInput)` is an async iterator of `Delta`s (new token ids + new text since the last
one); the last delta carries `Final` (finish reason, usage, speculation stats, timings). Closing or cancelling the
iterator aborts the request in the engine. Errors are `arctic_gen.server.errors` types.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from arctic_gen.server.errors import InvalidArgument, Overloaded, Unavailable
from arctic_gen.server.step_tally import STEP_TALLY, StepCount

logger = logging.getLogger(__name__)


# --- requests and results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """Sampling options; None = vLLM's default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    skip_special_tokens: bool | None = None


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class GenerateInput:
    """Exactly one of text / token_ids / chat."""

    request_id: str = ""
    model: str = ""
    text: str | None = None
    token_ids: Sequence[int] | None = None
    chat: Sequence[ChatMessage] | None = None
    add_generation_prompt: bool = True
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class SpeculationStats:
    enabled: bool = False
    decode_steps: int = 0
    """Engine steps that produced this request's tokens (counted per engine step, not per delta)."""
    draft_tokens: int = 0
    """Draft tokens proposed for this request; 0 when this vLLM does not report them per request (see `exact`)."""
    accepted_tokens: int = 0
    mean_tokens_per_step: float = 0.0
    exact: bool = False
    """True when `draft_tokens` is the engine's own per-request count (vLLM >= 0.32 with per-request metrics)."""


@dataclass(frozen=True)
class Final:
    finish_reason: str  # "stop" | "length" | "abort"
    stop_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    speculation: SpeculationStats
    queue_ns: int
    ttft_ns: int
    total_ns: int


@dataclass(slots=True)
class Delta:
    request_id: str
    token_ids: list[int]
    text: str
    # Per token: ((sampled id, logprob), [(alternative id, logprob), ...]) when logprobs were requested.
    logprobs: list[tuple[tuple[int, float], list[tuple[int, float]]]] | None = None
    final: Final | None = None


# --- engine statistics (a vLLM stat logger) ---------------------------------------------------------------------


class EngineStats:
    """Latest scheduler counts and cumulative speculation counters, fed by `stat_logger_factory`."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.spec_num_drafts = 0
        self.spec_draft_tokens = 0
        self.spec_accepted_tokens = 0
        self.steps_recorded = 0

    def record(self, scheduler_stats: Any) -> None:
        if scheduler_stats is None:
            return
        self.steps_recorded += 1
        self.running = scheduler_stats.num_running_reqs
        self.waiting = scheduler_stats.num_waiting_reqs
        spec = scheduler_stats.spec_decoding_stats
        if spec is not None:
            self.spec_num_drafts += spec.num_drafts
            self.spec_draft_tokens += spec.num_draft_tokens
            self.spec_accepted_tokens += spec.num_accepted_tokens

    def stat_logger_factory(self):
        """A factory for `AsyncLLM(stat_loggers=[...])` whose loggers feed this object."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        stats = self

        class _Logger(StatLoggerBase):
            def __init__(self, vllm_config, engine_index: int = 0):
                self.engine_index = engine_index

            def record(self, scheduler_stats, iteration_stats, *args, **kwargs):
                stats.record(scheduler_stats)

            def log_engine_initialized(self):
                pass

        return _Logger


# --- the core --------------------------------------------------------------------------------------------------


def _has_per_request_spec_metrics() -> bool:
    # vLLM >= 0.32 reports per-request speculation metrics (with --per-request-spec-decode-metrics); 0.26 does not.
    from vllm.outputs import CompletionOutput

    return "spec_decode_metrics" in {f.name for f in dataclasses.fields(CompletionOutput)}


def _vllm_error_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(admission-control errors, client errors) of this vLLM: both exist from 0.32 on, neither in 0.26 (where a
    bad request is a ValueError and there is no admission control)."""
    try:
        from vllm.exceptions import MaxQueuedTokensError, QueueOverflowError, VLLMClientError
    except ImportError:
        return (), ()
    return (QueueOverflowError, MaxQueuedTokensError), (VLLMClientError,)


class GenerationCore:
    """Streams requests through one AsyncLLM, with admission control."""

    def __init__(self, engine: Any, *, max_concurrent_streams: int = 256, stats: EngineStats | None = None,
                 front_end: tuple[int, int] = (0, 1)) -> None:
        """`front_end`: (this process's index, front-end processes on the engine) under `--api-server-count`."""
        self.engine = engine
        self.front_end = front_end
        self.max_concurrent_streams = max_concurrent_streams
        self.stats = stats or EngineStats()
        self.model_config = engine.model_config
        self.vllm_config = engine.vllm_config
        self.max_model_len = int(self.model_config.max_model_len)
        self.vocab_size = int(self.model_config.get_vocab_size())
        self.max_logprobs = int(self.model_config.max_logprobs)
        self.speculative = self.vllm_config.speculative_config is not None
        self.served_names = {self.model_config.model, *(self._served_model_names())}
        self._per_request_spec = _has_per_request_spec_metrics()
        self._active: set[str] = set()
        self._tokenizer = engine.get_tokenizer()
        self.draining = False
        self._progress = 0
        """Messages streamed so far: a drain waits while this keeps moving."""

    def _served_model_names(self) -> list[str]:
        name = self.model_config.served_model_name
        return [name] if isinstance(name, str) else list(name or [])

    @property
    def active_streams(self) -> int:
        return len(self._active)

    @property
    def messages_streamed(self) -> int:
        """Deltas handed to the transport since start."""
        return self._progress

    # -- validation and tokenization --

    def _prompt_ids(self, inp: GenerateInput) -> list[int]:
        given = [x is not None for x in (inp.text, inp.token_ids, inp.chat)]
        if sum(given) != 1:
            raise InvalidArgument("prompt: set exactly one of text, token_ids, chat")
        if inp.text is not None:
            if not inp.text:
                raise InvalidArgument("prompt.text: empty prompt")
            ids = list(self._tokenizer.encode(inp.text))
        elif inp.token_ids is not None:
            ids = [int(t) for t in inp.token_ids]
            if not ids:
                raise InvalidArgument("prompt.token_ids: empty prompt")
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise InvalidArgument(f"prompt.token_ids: {bad[:5]} outside the vocabulary [0, {self.vocab_size})")
        else:
            ids = self._chat_ids(inp)
        if not ids:
            raise InvalidArgument("prompt: tokenizes to nothing")
        if len(ids) >= self.max_model_len:
            raise InvalidArgument(f"prompt: {len(ids)} tokens, the model's context is {self.max_model_len}")
        return ids

    def _chat_ids(self, inp: GenerateInput) -> list[int]:
        messages = list(inp.chat or ())
        if not messages:
            raise InvalidArgument("prompt.chat.messages: empty")
        for i, message in enumerate(messages):
            if not message.role:
                raise InvalidArgument(f"prompt.chat.messages[{i}].role: empty")
        try:
            rendered = self._tokenizer.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in messages],
                tokenize=False, add_generation_prompt=inp.add_generation_prompt)
        except Exception as exc:  # jinja errors, template's raise_exception(...), missing template
            raise InvalidArgument(f"prompt.chat: the model's chat template rejected it: {exc}") from exc
        if not isinstance(rendered, str) or not rendered:
            raise InvalidArgument("prompt.chat: rendered to an empty prompt")
        return list(self._tokenizer.encode(rendered, add_special_tokens=False))

    def _sampling_params(self, s: Sampling, prompt_len: int):
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
            value = getattr(s, name)
            if value is not None and not math.isfinite(value):
                raise InvalidArgument(f"sampling.{name}={value}: must be a finite number")
        room = self.max_model_len - prompt_len
        if s.max_tokens is not None and s.max_tokens < 1:
            raise InvalidArgument(f"sampling.max_tokens={s.max_tokens}: must be >= 1")
        if s.max_tokens is not None and s.max_tokens > room:
            raise InvalidArgument(
                f"sampling.max_tokens={s.max_tokens}: the prompt has {prompt_len} tokens and the model's context is "
                f"{self.max_model_len}, so at most {room}")
        if s.logprobs is not None and not 0 <= s.logprobs <= self.max_logprobs:
            raise InvalidArgument(f"sampling.logprobs={s.logprobs}: must be in [0, {self.max_logprobs}]")
        if s.min_tokens > room:
            raise InvalidArgument(f"sampling.min_tokens={s.min_tokens}: at most {room} fit after the prompt")
        bad_stops = [t for t in s.stop_token_ids if not 0 <= t < self.vocab_size]
        if bad_stops:
            raise InvalidArgument(f"sampling.stop_token_ids: {bad_stops[:5]} outside the vocabulary")
        if any(not stop for stop in s.stop):
            raise InvalidArgument("sampling.stop: empty stop string")
        kwargs: dict[str, Any] = {
            "n": 1,
            "max_tokens": s.max_tokens if s.max_tokens is not None else room,
            "ignore_eos": s.ignore_eos,
            "min_tokens": s.min_tokens,
            "output_kind": RequestOutputKind.DELTA,
        }
        for name in ("temperature", "top_p", "min_p", "seed", "logprobs", "presence_penalty", "frequency_penalty",
                     "repetition_penalty", "skip_special_tokens"):
            value = getattr(s, name)
            if value is not None:
                kwargs[name] = value
        if s.top_k is not None and s.top_k != 0:
            kwargs["top_k"] = s.top_k
        if s.stop:
            kwargs["stop"] = list(s.stop)
        if s.stop_token_ids:
            kwargs["stop_token_ids"] = list(s.stop_token_ids)
        try:
            return SamplingParams(**kwargs)
        except Exception as exc:  # ValueError (vLLM 0.26) or VLLMValidationError (0.32): a bad value either way
            raise InvalidArgument(f"sampling: {exc}") from exc

    def prepare(self, inp: GenerateInput) -> tuple[str, list[int], Any]:
        """(request_id, prompt token ids, SamplingParams) or InvalidArgument."""
        if inp.model and inp.model not in self.served_names:
            raise InvalidArgument(f"model={inp.model!r}: this server serves {sorted(self.served_names)}")
        ids = self._prompt_ids(inp)
        params = self._sampling_params(inp.sampling, len(ids))
        return inp.request_id or uuid.uuid4().hex, ids, params

    # -- streaming --

    def _translate(self, exc: BaseException) -> BaseException:
        """vLLM errors as ours: bad request → InvalidArgument, admission control → Overloaded, dead → Unavailable."""
        from vllm.exceptions import VLLMValidationError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        if isinstance(exc, EngineDeadError):
            return Unavailable(f"engine is dead: {exc}")
        cause = exc.__cause__ if isinstance(exc, EngineGenerateError) and exc.__cause__ is not None else exc
        overload, client = _vllm_error_types()
        if isinstance(cause, overload):
            return Overloaded(str(cause) or type(cause).__name__)
        if isinstance(cause, (ValueError, TypeError, VLLMValidationError, *client)):
            return InvalidArgument(str(cause))
        return exc

    async def drain(self, stall_s: float, cap_s: float) -> int:
        """Refuse new streams (UNAVAILABLE at once) and wait for the running ones to finish, as long as they keep
        streaming: gives up after `stall_s` seconds without any message, or `cap_s` in all. Returns the streams
        still running then."""
        self.draining = True
        loop = asyncio.get_running_loop()
        start = last = loop.time()
        seen = self._progress
        while self._active:
            await asyncio.sleep(0.05)
            now = loop.time()
            if self._progress != seen:
                seen, last = self._progress, now
            if now - last > stall_s or now - start > cap_s:
                break
        return len(self._active)

    async def generate(self, inp: GenerateInput) -> AsyncIterator[Delta]:
        if self.draining:
            raise Unavailable("server is shutting down; send the request to another replica")
        if self.engine.errored:
            raise Unavailable("engine is dead")
        request_id, prompt_ids, params = self.prepare(inp)
        if request_id in self._active:
            raise InvalidArgument(f"request_id={request_id!r}: a stream with this id is running")
        if len(self._active) >= self.max_concurrent_streams:
            raise Overloaded(f"{len(self._active)} streams in flight (max {self.max_concurrent_streams}); retry later")
        self._active.add(request_id)
        start = time.monotonic_ns()
        first_token_ns = 0
        deltas = completion_tokens = 0
        steps = STEP_TALLY.watch(request_id)
        want_logprobs = params.logprobs is not None
        stream = self.engine.generate({"prompt_token_ids": prompt_ids}, params, request_id)
        try:
            async for out in stream:
                completion = out.outputs[0]
                ids = completion.token_ids  # DELTA outputs: a fresh list per output
                if ids:
                    deltas += 1
                    completion_tokens += len(ids)
                    if not first_token_ns:
                        first_token_ns = time.monotonic_ns()
                delta = Delta(request_id, ids, completion.text,
                              self._logprobs(completion, ids, params) if want_logprobs else None)
                if out.finished:
                    delta.final = self._final(out, completion, len(prompt_ids), completion_tokens, steps, deltas,
                                              start, first_token_ns)
                self._progress += 1
                yield delta
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            self._active.discard(request_id)
            STEP_TALLY.forget(request_id)
            await stream.aclose()  # no-op when finished; otherwise vLLM aborts the request in the engine

    def _logprobs(self, completion: Any, ids: list[int], params: Any):
        if params.logprobs is None or completion.logprobs is None:
            return None
        result = []
        for token_id, position in zip(ids, list(completion.logprobs)[-len(ids):], strict=False):
            sampled = position.get(token_id)
            ranked = sorted(position.items(), key=lambda kv: kv[1].rank or 0)
            top = [(int(tid), float(lp.logprob)) for tid, lp in ranked if lp.rank and lp.rank <= params.logprobs]
            result.append(((int(token_id), float(sampled.logprob) if sampled else float("nan")), top))
        return result

    def _final(self, out: Any, completion: Any, prompt_tokens: int, completion_tokens: int, steps: StepCount,
               deltas: int, start: int, first_token_ns: int) -> Final:
        from vllm.v1.metrics.stats import RequestStateStats

        now = time.monotonic_ns()
        spec = SpeculationStats(enabled=self.speculative)
        if self.speculative and completion_tokens:
            # Steps come from the engine's per-step outputs (STEP_TALLY): each step yields 1 + its accepted drafts.
            # Without them (the output-processor patch not applied) the number of deltas is all there is, a lower
            # bound since AsyncLLM merges deltas under load.
            if steps.steps:
                decode_steps, accepted = steps.steps, steps.tokens - steps.steps
            else:
                decode_steps = max(deltas, 1)
                accepted = max(completion_tokens - decode_steps, 0)
            metrics = completion.spec_decode_metrics if self._per_request_spec else None
            drafts = metrics.to_dict()["num_draft_tokens"] if metrics is not None else 0
            spec = SpeculationStats(True, decode_steps, drafts, accepted, completion_tokens / decode_steps,
                                    metrics is not None)
        stop_reason = "" if completion.stop_reason is None else str(completion.stop_reason)
        queue_ns = 0
        if isinstance(out.metrics, RequestStateStats) and out.metrics.scheduled_ts and out.metrics.queued_ts:
            queue_ns = int(max(out.metrics.scheduled_ts - out.metrics.queued_ts, 0.0) * 1e9)
        return Final(
            finish_reason=completion.finish_reason or "stop",
            stop_reason=stop_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached_prompt_tokens=int(out.num_cached_tokens or 0),
            speculation=spec,
            queue_ns=queue_ns,
            ttft_ns=(first_token_ns - start) if first_token_ns else 0,
            total_ns=now - start,
        )

    async def abort(self, request_id: str) -> bool:
        if request_id not in self._active:
            return False
        await self.engine.abort(request_id)
        return True

    def info(self) -> dict[str, Any]:
        import vllm

        import arctic_gen
        from arctic_gen.config import ArcticConfig

        spec = self.vllm_config.speculative_config
        return {
            "model": self.model_config.model,
            "served_model_name": self._served_model_names()[0] if self._served_model_names() else "",
            "max_model_len": self.max_model_len,
            "dtype": str(self.model_config.dtype).removeprefix("torch."),
            "vllm_version": vllm.__version__,
            "arctic_gen_version": arctic_gen.__version__,
            "arctic_config_json": json.dumps(ArcticConfig.from_vllm_config(self.vllm_config).to_dict()),
            "speculative_config": "" if spec is None else f"{spec.method} k={spec.num_speculative_tokens}",
            "max_concurrent_streams": self.max_concurrent_streams,
            "active_streams": self.active_streams,
            "front_end_index": self.front_end[0],
            "front_end_count": self.front_end[1],
            "engine_running": self.stats.running,
            "engine_waiting": self.stats.waiting,
            "engine_unfinished": self.engine.output_processor.get_num_unfinished_requests(),
            "spec_num_drafts": self.stats.spec_num_drafts,
            "spec_draft_tokens": self.stats.spec_draft_tokens,
            "spec_accepted_tokens": self.stats.spec_accepted_tokens,
        }

    async def info_with_layout(self) -> dict[str, Any]:
        """`info()` whose `arctic_config_json` also carries the parallel layout and the steps run in each mode
        (`"layout": {"tensor_parallel_size", "sequence_parallel_size", "pipeline_parallel_size", "world_size",
        "shift_parallel", "shift_parallel_threshold", "steps": {"sp": n, "tp": n}}`, first rank's counters)."""
        from arctic_gen.config import ArcticConfig

        info = self.info()
        vllm_parallel = self.vllm_config.parallel_config
        arctic = ArcticConfig.from_vllm_config(self.vllm_config).parallel
        steps = {"sp": 0, "tp": 0}
        if arctic.ulysses_sequence_parallel_size > 1:
            steps = (await self.engine.collective_rpc("arctic_parallel_stats"))[0]["steps"]
        layout = {
            "tensor_parallel_size": vllm_parallel.tensor_parallel_size,
            "sequence_parallel_size": arctic.ulysses_sequence_parallel_size,
            "pipeline_parallel_size": vllm_parallel.pipeline_parallel_size,
            "world_size": vllm_parallel.world_size,
            "shift_parallel": arctic.enable_shift_parallel,
            "shift_parallel_threshold": arctic.shift_parallel_threshold,
            "steps": steps,
        }
        info["arctic_config_json"] = json.dumps({**json.loads(info["arctic_config_json"]), "layout": layout})
        return info
