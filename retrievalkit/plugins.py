"""The plugin host: loads every component through the ``retrievalkit`` entry-point group.

Built-in components and third-party ones take the same path: each is a module named by an
entry point in the ``retrievalkit`` group of some installed distribution. The host

* loads the group with pluggy, skipping names blocked by the ``RKIT_BLOCK_PLUGINS``
  environment variable (comma separated entry-point names);
* fails loudly on a hook implementation that matches no specification (a typo such as
  ``rkit_pooling`` would otherwise be silently ignored);
* collects the components of each kind and fails on a name offered by two plugins, naming both;
* answers lookups by kind and name, suggesting close names for a typo.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from collections.abc import Iterable
from typing import Any

import pluggy

from . import hookspecs
from .components import KINDS, PLURAL, Component, ComponentSpec
from .errors import PluginError, UnknownComponentError

ENTRY_POINT_GROUP = "retrievalkit"
BLOCK_ENV_VAR = "RKIT_BLOCK_PLUGINS"


@dataclasses.dataclass(frozen=True)
class RegisteredComponent:
    """A component together with where it came from."""

    kind: str
    component: Component
    plugin: str
    distribution: str
    version: str

    @property
    def name(self) -> str:
        return self.component.name


def blocked_from_env(environ: dict[str, str] | None = None) -> set[str]:
    """Entry-point names listed in ``RKIT_BLOCK_PLUGINS``."""
    value = (environ if environ is not None else os.environ).get(BLOCK_ENV_VAR, "")
    return {name.strip() for name in value.split(",") if name.strip()}


class PluginHost:
    """The registry of installed components, built once per process (see :func:`get_host`)."""

    def __init__(self, load_entry_points: bool = True, blocked: Iterable[str] | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._dist_of: dict[str, tuple[str, str]] = {}
        self._components: dict[str, dict[str, RegisteredComponent]] | None = None
        for name in blocked_from_env() if blocked is None else blocked:
            self.pm.set_blocked(name)
        if load_entry_points:
            self.load_entry_points()

    # -- loading --------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Load and register every module of the ``retrievalkit`` entry-point group."""
        try:
            self.pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {exc.plugin!r} cannot be used: {exc}") from exc
        except Exception as exc:  # an import error inside a plugin
            raise PluginError(
                f"a plugin of the {ENTRY_POINT_GROUP!r} entry-point group failed to load: "
                f"{type(exc).__name__}: {exc}. Fix or uninstall it, or block it with "
                f"{BLOCK_ENV_VAR}=NAME"
            ) from exc
        for plugin, dist in self.pm.list_plugin_distinfo():
            name = self.pm.get_name(plugin) or repr(plugin)
            self._dist_of[name] = (dist.metadata["name"], dist.version)
        self._check_hook_names()

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object directly (tests, notebooks); entry points are preferred."""
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name or plugin!r} cannot be used: {exc}") from exc
        self._check_hook_names()
        self._components = None

    def _check_hook_names(self) -> None:
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            known = ", ".join(hookspecs.HOOK_FOR_KIND.values())
            raise PluginError(
                f"plugin {self.pm.get_name(exc.plugin)!r} implements a hook that retrievalkit does "
                f"not define ({exc}); the hooks are: {known}. Rename the function, or block the "
                f"plugin with {BLOCK_ENV_VAR}={self.pm.get_name(exc.plugin)}"
            ) from exc

    # -- lookups -------------------------------------------------------------------------
    def plugin_names(self) -> list[str]:
        return sorted(name for name, _ in self.pm.list_name_plugin())

    def source_of(self, plugin_name: str) -> tuple[str, str]:
        """(distribution, version) a plugin was installed with; registered directly otherwise."""
        return self._dist_of.get(plugin_name, ("(registered directly)", ""))

    def all_components(self) -> dict[str, dict[str, RegisteredComponent]]:
        """Every component by kind and name; a name clash between plugins is an error."""
        if self._components is not None:
            return self._components
        found: dict[str, dict[str, RegisteredComponent]] = {kind: {} for kind in KINDS}
        for kind, hook_name in hookspecs.HOOK_FOR_KIND.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name = impl.plugin_name
                offered = impl.function() or []
                for component in offered:
                    if not isinstance(component, Component):
                        raise PluginError(
                            f"plugin {plugin_name!r}: {hook_name}() must return a list of "
                            f"retrievalkit.Component, got {type(component).__name__}"
                        )
                    existing = found[kind].get(component.name)
                    if existing is not None:
                        raise PluginError(
                            f"two plugins offer a {kind} named {component.name!r}: "
                            f"{existing.plugin!r} ({existing.distribution}) and {plugin_name!r} "
                            f"({self.source_of(plugin_name)[0]}). Uninstall one, or block one with "
                            f"{BLOCK_ENV_VAR}={plugin_name}"
                        )
                    dist, version = self.source_of(plugin_name)
                    found[kind][component.name] = RegisteredComponent(kind, component, plugin_name, dist, version)
        self._components = found
        return found

    def names(self, kind: str) -> list[str]:
        """Sorted names of the installed components of ``kind``."""
        return sorted(self._kind(kind))

    def _kind(self, kind: str) -> dict[str, RegisteredComponent]:
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        return self.all_components()[kind]

    def get(self, kind: str, name: str) -> RegisteredComponent:
        """The component ``name`` of ``kind``; an unknown name lists the available ones."""
        available = self._kind(kind)
        if name in available:
            return available[name]
        close = difflib.get_close_matches(name, list(available), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(sorted(available)) or "none installed"
        raise UnknownComponentError(
            f"unknown {kind} {name!r}.{hint} Available {PLURAL[kind]}: {listing}. "
            f"(`rkit plugins` lists every component and the package it comes from.)"
        )

    def build(self, kind: str, spec: str | ComponentSpec, **defaults: Any) -> Any:
        """Build a component from ``NAME[:KEY=VALUE...]``; ``defaults`` are overridden by the spec."""
        if isinstance(spec, str):
            spec = ComponentSpec.parse(spec)
        registered = self.get(kind, spec.name)
        options: dict[str, Any] = dict(defaults)
        options.update(spec.options)
        return registered.component.build(**options)


@functools.lru_cache(maxsize=1)
def get_host() -> PluginHost:
    """The process-wide plugin host, loaded from the installed entry points on first use."""
    return PluginHost()


def reset_host() -> None:
    """Forget the cached host (tests that install or block plugins call this)."""
    get_host.cache_clear()
