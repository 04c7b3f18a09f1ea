"""Several gateway processes on one port (SO_REUSEPORT): the kernel spreads connections across them.

One Python gateway handles on the order of a thousand large or ten thousand small RPCs per second; past that,
`--gateways N` starts N complete servers (each with its own tokenizer workers and replicas) bound to the same port.
This process supervises them: it forwards SIGTERM/SIGINT (each child drains) and exits when they have all exited.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

log = logging.getLogger(__name__)


def _strip_option(argv: list[str], name: str) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == name:
            skip = True
            continue
        if arg.startswith(name + "="):
            continue
        out.append(arg)
    return out


def run_gateways(count: int, argv: list[str], port: int, metrics_port: int) -> int:
    if port == 0:
        raise SystemExit("--gateways > 1 needs an explicit --port: the gateways share it")
    base = _strip_option(_strip_option(argv, "--gateways"), "--metrics-port")
    children = []
    for index in range(count):
        extra = ["--metrics-port", str(metrics_port + index if metrics_port else 0), "--reuse-port"]
        children.append(subprocess.Popen([sys.executable, "-m", "arctic_embed", *base, *extra]))
    log.info("started %d gateways on port %d", count, port)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while any(child.poll() is None for child in children):
        time.sleep(0.2)
        if any(child.returncode not in (None, 0) for child in children):
            forward(signal.SIGTERM, None)
    return max(child.returncode or 0 for child in children)
