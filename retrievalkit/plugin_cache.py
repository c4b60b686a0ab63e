"""The component listing cache: what every installed plugin offers, known without importing it.

Importing the plugins is what makes the host slow to start (a backbone plugin imports torch and
torchvision: seconds and hundreds of MB). What they *offer* (names, summaries, references and each
factory's options) changes only when the installed code changes, so the host stores it once per
installed set, in ``$RKIT_CACHE/plugins/listing-<environment>.json``, and reads it back while
nothing changed. The key (:func:`listing_key`) is everything the listing depends on, found
without importing any plugin:

* the cache format and the core modules that define components, hooks and this host (path,
  mtime, size);
* the Python executable and version;
* every installed distribution (the ``*.dist-info`` / ``*.egg-info`` names on ``sys.path``,
  which carry name and version);
* the entry points of the ``retrievalkit`` group, with their distribution's name and version;
* for each of them, every ``.py`` file of the top-level package its module lives in (path,
  modification time in ns, size), located by asking the import system's finders for the
  top-level name, which imports nothing;
* the ``RKIT_BLOCK_PLUGINS`` names.

Any difference is a miss: the host then imports every plugin, validates everything and writes a
new listing (atomically; a cache folder that cannot be written only costs speed). A listing is
written only when every plugin loaded: a broken plugin is reported on every run, never hidden.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from importlib.machinery import ModuleSpec
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

#: Bumped when the stored layout changes.
CACHE_FORMAT = 1
#: Set to 1 to bypass the listing cache (always import every plugin).
NO_CACHE_ENV_VAR = "RKIT_NO_PLUGIN_CACHE"
#: Installed sets remembered per environment.
_KEPT_KEYS = 4
#: Most files stat-ed per top-level package (a plugin inside a huge package stays cheap).
_MAX_FILES = 5000


def _stat(path: str) -> list[Any]:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, st.st_mtime_ns, st.st_size]


def _py_files(directory: str) -> list[str]:
    found: list[str] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if f.endswith(".py")]
        if len(found) >= _MAX_FILES:
            break
    return found[:_MAX_FILES]


def _find_spec(name: str) -> ModuleSpec | None:
    """Where the import system would find top-level ``name`` now (ignoring ``sys.modules``)."""
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            spec = find(name, None)
        except Exception:  # noqa: BLE001 - a third-party finder's problem is not a listing's
            continue
        if spec is not None:
            return spec
    return None


def module_files(module: str) -> list[list[Any]]:
    """(path, mtime_ns, size) of every ``.py`` file of the top-level package of ``module``."""
    top = module.split(".")[0]
    spec = _find_spec(top)
    if spec is None:
        return [[top, "not found"]]
    if spec.submodule_search_locations:
        paths = [p for location in spec.submodule_search_locations for p in _py_files(location)]
    else:
        paths = [spec.origin] if spec.origin else []
    return [_stat(path) for path in paths]


def installed_distributions() -> list[list[Any]]:
    """The distribution metadata folders on ``sys.path`` (their names carry name and version)."""
    found = []
    for entry in sys.path:
        try:
            names = sorted(n for n in os.listdir(entry or ".") if n.endswith((".dist-info", ".egg-info")))
        except OSError:
            continue
        if names:
            found.append([entry, names])
    return found


#: The core modules a listing depends on (the component model, the hooks, the host).
_CORE = ("components.py", "hookspecs.py", "plugins.py", "plugin_cache.py")


def _core_files() -> list[list[Any]]:
    core = Path(__file__).resolve().parent
    return [_stat(str(core / name)) for name in _CORE]


def listing_key(entry_points: Iterable[EntryPoint], blocked: Iterable[str]) -> dict[str, Any]:
    """Everything the listing depends on (see the module docstring); no plugin is imported."""
    blocked = sorted(set(blocked))
    points = [[ep.name, ep.value, ep.dist.name if ep.dist else "", ep.dist.version if ep.dist else ""]
              for ep in entry_points]
    packages = sorted({ep.module.split(".")[0] for ep in entry_points if ep.name not in blocked})
    return {
        "format": CACHE_FORMAT,
        "python": [sys.executable, sys.version],
        "core": _core_files(),
        "distributions": installed_distributions(),
        "entry_points": points,
        "files": {package: module_files(package) for package in packages},
        "blocked": blocked,
    }


def cache_path() -> Path:
    """The listing file of this Python environment (one file each; a new key replaces it)."""
    from .cache import cache_dir

    environment = hashlib.sha256(f"{sys.prefix}\0{sys.executable}".encode()).hexdigest()[:16]
    return cache_dir() / "plugins" / f"listing-{environment}.json"


def enabled() -> bool:
    return os.environ.get(NO_CACHE_ENV_VAR, "").strip().lower() not in {"1", "true", "yes", "on"}


def _stored() -> list[dict[str, Any]]:
    try:
        stored = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError, RuntimeError):  # RuntimeError: no home folder to find the cache in
        return []
    entries = stored.get("entries") if isinstance(stored, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def read_listing(key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored listing for ``key``, or ``None`` (no file, another key, unreadable)."""
    if not enabled():
        return None
    wanted = json.loads(json.dumps(key))
    for entry in _stored():
        if entry.get("key") == wanted and isinstance(entry.get("listing"), dict):
            return entry["listing"]
    return None


def write_listing(key: Mapping[str, Any], listing: Mapping[str, Any]) -> None:
    """Store ``listing`` under ``key`` (newest first, a few keys kept), atomically.

    A few keys are kept because ``python -m retrievalkit`` in a source checkout, a different
    ``PYTHONPATH`` or ``RKIT_BLOCK_PLUGINS`` legitimately see another installed set. A cache that
    cannot be written only costs speed.
    """
    if not enabled():
        return
    from .atomic import write_text_atomic

    wanted = json.loads(json.dumps(key))
    entries = [{"key": wanted, "listing": listing}]
    entries += [e for e in _stored() if e.get("key") != wanted][: _KEPT_KEYS - 1]
    try:
        write_text_atomic(cache_path(), json.dumps({"entries": entries}, default=str))
    except (OSError, RuntimeError):
        pass
