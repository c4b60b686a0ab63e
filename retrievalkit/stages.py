"""A resumable pipeline of named stages: the one place that reads and writes stage markers.

A :class:`Stage` is a name and three functions of a shared context object:

``inputs(ctx)``  what the stage's result depends on (options, input fingerprints): a JSON-able
                 dict recorded in its marker;
``run(ctx)``     does the work, leaves its results on ``ctx`` and returns facts for the marker;
``reuse(ctx)``   loads the results of an earlier run onto ``ctx``; returns False when they are
                 missing or damaged (the stage is run again).

:func:`run_stages` runs them in order. A stage is skipped when its marker
``<folder>/<name>.json`` exists, records the same inputs, no earlier stage ran in this call, and
``reuse`` succeeds. Otherwise the markers of that stage and every later one are deleted first
(an interruption can never leave a later stage marked done on stale inputs), the stage runs, and
its marker (inputs, wall time, facts) is written atomically once it has finished.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from .atomic import write_text_atomic
from .errors import Interrupted

Ctx = TypeVar("Ctx")


@dataclasses.dataclass(frozen=True)
class Stage(Generic[Ctx]):
    """One step of a resumable pipeline (see the module docstring)."""

    name: str
    run: Callable[[Ctx], dict[str, Any] | None]
    inputs: Callable[[Ctx], dict[str, Any]] = lambda ctx: {}
    reuse: Callable[[Ctx], bool] = lambda ctx: True


@dataclasses.dataclass
class StagesDone:
    """What :func:`run_stages` did: seconds per stage (recorded ones for reused stages), the
    reused stages in order, the stages whose recorded inputs had changed."""

    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    reused: list[str] = dataclasses.field(default_factory=list)
    changed: list[str] = dataclasses.field(default_factory=list)


def read_marker(folder: Path, name: str) -> dict[str, Any] | None:
    """The marker of stage ``name`` in ``folder``, or None when absent or unreadable."""
    try:
        record = json.loads((folder / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def run_stages(stages: Sequence[Stage[Ctx]], ctx: Ctx, folder: Path, log: Callable[[str], None],
               stop_after: str | None = None, done: StagesDone | None = None) -> StagesDone:
    """Run (or reuse) ``stages`` in order up to ``stop_after``; markers in ``folder``.

    ``done`` (filled as the stages go, so a caller sees what happened before an error) is
    returned.
    """
    done = done if done is not None else StagesDone()
    rerun = False
    for index, stage in enumerate(stages):
        wanted = json.loads(json.dumps(stage.inputs(ctx)))
        record = read_marker(folder, stage.name)
        if record is not None and not rerun and record.get("options") != wanted:
            log(f"[{stage.name}] options changed since the last run: redoing it and later stages")
            done.changed.append(stage.name)
        elif record is not None and not rerun and stage.reuse(ctx):
            done.reused.append(stage.name)
            done.seconds[stage.name] = float(record.get("seconds", 0.0))
            log(f"[{stage.name}] done earlier ({done.seconds[stage.name]:.1f} s), reused")
            if stage.name == stop_after:
                break
            continue
        rerun = True
        for later in stages[index:]:
            (folder / f"{later.name}.json").unlink(missing_ok=True)
        started = time.perf_counter()
        try:
            facts = stage.run(ctx) or {}
        except KeyboardInterrupt:
            raise _interrupted(stages, index, folder) from None
        done.seconds[stage.name] = time.perf_counter() - started
        folder.mkdir(parents=True, exist_ok=True)
        record = {"stage": stage.name, "options": wanted, "seconds": round(done.seconds[stage.name], 2), **facts}
        write_text_atomic(folder / f"{stage.name}.json", json.dumps(record, indent=1) + "\n")
        log(f"[{stage.name}] {done.seconds[stage.name]:.1f} s")
        if stage.name == stop_after:
            break
    return done


def _interrupted(stages: Sequence[Stage[Ctx]], index: int, folder: Path) -> Interrupted:
    """Ctrl-C or SIGTERM in stage ``index``: the finished stages are kept, re-running resumes."""
    from .interrupt import rerun_command

    finished = [stage.name for stage in stages[:index] if (folder / f"{stage.name}.json").is_file()]
    again = rerun_command() or None
    if not finished:
        return Interrupted(kept=f"nothing ({stages[index].name} had not finished)", resume=again)
    resume = f"{again}   (reuses them; {stages[index].name} starts again)" if again else None
    return Interrupted(kept=f"the finished stages ({', '.join(finished)}) in {folder.parent}", resume=resume)


__all__ = ["Stage", "StagesDone", "run_stages", "read_marker"]
