"""Where the toolkit keeps what it can rebuild: one cache folder, ``$RKIT_CACHE``.

Downloaded weights and data, and the synthetic training set's SfM reconstruction, go under
:func:`cache_dir`: ``$RKIT_CACHE`` if that environment variable is set, else
``~/.cache/retrievalkit``. Deleting the folder loses nothing that cannot be made again.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the environment variable naming the cache folder
CACHE_ENV_VAR = "RKIT_CACHE"


def cache_dir() -> Path:
    """The cache folder: ``$RKIT_CACHE`` if set, else ``~/.cache/retrievalkit`` (not created here)."""
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "retrievalkit"
