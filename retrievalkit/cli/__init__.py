"""The ``rkit`` command line: a thin layer over the public API.

Each command lives in its own module of this package (``retrievalkit.cli.extract`` ...), loaded
only when it is run so ``rkit --help`` stays fast. User-facing errors (:class:`RkitError`) are
printed without a traceback and exit with status 2. Ctrl-C and SIGTERM (installed by
:func:`retrievalkit.interrupt.install_sigterm_handler`) exit with status 130 after the command
has saved what it can; a command that raises :class:`retrievalkit.errors.Interrupted` says what
was kept and the command that resumes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from typing import Any

import click

from ..config import add_config_option, config_option
from ..errors import Interrupted, RkitError, RkitWarning
from ..interrupt import install_sigterm_handler, remember_command_line

#: printed for an interruption of a command that did not say what it kept
INTERRUPTED_MESSAGE = ("Interrupted. Outputs already finished are kept (every file is written "
                       "atomically); re-run the same command to resume.")

#: command name -> (module, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "plugins": ("retrievalkit.cli.plugins", "command", "List installed components and where they come from."),
    "extract": ("retrievalkit.cli.extract", "command", "Extract global descriptors of images."),
    "merge": ("retrievalkit.cli.merge", "command", "Merge the shards of `rkit extract --shard K/N`."),
    "search": ("retrievalkit.cli.search", "command", "Search a descriptors file with faiss."),
    "index": ("retrievalkit.cli.index", "group", "Saved search indexes: build, add images, merge sharded results."),
    "eval": ("retrievalkit.cli.evaluate", "command", "Evaluate retrieval (mAP) on a dataset."),
    "whiten": ("retrievalkit.cli.whiten", "group", "Learn and apply whitening (PCA, learned Lw)."),
    "sfm": ("retrievalkit.cli.sfm", "command", "Structure-from-Motion on photos -> training database."),
    "data": ("retrievalkit.cli.data", "group", "Datasets: generate the synthetic set, download benchmarks."),
    "train": ("retrievalkit.cli.train", "command", "Fine-tune a model on an SfM training database."),
    "ablate": ("retrievalkit.cli.ablate", "command", "Run a grid of component/option ablations."),
    "report": ("retrievalkit.cli.report", "command", "Write an HTML report of an evaluation or ablation."),
}


_show_python_warning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """rkit's own warnings read as ``Warning: ...`` (no file and line of the code that warned)."""
    if issubclass(category, RkitWarning):
        click.echo(f"Warning: {message}", err=True)
    else:
        _show_python_warning(message, category, filename, lineno, file, line)


warnings.showwarning = _show_warning


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        module = COMMANDS[name][0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not self._available(name):
            return None
        module_name, attr, _ = COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a missing or broken dependency of this one command
            raise RkitError(f"`rkit {name}` cannot start: {type(exc).__name__}: {exc}. Install the package "
                            f"that provides it, or reinstall retrievalkit; the other commands are not "
                            f"affected") from exc
        # Every command takes --config FILE (TOML defaults, overridden by flags): retrievalkit.config
        return add_config_option(getattr(module, attr))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="retrievalkit")
def cli() -> None:
    """retrievalkit: instance-level image retrieval from plugins.

    Components (backbones, poolings, whitenings, miners, losses) are chosen by name, with
    options written NAME:OPTION=VALUE[:OPTION=VALUE], e.g. --pooling spoc:center_prior=false.
    Any command's options can come from a TOML file: rkit --config FILE CMD (see docs/ablations.md).
    """


cli.params.insert(0, config_option())  # rkit --config FILE CMD: tables [CMD] for each command


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point: run the CLI, turning user errors into clear messages.

    SIGTERM is made to behave like Ctrl-C first. With ``standalone_mode=False`` click hands
    errors back here instead of printing them itself (it turns ``KeyboardInterrupt`` into
    ``Abort``): an :class:`Interrupted` prints what was kept and how to resume, any other
    interruption a generic line; both exit with status 130.
    """
    install_sigterm_handler()
    remember_command_line(sys.argv[1:] if argv is None else argv)
    try:
        return cli.main(args=argv, prog_name="rkit", standalone_mode=False)
    except Interrupted as exc:
        click.echo(exc.message(), err=True)
        sys.exit(Interrupted.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo(INTERRUPTED_MESSAGE, err=True)
        sys.exit(Interrupted.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except RkitError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # the system refused a read or write: not a bug of the toolkit
        click.echo(f"Error: {os_error_message(exc)}", err=True)
        sys.exit(2)


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: the file(s), what the system said, what to check."""
    files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    what = exc.strerror or str(exc)
    return (f"{files}: {what}" if files else what) + (
        ". Check the path, its permissions and the free disk space, then run the command again.")
