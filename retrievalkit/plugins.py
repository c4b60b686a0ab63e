"""The plugin host: every component comes through the ``retrievalkit`` entry-point group.

Built-in components and third-party ones take the same path: each is a module named by an
entry point in the ``retrievalkit`` group of some installed distribution. The host

* finds the entry points, skipping names blocked by the ``RKIT_BLOCK_PLUGINS`` environment
  variable (comma-separated entry-point names; a name that matches no entry point is a warning);
* knows what every plugin offers *without importing it* while the installed code is unchanged
  (the listing cache, :mod:`retrievalkit.plugin_cache`), so listing components and checking a
  name or an option need no torch; it imports a plugin only when one of its components is built,
  and then only that plugin;
* on a cache miss imports every plugin and validates everything: a hook implementation that
  matches no specification (a typo such as ``rkit_pooling``) and a hook that raises are errors
  naming the plugin; a name offered by two plugins is an error naming both;
* survives a plugin that fails to import: a :class:`PluginWarning` names it and the
  ``RKIT_BLOCK_PLUGINS`` value that silences it, and every other plugin stays usable (asking for
  a name it may have offered says so);
* answers lookups by kind and name, suggesting close names for a typo, and turns a factory's own
  ``ValueError`` into a one-line :class:`~retrievalkit.errors.ComponentOptionError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs, plugin_cache
from .components import KINDS, PLURAL, Component, ComponentSpec, Option, validate_options
from .errors import ComponentOptionError, PluginError, RkitWarning, UnknownComponentError

ENTRY_POINT_GROUP = "retrievalkit"
BLOCK_ENV_VAR = "RKIT_BLOCK_PLUGINS"
_TYPES: dict[str, type] = {t.__name__: t for t in (bool, int, float, str)}


class PluginWarning(RkitWarning):
    """A plugin problem that leaves the other plugins usable (import failure, unknown block name)."""


@dataclasses.dataclass(frozen=True, eq=False)
class RegisteredComponent:
    """A component as listed: what it is, its options, and where it came from.

    Everything but :attr:`component` is known without importing the plugin; :attr:`component`
    (the plugin's :class:`Component`, with its factory) imports it on first use.
    """

    kind: str
    name: str
    summary: str
    reference: str
    options: Mapping[str, Option]
    plugin: str
    distribution: str
    version: str
    loader: Callable[[], Component] = dataclasses.field(repr=False)

    @property
    def component(self) -> Component:
        return self.loader()


def blocked_from_env(environ: Mapping[str, str] | None = None) -> set[str]:
    """Entry-point names listed in ``RKIT_BLOCK_PLUGINS``."""
    value = (environ if environ is not None else os.environ).get(BLOCK_ENV_VAR, "")
    return {name.strip() for name in value.split(",") if name.strip()}


def _option_to_json(option: Option) -> dict[str, Any]:
    default = option.default
    if not isinstance(default, (bool, int, float, str, type(None))):
        default = repr(default)
    return {"name": option.name, "type": option.type.__name__, "default": default, "required": option.required}


def _option_from_json(data: Mapping[str, Any]) -> Option:
    return Option(data["name"], _TYPES.get(data["type"], str), data["default"], bool(data["required"]))


class PluginHost:
    """The registry of installed components, built once per process (see :func:`get_host`).

    ``use_cache=False`` always imports every plugin (as does ``RKIT_NO_PLUGIN_CACHE=1``).
    """

    def __init__(self, load_entry_points: bool = True, blocked: Iterable[str] | None = None,
                 use_cache: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.blocked: set[str] = blocked_from_env() if blocked is None else set(blocked)
        for name in self.blocked:
            self.pm.set_blocked(name)
        #: entry-point name -> "ExceptionType: message" for plugins that failed to import
        self.failures: dict[str, str] = {}
        self._entry_points: dict[str, EntryPoint] = {}
        self._dist_of: dict[str, tuple[str, str]] = {}
        self._cached: dict[str, Any] | None = None
        self._key: dict[str, Any] | None = None
        self._direct = False
        self._components: dict[str, dict[str, RegisteredComponent]] | None = None
        self._offered: dict[tuple[str, str], list[Component]] = {}
        if load_entry_points:
            self._discover(use_cache)

    # -- loading --------------------------------------------------------------------------
    def _discover(self, use_cache: bool) -> None:
        """Find the entry points; read the listing cache, or import every plugin on a miss."""
        found: dict[str, EntryPoint] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            found.setdefault(ep.name, ep)  # the first on sys.path wins, as for imports
        unknown = sorted(self.blocked - set(found))
        if unknown:
            warnings.warn(PluginWarning(
                f"{BLOCK_ENV_VAR} names {', '.join(map(repr, unknown))}, which no installed plugin is "
                f"called; the plugins are: {', '.join(sorted(found)) or 'none'}"), stacklevel=3)
        self._entry_points = {name: ep for name, ep in found.items() if name not in self.blocked}
        self._dist_of = {name: (ep.dist.name, ep.dist.version) if ep.dist else ("(unknown)", "")
                         for name, ep in self._entry_points.items()}
        if use_cache and plugin_cache.enabled():
            self._key = plugin_cache.listing_key(found.values(), self.blocked)
            self._cached = plugin_cache.read_listing(self._key)
        if self._cached is None:
            self.load_entry_points()

    def load_entry_points(self) -> None:
        """Import and register every plugin of the ``retrievalkit`` entry-point group."""
        for name in self._entry_points:
            self._load_plugin(name)

    def _load_plugin(self, name: str) -> bool:
        """Import entry point ``name`` and register it; ``False`` (and a warning) if it fails."""
        if self.pm.has_plugin(name):
            return True
        if name in self.failures:
            return False
        try:
            plugin = self._entry_points[name].load()
        except Exception as exc:  # noqa: BLE001 - whatever a broken plugin raises on import
            self.failures[name] = f"{type(exc).__name__}: {exc}"
            dist = self.source_of(name)[0]
            warnings.warn(PluginWarning(
                f"plugin {name!r} (from {dist}) failed to import ({self.failures[name]}); its "
                f"components are unavailable, the other plugins work. Fix or uninstall {dist}, or "
                f"set {BLOCK_ENV_VAR}={name} to skip it"), stacklevel=4)
            return False
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} cannot be used: {exc}. Fix it, or set "
                              f"{BLOCK_ENV_VAR}={name}") from exc
        self._check_hook_names()
        return True

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object directly (tests, notebooks); entry points are preferred."""
        if self._cached is not None:  # the listing must now come from the hooks themselves
            self.load_entry_points()
            self._cached = None
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name or plugin!r} cannot be used: {exc}") from exc
        self._check_hook_names()
        self._direct = True
        self._components = None

    def _check_hook_names(self) -> None:
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin)
            known = ", ".join(hookspecs.HOOK_FOR_KIND.values())
            raise PluginError(
                f"plugin {name!r} implements a hook that retrievalkit does not define ({exc}); the "
                f"hooks are: {known}. Rename the function, or block the plugin with {BLOCK_ENV_VAR}={name}"
            ) from exc

    # -- what the plugins offer ------------------------------------------------------------
    def _offered_by(self, impl: Any, kind: str) -> list[Component]:
        """The components one hook implementation returns (called once, checked)."""
        plugin, hook_name = impl.plugin_name, hookspecs.HOOK_FOR_KIND[kind]
        key = (plugin, kind)
        if key not in self._offered:
            how_to = f"Fix or uninstall {self.source_of(plugin)[0]}, or set {BLOCK_ENV_VAR}={plugin}"
            try:
                offered = list(impl.function() or [])
            except Exception as exc:  # noqa: BLE001 - a plugin's bug, reported as such
                raise PluginError(f"plugin {plugin!r}: its {hook_name}() raised {type(exc).__name__}: "
                                  f"{exc}. {how_to}") from exc
            for component in offered:
                if not isinstance(component, Component):
                    raise PluginError(f"plugin {plugin!r}: {hook_name}() must return a list of "
                                      f"retrievalkit.Component, got {type(component).__name__}. {how_to}")
            self._offered[key] = offered
        return self._offered[key]

    def _collect(self) -> dict[str, dict[str, RegisteredComponent]]:
        """Every component of the registered plugins, by calling their hooks."""
        found: dict[str, dict[str, RegisteredComponent]] = {kind: {} for kind in KINDS}
        for kind, hook_name in hookspecs.HOOK_FOR_KIND.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name
                for component in self._offered_by(impl, kind):
                    existing = found[kind].get(component.name)
                    if existing is not None:
                        raise PluginError(
                            f"two plugins offer a {kind} named {component.name!r}: {existing.plugin!r} "
                            f"({existing.distribution}) and {plugin!r} ({self.source_of(plugin)[0]}). "
                            f"Uninstall one, or block one with {BLOCK_ENV_VAR}={plugin}")
                    dist, version = self.source_of(plugin)
                    found[kind][component.name] = RegisteredComponent(
                        kind, component.name, component.summary, component.reference, component.options(),
                        plugin, dist, version, loader=functools.partial(lambda c: c, component))
        return found

    def _from_listing(self, listing: Mapping[str, Any]) -> dict[str, dict[str, RegisteredComponent]]:
        found: dict[str, dict[str, RegisteredComponent]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            for item in listing.get(kind, []):
                options = {o["name"]: _option_from_json(o) for o in item["options"]}
                found[kind][item["name"]] = RegisteredComponent(
                    kind, item["name"], item["summary"], item["reference"], options, item["plugin"],
                    item["distribution"], item["version"],
                    loader=functools.partial(self._load_component, kind, item["name"], item["plugin"]))
        return found

    @staticmethod
    def _to_listing(components: Mapping[str, Mapping[str, RegisteredComponent]]) -> dict[str, Any]:
        return {kind: [{"name": rc.name, "summary": rc.summary, "reference": rc.reference,
                        "plugin": rc.plugin, "distribution": rc.distribution, "version": rc.version,
                        "options": [_option_to_json(o) for o in rc.options.values()]}
                       for rc in by_name.values()]
                for kind, by_name in components.items()}

    def _load_component(self, kind: str, name: str, plugin: str) -> Component:
        """Import the one plugin a listed component comes from and return the component."""
        if not self._load_plugin(plugin):
            raise PluginError(f"the {kind} {name!r} comes from plugin {plugin!r}, which failed to import "
                              f"({self.failures[plugin]}). Fix or reinstall {self.source_of(plugin)[0]}")
        hook = getattr(self.pm.hook, hookspecs.HOOK_FOR_KIND[kind])
        for impl in hook.get_hookimpls():
            if impl.plugin_name == plugin:
                for component in self._offered_by(impl, kind):
                    if component.name == name:
                        return component
        # The plugin no longer offers what the listing said: list again from the plugins themselves.
        self._cached, self._components = None, None
        self.load_entry_points()
        return self.get(kind, name).component

    def all_components(self) -> dict[str, dict[str, RegisteredComponent]]:
        """Every component by kind and name; a name clash between plugins is an error."""
        if self._components is None:
            if self._cached is not None:
                self._components = self._from_listing(self._cached)
            else:
                self._components = self._collect()
                if self._key is not None and not self.failures and not self._direct:
                    plugin_cache.write_listing(self._key, self._to_listing(self._components))
        return self._components

    # -- lookups -------------------------------------------------------------------------
    def plugin_names(self) -> list[str]:
        """The usable plugins: entry points that are not blocked and did not fail, and direct ones."""
        direct = {name for name, plugin in self.pm.list_name_plugin() if plugin is not None}
        return sorted((set(self._entry_points) - set(self.failures)) | direct)

    def blocked_names(self) -> list[str]:
        return sorted(self.blocked)

    def source_of(self, plugin_name: str) -> tuple[str, str]:
        """(distribution, version) a plugin was installed with; registered directly otherwise."""
        return self._dist_of.get(plugin_name, ("(registered directly)", ""))

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
        broken = "".join(f" Plugin {p!r} failed to import ({why}) and may offer it: fix it, or set "
                         f"{BLOCK_ENV_VAR}={p}." for p, why in sorted(self.failures.items()))
        raise UnknownComponentError(
            f"unknown {kind} {name!r}.{hint} Available {PLURAL[kind]}: {listing}.{broken} "
            f"(`rkit plugins` lists every component and the package it comes from.)")

    def check(self, kind: str, spec: str | ComponentSpec, **defaults: Any) -> dict[str, Any]:
        """Validate ``NAME[:KEY=VALUE...]`` without importing the plugin; the converted options.

        An unknown name is an :class:`UnknownComponentError`, an unknown option or a value of
        the wrong type a :class:`ComponentOptionError`; ``defaults`` are overridden by the spec.
        """
        if isinstance(spec, str):
            spec = ComponentSpec.parse(spec)
        registered = self.get(kind, spec.name)
        return validate_options(spec.name, registered.options, {**defaults, **spec.options})

    def build(self, kind: str, spec: str | ComponentSpec, **defaults: Any) -> Any:
        """Build a component from ``NAME[:KEY=VALUE...]``; ``defaults`` are overridden by the spec.

        A ``ValueError`` raised by the factory itself (an option value it rejects) becomes a
        :class:`ComponentOptionError` naming the component and the options it was given.
        """
        if isinstance(spec, str):
            spec = ComponentSpec.parse(spec)
        options = self.check(kind, spec, **defaults)
        component = self.get(kind, spec.name).component
        try:
            return component.build(**options)
        except ComponentOptionError:
            raise
        except ValueError as exc:
            given = ":".join(f"{k}={v}" for k, v in options.items())
            raise ComponentOptionError(
                f"{kind} {spec.name!r} rejected its options ({given or 'defaults'}): {exc}. "
                f"`rkit plugins --options` lists each component's options") from exc


@functools.lru_cache(maxsize=1)
def get_host() -> PluginHost:
    """The process-wide plugin host (from the listing cache, or by importing every plugin)."""
    return PluginHost()


def reset_host() -> None:
    """Forget the cached host (tests that install or block plugins call this)."""
    get_host.cache_clear()
