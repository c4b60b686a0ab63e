"""Running ``rkit`` in-process from tests: one place for the call and the error-exit check."""

from __future__ import annotations

import pytest

from retrievalkit.cli import main


def run(*args) -> None:
    """``rkit ARGS`` in this process (arguments converted to strings)."""
    main([str(a) for a in args])


def run_error(capsys, *args) -> str:
    """``rkit ARGS`` must exit with status 2 and no traceback; returns its standard error."""
    with pytest.raises(SystemExit) as exit_info:
        run(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err
