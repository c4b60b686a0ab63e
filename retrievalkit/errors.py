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
