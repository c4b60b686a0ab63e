"""``rkit plugins``: every installed component by kind, with its plugin, distribution and version.

The listing comes from the plugin host's listing cache when the installed code is unchanged, so
it imports no plugin (and no torch); see :mod:`retrievalkit.plugin_cache`.
"""

from __future__ import annotations

import json

import click

from ..components import KINDS, PLURAL
from ..plugins import get_host


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--options", "show_options", is_flag=True, help="Show each component's options.")
def command(as_json: bool, show_options: bool) -> None:
    """List installed components and where they come from."""
    host = get_host()
    components = host.all_components()
    if as_json:
        out = {
            kind: [
                {"name": rc.name, "plugin": rc.plugin, "distribution": rc.distribution,
                 "version": rc.version, "summary": rc.summary, "reference": rc.reference,
                 "options": {o.name: o.default for o in rc.options.values()}}
                for rc in sorted(components[kind].values(), key=lambda r: r.name)
            ]
            for kind in KINDS
        }
        click.echo(json.dumps(out, indent=2, default=str))
        return
    for kind in KINDS:
        click.secho(PLURAL[kind], bold=True)
        if not components[kind]:
            click.echo("  (none installed)")
        for rc in sorted(components[kind].values(), key=lambda r: r.name):
            source = f"{rc.distribution} {rc.version}".strip()
            click.echo(f"  {rc.name:<20} {rc.summary:<58} [{rc.plugin} from {source}]")
            if show_options:
                for option in rc.options.values():
                    click.echo(f"  {'':<22}- {option.describe()}")
    if host.blocked_names():
        click.echo(f"blocked by RKIT_BLOCK_PLUGINS: {', '.join(host.blocked_names())}")
    for plugin, why in sorted(host.failures.items()):
        click.echo(f"failed to import: {plugin} ({why}); set RKIT_BLOCK_PLUGINS={plugin} to skip it")
