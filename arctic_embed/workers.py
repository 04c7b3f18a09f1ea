"""Starting worker processes (tokenizers, replicas) connected to the gateway by a socket pair."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class WorkerProcess:
    """A started worker: its process and the gateway's end of the socket pair."""

    process: subprocess.Popen
    sock: socket.socket

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.sock.close()


def spawn_worker(module: str, config: dict, env: dict[str, str] | None = None) -> WorkerProcess:
    """Run `python -m module --fd N --config JSON`; the child talks over its end of a socket pair on fd N."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (parent, child):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 2**20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
    child_env = dict(os.environ)
    child_env.update(env or {})
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--fd", str(child.fileno()), "--config", json.dumps(config)],
            pass_fds=[child.fileno()],
            env=child_env,
        )
    finally:
        child.close()
    parent.setblocking(False)
    return WorkerProcess(process, parent)


def worker_socket(fd: int) -> socket.socket:
    """The child's end, from the fd number the parent passed."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    return sock
