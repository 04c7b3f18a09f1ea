"""Several gRPC front-end processes on one engine: `arctic-gen serve --api-server-count N` (N > 1), the way vLLM's
`--api-server-count` scales its OpenAI server.

Why: one Python process does all of a stream's per-token work (vLLM's output processing and detokenization, our
protobuf building, gRPC's per-message work). At tens of thousands of tokens per second that one process saturates
while the GPU waits. With N front ends each owns an `AsyncLLM` client of the same engine core (vLLM routes every
request's outputs back to the client that sent it) and a gRPC server on the same port with SO_REUSEPORT, so the
kernel spreads client connections across them.

Process layout (all started here, in the launcher process):
    launcher ── vLLM's engine core process(es) (vLLM's own `launch_core_engines`)
             └─ N front ends (vLLM's `APIServerProcessManager`, with `front_end_main` as the target)
The launcher prints the "serving" line once every front end serves, then watches them: if any process dies the
rest are stopped and the launcher exits non-zero. On SIGTERM/SIGINT each front end drains as a single-process server
does (health NOT_SERVING, new streams refused, running streams finish), then the engine stops.

The engine launch differs between the vLLM versions we support (0.26: ZMQ addresses the front ends bind and report
back; 0.32: listener sockets bound here and handed over); `_launch_026` and `_launch_032` are the two shims, picked by
version range as the patch registry does.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from arctic_gen.patching import UnsupportedVllmVersion
from arctic_gen.server.app import DRAIN_MAX_S, ServerConfig

logger = logging.getLogger(__name__)

VLLM_026 = SpecifierSet(">=0.26,<0.27")
VLLM_032 = SpecifierSet(">=0.32,<0.33")
FRONT_END_TITLE = "arctic-gen-front-end"
"""Process title of each front end (`ps` shows `arctic-gen-front-end-0`, ...)."""
READY_TIMEOUT_S = 1800.0
"""How long the launcher waits for every front end to serve (engine load and compilation included)."""


class FrontEndError(RuntimeError):
    """A front end or the engine failed to start, or died."""


@dataclass(frozen=True)
class FrontEndSpec:
    """What each front-end process needs (pickled into it)."""

    engine_args: Any
    """vLLM AsyncEngineArgs, as parsed by the launcher."""
    config: ServerConfig
    """Transport options; `port` is the concrete shared port."""
    log_format: str
    ready: Any
    """multiprocessing queue: each front end puts (index, port) once it serves, or (index, error text)."""


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound (not listening) SO_REUSEPORT socket holding `port` (0 = a free one) until the front ends bind it too.

    OSError (EADDRINUSE) when anything else holds the port, even another server with SO_REUSEPORT: a second server
    on the same port must fail to start, not silently take half the connections. A socket that never listens gets
    no connections, so holding it costs nothing; it keeps the port ours until the front ends bind it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:  # without SO_REUSEPORT: fails if anyone has it
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))
    return holder, holder.getsockname()[1]


# --- the front-end process -------------------------------------------------------------------------------------


def front_end_main(listen_address: str, sock: Any, spec: FrontEndSpec, client_config: dict[str, Any]) -> None:
    """Target of each front-end process (vLLM's APIServerProcessManager calls it with its own signature)."""
    import setproctitle  # a vLLM dependency
    import uvloop
    import vllm.plugins

    from arctic_embed.logs import configure as configure_logging

    index = int(client_config.get("client_index", 0))
    setproctitle.setproctitle(f"{FRONT_END_TITLE}-{index}")
    configure_logging("INFO", spec.log_format, role=f"arctic-gen-fe{index}")
    vllm.plugins.load_general_plugins()
    try:
        uvloop.run(_serve_front_end(spec, dict(client_config), index))
    except Exception as exc:
        with contextlib.suppress(Exception):
            spec.ready.put((index, f"{type(exc).__name__}: {exc}"))
        raise


async def _serve_front_end(spec: FrontEndSpec, client_config: dict[str, Any], index: int) -> None:
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    from arctic_gen.server.app import GenerateServer, run_until_signal
    from arctic_gen.server.core import EngineStats, GenerationCore

    count = int(client_config.pop("client_count", 1))
    client_config.pop("client_index", None)
    engine_args = spec.engine_args  # this process's own unpickled copy
    engine_args._api_process_count = count  # as vLLM's own API server processes do
    engine_args._api_process_rank = index
    vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    stats = EngineStats()
    engine = AsyncLLM.from_vllm_config(vllm_config, usage_context=UsageContext.OPENAI_API_SERVER,
                                       stat_loggers=[stats.stat_logger_factory()],
                                       disable_log_stats=engine_args.disable_log_stats,
                                       client_addresses=client_config, client_count=count, client_index=index)
    core = GenerationCore(engine, max_concurrent_streams=spec.config.max_concurrent_streams, stats=stats,
                          front_end=(index, count))
    server = GenerateServer(engine, core, spec.config, reuse_port=True)
    await server.start()
    spec.ready.put((index, server.port))
    await run_until_signal(server)


# --- the launcher ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _launch_026(vllm_config, executor_class, log_stats: bool, n: int, spec: FrontEndSpec) -> Iterator[tuple]:
    from vllm.v1.engine.utils import get_engine_zmq_addresses, launch_core_engines
    from vllm.v1.utils import APIServerProcessManager

    addresses = get_engine_zmq_addresses(vllm_config, n, defer_api_server_ports=True)
    manager = None
    with _stopped_on_error(lambda: manager), launch_core_engines(
            vllm_config, executor_class, log_stats, addresses, n) as (engine_manager, coordinator, addresses,
                                                                      tensor_queue):
        manager = APIServerProcessManager(
            listen_address=_address(spec.config), sock=None, args=spec, num_servers=n,
            input_addresses=addresses.inputs, output_addresses=addresses.outputs, target_server_fn=front_end_main,
            stats_update_address=coordinator.get_stats_publish_address() if coordinator else None,
            tensor_queue=tensor_queue)
        # The front ends bind their ZMQ sockets and report the ports; the engine handshake (on exit) needs them.
        addresses.inputs, addresses.outputs = manager.gather_actual_addresses()
    yield manager, engine_manager, coordinator


@contextlib.contextmanager
def _launch_032(vllm_config, executor_class, log_stats: bool, n: int, spec: FrontEndSpec) -> Iterator[tuple]:
    from vllm.v1.engine.utils import bind_engine_zmq_listeners, launch_core_engines
    from vllm.v1.utils import APIServerProcessManager

    listeners = bind_engine_zmq_listeners(vllm_config, n)
    manager = None
    with _stopped_on_error(lambda: manager), launch_core_engines(
            vllm_config, executor_class, log_stats, listeners.addresses) as launch:
        coordinator = launch.coordinator
        manager = APIServerProcessManager(
            listen_address=_address(spec.config), sock=None, args=spec, num_servers=n,
            input_listeners=listeners.inputs, output_listeners=listeners.outputs, target_server_fn=front_end_main,
            stats_update_address=coordinator.get_stats_publish_address() if coordinator else None,
            tensor_queue=launch.tensor_queue)
        launch.watched_frontend_processes = manager.processes  # a front end dying during start aborts it
    yield manager, launch.engine_manager, coordinator


@contextlib.contextmanager
def _stopped_on_error(current_manager) -> Iterator[None]:
    """Stop the front ends (`current_manager()`, once started) when the engine launch fails."""
    try:
        yield
    except BaseException:
        manager = current_manager()
        if manager is not None:
            manager.shutdown(timeout=5.0)
        raise


def _launcher_for(version: str):
    parsed = Version(version)
    for specifiers, launcher in ((VLLM_026, _launch_026), (VLLM_032, _launch_032)):
        if specifiers.contains(parsed, prereleases=True):
            return launcher
    raise UnsupportedVllmVersion(
        f"--api-server-count > 1: vLLM {version} is outside the versions the front-end launcher was written for "
        f"({VLLM_026}, {VLLM_032}); use --api-server-count 1")


def _address(config: ServerConfig) -> str:
    return f"grpc://{config.host}:{config.port}"


def _wait_ready(spec: FrontEndSpec, manager: Any, n: int, deadline: float) -> None:
    ready: set[int] = set()
    while len(ready) < n:
        try:
            index, result = spec.ready.get(timeout=0.5)
        except queue.Empty:
            index, result = -1, None
        if result is None:
            dead = [p for p in manager.processes if not p.is_alive()]
            if dead:
                raise FrontEndError(f"front end {dead[0].name} exited with code {dead[0].exitcode} during start")
            if time.monotonic() > deadline:
                raise FrontEndError(f"only {len(ready)} of {n} front ends serve after {READY_TIMEOUT_S:.0f} s")
            continue
        if isinstance(result, str):
            raise FrontEndError(f"front end {index} failed to start: {result}")
        ready.add(index)


def run_front_ends(engine_args: Any, config: ServerConfig, count: int, log_format: str, model: str) -> int:
    """Start the engine and `count` front ends, serve until SIGTERM/SIGINT or a process dies. Returns the exit code."""
    import vllm
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.abstract import Executor
    from vllm.v1.utils import wait_for_completion_or_failure

    launcher = _launcher_for(vllm.__version__)
    try:
        holder, port = reserve_port(config.host, config.port)
    except OSError as exc:
        print(f"arctic-gen: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    spec = FrontEndSpec(engine_args, replace(config, port=port), log_format,
                        multiprocessing.get_context("spawn").Queue())
    engine_args._api_process_count = count
    engine_args._api_process_rank = -1  # the launcher: vLLM's value for "not a front end"
    vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    executor_class = Executor.get_class(vllm_config)

    stopping = False

    def on_signal(signum, frame):  # the first signal stops the wait below; the finally block drains
        nonlocal stopping
        if not stopping:
            stopping = True
            raise SystemExit(0)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    manager = engine_manager = coordinator = None
    try:
        with launcher(vllm_config, executor_class, not engine_args.disable_log_stats, count, spec) as (
                manager, engine_manager, coordinator):
            _wait_ready(spec, manager, count, time.monotonic() + READY_TIMEOUT_S)
        holder.close()
        print(f"arctic-gen: serving {model} on {config.host}:{port} ({count} front ends)", flush=True)
        wait_for_completion_or_failure(api_server_manager=manager, engine_manager=engine_manager,
                                       coordinator=coordinator)
        return 0 if stopping else 1
    except SystemExit:
        return 0
    except Exception as exc:
        logger.error("arctic-gen: %s", exc)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        holder.close()
        if manager is not None:  # front ends first: they drain while the engine still runs
            manager.shutdown(timeout=DRAIN_MAX_S + 30.0)
        if engine_manager is not None:
            engine_manager.shutdown()
        if coordinator is not None:
            coordinator.shutdown()
