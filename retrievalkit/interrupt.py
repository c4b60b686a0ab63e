"""SIGTERM is handled like Ctrl-C.

Schedulers (Slurm, Kubernetes), ``docker stop`` and torchrun stop a job with SIGTERM. Python's
default is to die at once, losing the work since the last checkpoint; Ctrl-C instead raises
``KeyboardInterrupt``, which every long command already turns into "save state, say how to
resume" (see :class:`retrievalkit.errors.Interrupted`). :func:`install_sigterm_handler` makes
SIGTERM take the same path. ``rkit`` (``retrievalkit.cli.main``, also ``python -m
retrievalkit``) installs it before running any command.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


def install_sigterm_handler() -> bool:
    """Make SIGTERM raise ``KeyboardInterrupt`` in the main thread, like Ctrl-C.

    Idempotent. Python only lets the main thread set signal handlers: called from another
    thread (or where SIGTERM does not exist) it does nothing and returns False. A handler the
    application installed itself (anything but the default) is left in place. Returns True
    when SIGTERM now raises ``KeyboardInterrupt``.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _raise_keyboard_interrupt:
        return True
    if current not in (signal.SIG_DFL, None):
        return False
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    return True


def uninstall_sigterm_handler() -> None:
    """Restore the default SIGTERM behaviour if :func:`install_sigterm_handler` changed it."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is _raise_keyboard_interrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


#: the arguments ``rkit`` was started with (recorded by ``retrievalkit.cli.main``)
_command_line: list[str] | None = None


def remember_command_line(args: list[str]) -> None:
    """Record the arguments of this ``rkit`` run, for :func:`rerun_command`."""
    global _command_line
    _command_line = [str(a) for a in args]


def rerun_command(prog: str = "rkit") -> str:
    """The shell command that runs this ``rkit`` invocation again (the resume command).

    Empty when no command line was recorded (the library used from Python).
    """
    import shlex

    return f"{prog} {shlex.join(_command_line)}" if _command_line is not None else ""
