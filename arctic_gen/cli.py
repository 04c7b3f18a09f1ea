"""`arctic-gen`: the generation side's commands.

    arctic-gen serve --model DIR|HUB_ID [vLLM engine arguments]   streaming Generate over gRPC
    arctic-gen train-speculator ...                                train an MLP/LSTM speculator ([train] extra)
    arctic-gen distill-swiftkv ...                                 distill a SwiftKV model ([train] extra)

`arctic-gen COMMAND --help` shows each command's options. Commands are imported only when run, so `--help` is
fast and a command whose extra is not installed says so in one line.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    """Module with `main(argv: list[str]) -> int`."""
    summary: str
    extra: str = ""
    """pip extra that provides the command's dependencies (named in the error when it is missing)."""


COMMANDS = (
    Command("serve", "arctic_gen.server.cli", "serve one model over gRPC (arctic.gen.v1.GenerateService) on vLLM"),
    Command("train-speculator", "arctic_gen.training.speculator.cli",
            "train an MLP/LSTM speculator for a base model", extra="train"),
    Command("distill-swiftkv", "arctic_gen.training.swiftkv.cli",
            "distill a SwiftKV checkpoint from a base model", extra="train"),
)


class CommandUnavailable(Exception):
    """A command's module (or a package it needs) is not installed."""


def usage() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = ["usage: arctic-gen {" + ",".join(c.name for c in COMMANDS) + "} [options]", "",
             (__doc__ or "").strip().splitlines()[0], "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS]
    lines += ["", "`arctic-gen COMMAND --help` lists a command's options; every `serve` option can also be set",
              "from an ARCTIC_GEN_<OPTION> environment variable."]
    return "\n".join(lines)


def load(command: Command) -> Callable[[list[str]], int]:
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or "a module"
        hint = f"; install the [{command.extra}] extra: pip install 'arctic-serve[{command.extra}]'" \
            if command.extra else ""
        raise CommandUnavailable(f"arctic-gen {command.name}: {missing} is not installed{hint}") from None
    return module.main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    by_name = {c.name: c for c in COMMANDS}
    command = by_name.get(argv[0])
    if command is None:
        print(f"arctic-gen: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        run = load(command)
    except CommandUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    return int(run(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
