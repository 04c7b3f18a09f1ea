"""Command-line options that show their defaults and can also be set from the environment.

`apply_env(parser, "ARCTIC_EMBED_")` gives every option `--foo-bar` the variable `ARCTIC_EMBED_FOO_BAR`: when it is
set it becomes the option's default (the command line still wins), and the help text names it. Used by
`arctic-embed serve` and `arctic-gen serve` (whose vLLM engine arguments get `ARCTIC_GEN_*` variables too).
"""

from __future__ import annotations

import argparse
import os

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after every option's help; descriptions keep their line breaks."""


class EnvError(ValueError):
    """An environment variable holds a value its option does not accept."""


def env_name(prefix: str, action: argparse.Action) -> str:
    return prefix + action.dest.upper()


def _convert(action: argparse.Action, name: str, raw: str) -> object:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        low = raw.strip().lower()
        if low not in TRUE + FALSE:
            raise EnvError(f"{name}={raw!r}: expected one of {', '.join(TRUE + FALSE[:-1])}")
        value = low in TRUE
        return (not value) if isinstance(action, argparse._StoreFalseAction) else value
    convert = action.type or str
    try:
        if action.nargs in ("+", "*") or isinstance(action.nargs, int):
            value: object = [convert(part) for part in raw.split()]  # type: ignore[operator]
        else:
            value = convert(raw)  # type: ignore[operator]
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise EnvError(f"{name}={raw!r}: {exc}") from None
    if action.choices is not None:
        items = value if isinstance(value, list) else [value]
        bad = [v for v in items if v not in action.choices]
        if bad:
            raise EnvError(f"{name}={raw!r}: choose from {', '.join(map(str, action.choices))}")
    return value


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))
            and a.dest != argparse.SUPPRESS]


def apply_env(parser: argparse.ArgumentParser, prefix: str, environ: dict[str, str] | None = None) -> None:
    """Defaults from `prefix + DEST` variables; adds `[env NAME]` to every option's help. Raises EnvError."""
    environ = os.environ if environ is None else environ
    for action in _options(parser):
        name = env_name(prefix, action)
        if action.help is not argparse.SUPPRESS:
            action.help = f"{action.help or ''} [env {name}]".strip()
        if name in environ:
            action.default = _convert(action, name, environ[name])
            action.required = False


def options_without_help(parser: argparse.ArgumentParser) -> list[str]:
    """Options whose help is empty (for tests: every option says what it does)."""
    return [a.option_strings[-1] for a in _options(parser)
            if not (a.help or "").split("[env ")[0].strip() and a.help is not argparse.SUPPRESS]
