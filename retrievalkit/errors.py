"""User-facing errors.

Everything the toolkit raises for a mistake the user can fix is a :class:`RkitError`. The CLI
prints its message (no traceback) and exits with status 2, so every message must say what was
wrong *and* what to do about it.
"""

from __future__ import annotations


class RkitError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""


class RkitWarning(UserWarning):
    """Something the user should know that does not stop the command; ``rkit`` prints ``Warning: ...``."""


class UnknownComponentError(RkitError):
    """A component name that no installed plugin provides."""


class ComponentOptionError(RkitError):
    """An option of a component that does not exist or has a value of the wrong type."""


class PluginError(RkitError):
    """A plugin that cannot be loaded: bad hook implementation, name clash, import error."""


class OutputPathError(RkitError):
    """An output path that would destroy an input or a folder the toolkit did not create."""


class DiskFullError(RkitError):
    """No space left (or quota exceeded) while writing an output; the old output is intact."""


class Interrupted(RkitError):
    """A long command stopped by Ctrl-C or SIGTERM after saving what it could.

    ``kept`` says what was saved (e.g. "412 of 1000 descriptors in out.partial.npz"), ``resume``
    is the command line that continues the work. Long commands catch ``KeyboardInterrupt`` once
    their state is on disk and raise this instead; ``rkit`` prints both and exits with status 130.
    """

    exit_code = 130

    def __init__(self, kept: str | None = None, resume: str | None = None) -> None:
        self.kept = kept
        self.resume = resume
        super().__init__(self.message())

    def message(self) -> str:
        """The text the CLI prints: what was kept and how to resume."""
        head = f"Interrupted: kept {self.kept}." if self.kept else "Interrupted."
        return head + (f"\nResume with: {self.resume}" if self.resume else "")

    def __reduce__(self):  # keep kept/resume through pickling (multiprocessing)
        return (type(self), (self.kept, self.resume))
