"""Experiment files: TOML defaults for every ``rkit`` command, overridden by flags.

Every command takes ``--config FILE`` (and the group takes it too: ``rkit --config FILE CMD``).
The file gives the command's options; a flag typed on the command line always wins::

    built-in default  <  group-level file (rkit --config)  <  command-level file  <  flag

A file holds one table per command, named like the command (``[extract]``, ``[ablate]``,
``[whiten.fit]`` for a sub-command), and/or *flat* keys at the top level that every command
reads when it has an option of that name (``device = "cpu"``). A file with no tables at all
is a file for one command, so a key the command does not know is an error there; in a file
with tables, flat keys a command does not have are left to the commands that have them.
Keys are the option names with ``-`` or ``_`` (``image-size`` or ``image_size``). Options that
can be repeated take a TOML list; a repeated ``KEY=VALUE`` option (``--grid``) also takes a
table, ``[ablate.grid] pooling = ["mac", "gem"]`` meaning ``--grid pooling=mac,gem``.

How it works: the values are put in click's ``ctx.default_map`` by an eager ``--config``
option, so click's own precedence (command line > environment > default map > default) does
the rest. :func:`add_config_option` adds that option to a command (the CLI group does it for
every command it loads), and :func:`write_resolved_config` writes the values a command
actually ran with, each marked with where it came from, as a TOML file that ``--config``
reads back.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .atomic import write_text_atomic
from .errors import RkitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: ``ctx.meta`` key holding the config layers collected so far: a list of (file, data).
META_LAYERS = "retrievalkit.config.layers"
#: ``ctx.meta`` key holding, per parameter name, the file that set it (for the resolved file).
META_KEY_FILES = "retrievalkit.config.key_files"
#: ``ctx.meta`` key holding the config files the command read, in order.
META_FILES = "retrievalkit.config.files"
#: File name commands use for the resolved configuration next to their outputs.
RESOLVED_CONFIG_NAME = "rkit-config.toml"


class ConfigError(RkitError):
    """An experiment file that cannot be read or does not fit the command."""


# -- reading -------------------------------------------------------------------------------

def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML experiment file; a missing or malformed file is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: check the path given to --config")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML ({exc}); fix the line named") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc})") from exc


def _flat(table: Mapping[str, Any], nested: set[str]) -> dict[str, Any]:
    """The keys of ``table`` that are values (not the sub-tables named in ``nested``)."""
    return {k: v for k, v in table.items() if not (isinstance(v, dict) and k in nested)}


def table_for(data: Mapping[str, Any], command_path: Sequence[str],
              subcommands: Mapping[str, set[str]] | None = None) -> tuple[dict[str, Any], set[str]]:
    """The keys that apply to the command at ``command_path`` (e.g. ``["whiten", "fit"]``).

    ``subcommands`` names the (sub-)commands of each group by dotted path (``""`` for the
    root), so a table named after a command is told from a table *value* such as
    ``[ablate.grid]``. Flat keys of every enclosing level are merged, the more specific level
    winning. Returns (keys, strict): ``strict`` holds the keys that must be known to the
    command, i.e. those of its own table, or every key of a file with no command tables.
    """
    subcommands = subcommands or {}
    names_here = subcommands.get("", set())
    has_tables = any(isinstance(v, dict) and k in names_here for k, v in data.items())
    merged = _flat(data, names_here)
    strict = set() if has_tables else set(merged)
    level: Mapping[str, Any] = data
    for depth, name in enumerate(command_path):
        child = level.get(name)
        if not isinstance(child, dict):
            break
        names_here = subcommands.get(".".join(command_path[: depth + 1]), set())
        keys = _flat(child, names_here)
        merged.update(keys)
        if depth == len(command_path) - 1:
            strict |= set(keys)
        level = child
    return merged, strict


def _key_names(param: click.Parameter) -> set[str]:
    names = {param.name} if param.name else set()
    for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", []):
        names.add(opt.lstrip("-").replace("-", "_"))
    return names


def _to_click_value(param: click.Parameter, key: str, value: Any, where: str) -> Any:
    """Convert a TOML value to what click expects in ``default_map`` for ``param``."""
    repeated = getattr(param, "multiple", False) or (param.nargs != 1)
    if isinstance(value, dict):
        if not getattr(param, "multiple", False):
            raise ConfigError(f"{where}: {key!r} is a table, but this option takes one value; "
                              f"write {key} = VALUE")
        return [f"{k}={','.join(str(x) for x in v) if isinstance(v, list) else v}" for k, v in value.items()]
    if isinstance(value, list):
        if not repeated:
            raise ConfigError(f"{where}: {key!r} is a list, but this option takes one value; "
                              f"write {key} = VALUE")
        return [str(v) if isinstance(v, (datetime.date, datetime.time)) else v for v in value]
    if repeated and getattr(param, "multiple", False):
        return [value]
    return value


def command_defaults(command: click.Command, keys: Mapping[str, Any], *, strict: bool | set[str],
                     where: str) -> dict[str, Any]:
    """Map config ``keys`` onto ``command``'s parameters, as a click ``default_map``.

    An unknown key is a :class:`ConfigError` (suggesting close names) when ``strict`` is true
    or names it; otherwise it is ignored (a flat key meant for another command).
    """
    by_key: dict[str, click.Parameter] = {}
    for param in command.params:
        if param.name == "config" or not param.expose_value:
            continue
        for name in _key_names(param):
            by_key[name] = param
    result: dict[str, Any] = {}
    for raw_key, value in keys.items():
        key = raw_key.replace("-", "_")
        param = by_key.get(key)
        if param is None:
            if strict is True or (isinstance(strict, set) and raw_key in strict):
                close = difflib.get_close_matches(key, list(by_key), n=2, cutoff=0.6)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                known = ", ".join(sorted({p.name for p in by_key.values() if p.name})) or "none"
                raise ConfigError(f"{where}: unknown key {raw_key!r}.{hint} "
                                  f"Keys this command takes: {known}")
            continue
        assert param.name is not None
        result[param.name] = _to_click_value(param, raw_key, value, where)
    return result


# -- the --config option -------------------------------------------------------------------

def _command_path(ctx: click.Context) -> list[str]:
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return list(reversed(names))


def _layer_keys(ctx: click.Context, data: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The keys of one config file for the command of ``ctx`` (see :func:`table_for`)."""
    names: dict[str, set[str]] = {}
    group_ctx = ctx.parent
    while group_ctx is not None:  # each enclosing group names its sub-commands
        if isinstance(group_ctx.command, click.Group):
            names[".".join(_command_path(group_ctx))] = set(group_ctx.command.list_commands(group_ctx))
        group_ctx = group_ctx.parent
    return table_for(data, _command_path(ctx), names)


