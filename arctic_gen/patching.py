"""The patch registry: every change the plugin makes to vLLM, declared with the vLLM versions it was written for.

A `Patch` names one target object by import path (`"vllm.engine.arg_utils:EngineArgs"`), the vLLM versions it
supports (a `packaging` SpecifierSet), the attributes it replaces (each must already exist on the target) and the
attributes it adds (each must not exist yet). `build(target)` returns the new attribute values; wrappers close over
the originals they wrap (vLLM methods are wrapped, never copied). The registry applies patches once, records every
original so tests can revert, and refuses to patch the same attribute twice.

Version policy: outside a patch's range `apply` raises `UnsupportedVllmVersion` naming the patch, the installed
version and the range, unless `ARCTIC_GEN_SKIP_VERSION_CHECK=1` (then it logs a warning and tries). A target or
attribute that has disappeared is always an error (`PatchTargetMissing`): patching blind is never safe.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

logger = logging.getLogger(__name__)

_MISSING = object()


class PatchError(RuntimeError):
    """A patch could not be applied safely."""


class UnsupportedVllmVersion(PatchError):
    """The installed vLLM is outside a patch's declared range."""


class PatchTargetMissing(PatchError):
    """The object or attribute a patch expects is not in this vLLM."""


class AlreadyPatched(PatchError):
    """A patch, or another patch of the same attribute, was applied before."""


@dataclass(frozen=True)
class Patch:
    """One change to one vLLM object."""

    name: str
    """Unique, e.g. "engine_args.arctic_fields"."""
    target: str
    """"module:qualname" of the object patched, e.g. "vllm.engine.arg_utils:EngineArgs"."""
    versions: SpecifierSet
    """vLLM versions this patch was written and checked for (pre-releases and local builds included)."""
    build: Callable[[Any], dict[str, Any]]
    """Given the target, returns {attribute: new value} for `replaces` + `adds`; wrappers capture the originals."""
    replaces: tuple[str, ...] = ()
    """Attributes that must exist on the target and are replaced."""
    adds: tuple[str, ...] = ()
    """Attributes that must not exist on the target and are added (declared state, never probed with getattr)."""
    notes: str = ""
    """How the patched code differs between supported vLLM versions, if it does."""

    def supports(self, version: str | Version) -> bool:
        return self.versions.contains(_parse(version), prereleases=True)


@dataclass
class _Applied:
    patch: Patch
    target: Any
    originals: dict[str, Any] = field(default_factory=dict)  # raw class __dict__ entries (or _MISSING)


def _parse(version: str | Version) -> Version:
    if isinstance(version, Version):
        return version
    try:
        return Version(version)
    except InvalidVersion as exc:
        raise UnsupportedVllmVersion(f"cannot parse the vLLM version {version!r}") from exc


def resolve(target: str) -> Any:
    """Import "module:qualname" and return the object; `PatchTargetMissing` when it is not there."""
    module_name, _, qualname = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PatchTargetMissing(f"patch target module {module_name!r} cannot be imported: {exc}") from exc
    for part in filter(None, qualname.split(".")):
        if not hasattr(obj, part):
            raise PatchTargetMissing(f"patch target {target!r}: {part!r} does not exist in this vLLM")
        obj = getattr(obj, part)
    return obj


def installed_vllm_version() -> str:
    import vllm

    return vllm.__version__


