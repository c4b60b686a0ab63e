"""Small helpers every command module may use without importing anything heavy.

* :func:`renamed_option`: an option's old spelling kept working, hidden, with a warning;
* :func:`echo_warnings`: the library's ``warnings`` shown as ``Warning: ...`` lines.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import click
from click.core import ParameterSource

from ..errors import RkitError

#: ``ctx.meta`` key: parameter name -> value given through a deprecated spelling
_META_RENAMED = "retrievalkit.cli.renamed"


def renamed_option(old: str, param: str, new: str, *, key: str | None = None,
                   type: Any = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Keep the old spelling ``old`` of option ``new`` (parameter ``param``) working, hidden.

    Using it prints a deprecation warning and sets ``param`` as ``new`` would; giving both on
    the command line is an error. ``key`` is the hidden option's parameter name (also accepted
    as a ``--config`` key, for files written before the rename).
    """
    hidden = key or "deprecated_" + old.lstrip("-").replace("-", "_")

    def remember(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None:
            click.echo(f"Warning: {old} is deprecated: use {new} (same meaning)", err=True)
            ctx.meta.setdefault(_META_RENAMED, {})[param] = value

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            renamed = ctx.meta.get(_META_RENAMED, {})
            if param in renamed:
                if ctx.get_parameter_source(param) == ParameterSource.COMMANDLINE:
                    raise RkitError(f"{old} and {new} given together: give only {new}")
                kwargs[param] = ctx.params[param] = renamed[param]
                ctx.set_parameter_source(param, ctx.get_parameter_source(hidden))
            return func(*args, **kwargs)

        option = click.option(old, hidden, hidden=True, default=None, type=type, expose_value=False,
                              callback=remember)
        return option(wrapper)

    return decorator


@contextlib.contextmanager
def echo_warnings() -> Iterator[None]:
    """Show the library's warnings raised inside the block as ``Warning: ...`` lines on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        click.echo(f"Warning: {warning.message}", err=True)