def _config_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if ctx.resilient_parsing:
        return value
    layers: list[tuple[str, dict[str, Any]]] = list(ctx.meta.get(META_LAYERS, []))
    if value:
        layers.append((str(value), load_config_file(value)))
    if isinstance(ctx.command, click.Group):
        ctx.meta[META_LAYERS] = layers  # the sub-command applies them
        return value
    default_map: dict[str, Any] = dict(ctx.default_map or {})
    key_files: dict[str, str] = {}
    for file, data in layers:
        keys, strict = _layer_keys(ctx, data)
        where = f"config file {file}"
        if ctx.parent is not None and ctx.info_name:
            where += f" (table [{'.'.join(_command_path(ctx))}] or top-level keys)"
        for name, v in command_defaults(ctx.command, keys, strict=strict, where=where).items():
            default_map[name] = v
            key_files[name] = file
    ctx.default_map = default_map
    ctx.meta[META_KEY_FILES] = key_files
    ctx.meta[META_FILES] = [file for file, _ in layers]
    return value


def config_option() -> click.Option:
    """The eager ``--config FILE`` option (not passed to the command function)."""
    return click.Option(
        ["--config"], type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
        callback=_config_callback, metavar="FILE",
        help="TOML experiment file with this command's options (table [COMMAND] or flat keys); "
             "flags given on the command line override it.",
    )


