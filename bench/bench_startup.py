"""Start-up benchmark: how long ``rkit`` takes to answer, and how much memory it needs.

Runs each command ``--repeats`` times, every time in a fresh process, and reports the median
wall time and the median peak resident memory (``ru_maxrss`` of that process, from ``wait4``):

* ``rkit --help``, ``python -m retrievalkit --help`` and ``rkit CMD --help`` for every command;
* ``rkit plugins`` with an empty listing cache (cold: every plugin is imported) and with a
  warm one, and ``rkit plugins --options``;
* an option error (``rkit extract DIR --pooling bogus``), warm cache;
* ``rkit whiten fit`` on 200 random 64-D descriptors (PCA), to show that a command's own
  timing is the work, not plugin start-up.

Every command runs with ``RKIT_CACHE`` in a temporary folder (cold runs get a new empty one each
time), from a temporary working folder. ``--baseline-source DIR`` runs the same commands with
another version of the code (a folder holding its ``retrievalkit/`` and ``plugins/``, run with
this interpreter through ``PYTHONPATH``), interleaved with this one, so the two columns are
measured under the same load and their ratio is meaningful even on a busy machine:

    git archive f0abd72 retrievalkit plugins | (mkdir -p /tmp/rkit-before && tar -x -C /tmp/rkit-before)
    nice -n 10 python bench/bench_startup.py --repeats 3 --baseline-source /tmp/rkit-before \\
        --out /tmp/startup-table.md

(``f0abd72`` is main just before the start-up change.) ``--baseline RKIT`` takes an ``rkit``
executable instead (its ``python -m retrievalkit`` row uses the ``python`` beside it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: command name -> sub-command path whose --help is measured
HELP_COMMANDS = ["plugins", "extract", "search", "eval", "whiten", "whiten fit", "whiten apply", "sfm", "data",
                 "data synth", "train", "ablate", "report"]


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit status) of one fresh process."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, process.returncode


def cases(rkit: str, python: str, work: Path) -> list[tuple[str, list[str], bool]]:
    """(label, argv, cold cache?) for every measured command."""
    images = work / "no-images"
    images.mkdir(exist_ok=True)
    out = [("rkit --help", [rkit, "--help"], False),
           ("python -m retrievalkit --help", [python, "-m", "retrievalkit", "--help"], False)]
    out += [(f"rkit {name} --help", [rkit, *name.split(), "--help"], False) for name in HELP_COMMANDS]
    out += [("rkit plugins (cold cache)", [rkit, "plugins"], True),
            ("rkit plugins (warm cache)", [rkit, "plugins"], False),
            ("rkit plugins --options (warm)", [rkit, "plugins", "--options"], False),
            ("rkit extract DIR --pooling bogus (warm)", [rkit, "extract", str(images), "--pooling", "bogus"], False),
            ("rkit whiten fit (200 x 64-D, pca; warm)",
             [rkit, "whiten", "fit", str(work / "d.npz"), "--whiten", "pca", "--out", str(work / "w.npz")], False)]
    return out


def write_descriptors(path: Path) -> None:
    from retrievalkit.descriptors import DescriptorSet

    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 64)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    DescriptorSet(data, [f"c{i % 5}/{i}.jpg" for i in range(200)]).save(path)


def measure(tools: dict[str, tuple[str, str]], repeats: int, work: Path) -> dict[str, dict[str, list]]:
    """Median (wall, RSS, status) per tool and case; tools run interleaved, case by case."""
    results: dict[str, dict[str, list]] = {name: {} for name in tools}
    warm = {name: work / f"cache-{i}" for i, name in enumerate(tools)}
    for name, (rkit, _) in tools.items():  # fill each tool's warm cache once
        subprocess.run([rkit, "plugins"], env={**os.environ, "RKIT_CACHE": str(warm[name])},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    labels = [label for label, _, _ in cases(*next(iter(tools.values())), work)]
    for index, label in enumerate(labels):
        for _ in range(repeats):
            for name, (rkit, python) in tools.items():
                _, argv, cold = cases(rkit, python, work)[index]
                cache = Path(tempfile.mkdtemp(dir=work)) if cold else warm[name]
                sample = run_once(argv, {**os.environ, "RKIT_CACHE": str(cache)})
                results[name].setdefault(label, []).append(sample)
                if cold:
                    shutil.rmtree(cache, ignore_errors=True)
        print(f"  {label}: " + ", ".join(
            f"{name} {statistics.median(s[0] for s in results[name][label]):.2f} s" for name in tools),
            file=sys.stderr)
    return results


def table(results: dict[str, dict[str, list]]) -> str:
    names = list(results)
    head = "| command | " + " | ".join(f"{n}: wall s | {n}: peak MB" for n in names) + " |"
    if len(names) == 2:
        head += f" speed-up ({names[0]} / {names[1]}) |"
    rows = [head, "|---|" + "---:|---:|" * len(names) + ("---:|" if len(names) == 2 else "")]
    for label in results[names[0]]:
        cells, walls = [], []
        for name in names:
            samples = results[name][label]
            wall = statistics.median(s[0] for s in samples)
            rss = statistics.median(s[1] for s in samples)
            failed = "" if all(s[2] in (0, 2) for s in samples) else " (failed)"
            cells += [f"{wall:.2f}{failed}", f"{rss:.0f}"]
            walls.append(wall)
        ratio = [f"{walls[0] / walls[1]:.1f}x"] if len(names) == 2 else []
        rows.append(f"| {label} | " + " | ".join(cells + ratio) + " |")
    return "\n".join(rows) + "\n"


def reported_fit_lines(tools: dict[str, tuple[str, str]], work: Path) -> str:
    """What ``rkit whiten fit`` itself reports as its time, next to the wall time of the process."""
    lines = []
    for index, (name, (rkit, _)) in enumerate(tools.items()):
        started = time.perf_counter()
        done = subprocess.run([rkit, "whiten", "fit", str(work / "d.npz"), "--whiten", "pca", "--out",
                               str(work / "w.npz")], capture_output=True, text=True,
                              env={**os.environ, "RKIT_CACHE": str(work / f"cache-{index}")}, check=False)
        wall = time.perf_counter() - started
        said = [ln for ln in (done.stdout + done.stderr).splitlines() if " s;" in ln or " s " in ln]
        lines.append(f"- {name}: process {wall:.2f} s; the command said: `{said[-1] if said else ''}`")
    return "\n".join(lines) + "\n"


def baseline_wrappers(source: Path, work: Path) -> Path:
    """``rkit`` and ``python`` scripts running the code in ``source`` with this interpreter."""
    path = os.pathsep.join([str(source.resolve()), str((source / "plugins").resolve())])
    folder = work / "baseline-bin"
    folder.mkdir()
    run_rkit = "import sys; from retrievalkit.cli import main; sys.argv[0] = 'rkit'; sys.exit(main())"
    for name, tail in (("python", '"$@"'), ("rkit", f'-c "{run_rkit}" "$@"')):
        script = folder / name
        script.write_text(f'#!/bin/sh\nPYTHONPATH="{path}" exec "{sys.executable}" {tail}\n')
        script.chmod(0o755)
    return folder / "rkit"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per command and tool")
    parser.add_argument("--baseline", help="another rkit executable to measure side by side (e.g. before)")
    parser.add_argument("--baseline-source", type=Path,
                        help="a folder with another version's retrievalkit/ and plugins/ to measure side by side")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    here = Path(sys.executable).parent
    tools = {"this": (str(here / "rkit"), sys.executable)}
    with tempfile.TemporaryDirectory(prefix="rkit-bench-startup-") as tmp:
        work = Path(tmp)
        os.chdir(work)  # `python -m retrievalkit` must not pick up a checkout in the current folder
        baseline = baseline_wrappers(args.baseline_source, work) if args.baseline_source else args.baseline
        if baseline:
            tools = {"before": (str(baseline), str(Path(baseline).parent / "python")), **tools}
        write_descriptors(work / "d.npz")
        load = os.getloadavg()
        results = measure(tools, args.repeats, work)
        fit = reported_fit_lines(tools, work)
    text = (f"Median of {args.repeats} fresh processes per command; load average at start "
            f"{load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} on {os.cpu_count()} CPUs.\n\n" + table(results)
            + "\n`rkit whiten fit` (second run, warm cache), wall time of the process and the time it reports:\n\n"
            + fit)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
