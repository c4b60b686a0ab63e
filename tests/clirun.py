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


def torchrun(ranks: int) -> list[str]:
    """The start of a one-machine ``torchrun`` command line for tests: c10d rendezvous on
    127.0.0.1 port 0 (torch binds a free port itself, so no port is picked first and raced for),
    no restarts (a failing rank fails the test)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--max-restarts", "0"]