def add_config_option(command: click.Command) -> click.Command:
    """Give ``command`` (and, for a group, every sub-command) a ``--config`` option; idempotent."""
    if not any(p.name == "config" for p in command.params):
        command.params.insert(0, config_option())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_config_option(sub)
    return command


# -- writing the resolved configuration ------------------------------------------------------

_SOURCE_TEXT = {
    ParameterSource.COMMANDLINE: "command line",
    ParameterSource.ENVIRONMENT: "environment",
    ParameterSource.DEFAULT_MAP: "config file",
    ParameterSource.DEFAULT: "default",
}


def _toml_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        items = [_toml_value(v) for v in value]
        return "[" + ", ".join(i for i in items if i is not None) + "]"
    if isinstance(value, Mapping):
        items = [f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }"
    return json.dumps(str(value), ensure_ascii=False)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def resolved_config(ctx: click.Context) -> dict[str, tuple[Any, str]]:
    """The values the command of ``ctx`` runs with: ``{name: (value, source)}``.

    ``source`` is ``command line``, ``environment``, ``config file PATH`` or ``default``.
    """
    key_files = ctx.meta.get(META_KEY_FILES, {})
    out: dict[str, tuple[Any, str]] = {}
    for param in ctx.command.params:
        if not param.expose_value or param.name is None or param.name not in ctx.params:
            continue
        source = ctx.get_parameter_source(param.name)
        text = _SOURCE_TEXT.get(source, str(source)) if source is not None else "default"
        if source == ParameterSource.DEFAULT_MAP and param.name in key_files:
            text = f"config file {key_files[param.name]}"
        value = ctx.params[param.name]
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        out[param.name] = (value, text)
    return out


def format_resolved_config(ctx: click.Context, extra: Mapping[str, Any] | None = None) -> str:
    """The TOML text :func:`write_resolved_config` writes."""
    from . import __version__

    table = ".".join(_toml_key(n) for n in _command_path(ctx)) or "rkit"
    files = ctx.meta.get(META_FILES, [])
    lines = [
        f"# Resolved configuration of `{ctx.command_path}` (retrievalkit {__version__}),",
        f"# written {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}.",
        f"# Command line: {' '.join(sys.argv)}",
        f"# Config files read: {', '.join(files) or 'none'}",
        f"# Re-run with: rkit {' '.join(_command_path(ctx))} --config THIS_FILE",
        "",
        f"[{table}]",
    ]
    for name, (value, source) in resolved_config(ctx).items():
        rendered = _toml_value(value)
        if rendered is None:
            lines.append(f"# {_toml_key(name)} is not set ({source})")
        else:
            lines.append(f"{_toml_key(name)} = {rendered}  # {source}")
    if extra:
        lines += ["", "# Recorded with the run (comments, not options):"]
        lines += [f"#   {key} = {_toml_value(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def resolved_config_path(output: str | Path) -> Path:
    """Where the resolved configuration of a run that wrote ``output`` goes.

    A ``.toml`` path is used as is; a directory (or a path without suffix) gets
    ``rkit-config.toml`` inside; an output file gets a sibling ``<stem>.rkit-config.toml``
    (``runs/db.npz`` -> ``runs/db.rkit-config.toml``).
    """
    path = Path(output)
    if path.suffix == ".toml":
        return path
    if path.is_dir() or not path.suffix:
        return path / RESOLVED_CONFIG_NAME
    return path.with_name(f"{path.stem}.{RESOLVED_CONFIG_NAME}")


def write_resolved_config(output: str | Path, ctx: click.Context | None = None,
                          extra: Mapping[str, Any] | None = None) -> Path:
    """Write the configuration the current command resolved to, as TOML, atomically.

    ``output`` is the run's output folder or file (see :func:`resolved_config_path`); ``ctx``
    defaults to the current click context. The file can be passed back with ``--config`` to
    repeat the run; each value carries a comment saying where it came from. ``extra`` facts
    (e.g. the number of images) are written as comments. Returns the path written.
    """
    ctx = ctx or click.get_current_context()
    path = resolved_config_path(output)
    write_text_atomic(path, format_resolved_config(ctx, extra))
    return path