class PatchRegistry:
    """Patches by name; apply each at most once per process."""

    def __init__(self) -> None:
        self._patches: dict[str, Patch] = {}
        self._applied: dict[str, _Applied] = {}
        self._owners: dict[tuple[int, str], str] = {}  # (id(target), attribute) -> patch name

    def register(self, patch: Patch) -> None:
        """Idempotent for the same patch; a different patch under a taken name is an error."""
        known = self._patches.get(patch.name)
        if known is not None and known is not patch:
            raise AlreadyPatched(f"another patch is already registered as {patch.name!r}")
        self._patches[patch.name] = patch

    def register_all(self, patches: Iterable[Patch]) -> None:
        for patch in patches:
            self.register(patch)

    @property
    def patches(self) -> list[Patch]:
        return list(self._patches.values())

    def is_applied(self, name: str) -> bool:
        return name in self._applied

    def original(self, name: str, attribute: str) -> Any:
        """What `attribute` was before patch `name` replaced it (the raw class-dict entry)."""
        return self._applied[name].originals[attribute]

    def check_versions(self, version: str, skip: bool = False) -> list[Patch]:
        """The registered patches that do not support `version`; raises unless `skip`."""
        outside = [p for p in self._patches.values() if not p.supports(version)]
        if outside and not skip:
            lines = "\n".join(f"  - {p.name} ({p.target}) supports vLLM {p.versions}" for p in outside)
            raise UnsupportedVllmVersion(
                f"arctic_gen does not support the installed vLLM {version}:\n{lines}\n"
                "Install a supported vLLM, or set ARCTIC_GEN_SKIP_VERSION_CHECK=1 to try anyway, or exclude the "
                "plugin with VLLM_PLUGINS (a comma-separated list of the plugins to load)."
            )
        for patch in outside:
            logger.warning("arctic_gen: patch %s is declared for vLLM %s, applying it to %s anyway (forced)",
                           patch.name, patch.versions, version)
        return outside

    def apply(self, name: str, version: str, skip_version_check: bool = False) -> None:
        """Apply one patch; raises if it was applied before or its target is not as declared."""
        patch = self._patches[name]
        if name in self._applied:
            raise AlreadyPatched(f"patch {name!r} is already applied")
        if not patch.supports(version):
            if not skip_version_check:
                raise UnsupportedVllmVersion(
                    f"patch {name!r} supports vLLM {patch.versions}, installed is {version} "
                    "(ARCTIC_GEN_SKIP_VERSION_CHECK=1 forces)"
                )
        target = resolve(patch.target)
        for attribute in patch.replaces:
            if not hasattr(target, attribute):
                raise PatchTargetMissing(f"patch {name!r}: {patch.target}.{attribute} does not exist in vLLM {version}")
        for attribute in patch.adds:
            if hasattr(target, attribute):
                raise AlreadyPatched(f"patch {name!r}: {patch.target}.{attribute} exists already, refusing to add it")
        for attribute in (*patch.replaces, *patch.adds):
            owner = self._owners.get((id(target), attribute))
            if owner is not None:
                raise AlreadyPatched(f"patch {name!r}: {patch.target}.{attribute} was already patched by {owner!r}")
        values = patch.build(target)
        declared = set(patch.replaces) | set(patch.adds)
        if set(values) != declared:
            raise PatchError(f"patch {name!r} built {sorted(values)}, but declares {sorted(declared)}")
        applied = _Applied(patch, target)
        for attribute, value in values.items():
            applied.originals[attribute] = vars(target).get(attribute, _MISSING)
            setattr(target, attribute, value)
            self._owners[(id(target), attribute)] = name
        self._applied[name] = applied
        logger.debug("arctic_gen: applied patch %s to %s", name, patch.target)

    def apply_all(self, version: str, skip_version_check: bool = False) -> None:
        """Check every version range first (so nothing is half-applied), then apply what is not applied yet."""
        self.check_versions(version, skip=skip_version_check)
        for name in self._patches:
            if name not in self._applied:
                self.apply(name, version, skip_version_check=True)

    def revert(self, name: str) -> None:
        """Put back what patch `name` replaced and remove what it added (for tests)."""
        applied = self._applied.pop(name)
        for attribute, original in applied.originals.items():
            if original is _MISSING:
                delattr(applied.target, attribute)
            else:
                setattr(applied.target, attribute, original)
            del self._owners[(id(applied.target), attribute)]

    def revert_all(self) -> None:
        for name in reversed(list(self._applied)):
            self.revert(name)


REGISTRY = PatchRegistry()
"""The plugin's registry (one per process)."""
