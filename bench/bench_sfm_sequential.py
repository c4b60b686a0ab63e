"""Registration of an ordered photo sequence with retrieval pairs vs retrieval + sequential pairs.

Runs the project's own command, ``rkit sfm FOLDER --pairs ...``, on one folder (default: the
forward-moving Lund street sequence of the shared landmarks, 29 photos) and prints a markdown
table of registered images per configuration and mapper seed.

To compare the pair sets and nothing else, every configuration starts from a copy of one base
run that matched the union of all pairs tried (retrieval with the largest k + sequential with
the largest overlap): the ``pairs`` stage of the copy keeps the verified matches of the pairs it
still chooses and drops the others, so each configuration maps exactly the same two-view
geometries for the pairs they share, and only the pair set and the mapper seed differ. (Fresh
runs also differ by RANSAC in the verification; see docs/bench-sections/04-sfm.md.)

    python bench/bench_sfm_sequential.py --out runs/bench-lund-pairs --k 5 10 20 --overlap 3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

LUND = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "landmarks" / "lund"


def rkit_sfm(images: Path, out: Path, pairs: list[str], k: int, seed: int, threads: int) -> dict:
    command = ["rkit", "sfm", str(images), "--out", str(out), "-k", str(k), "--seed", str(seed),
               "--threads", str(threads)]
    for source in pairs:
        command += ["--pairs", source]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = json.loads((out / "report.json").read_text())
    report["wall"] = time.perf_counter() - started
    report["command"] = " ".join(command)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=LUND)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sequential = f"sequential:overlap={args.overlap}"
    base = args.out / "base"
    print(f"base run (union of the pairs: retrieval k={max(args.k)} + {sequential}) -> {base}", file=sys.stderr)
    first = rkit_sfm(args.images, base, ["retrieval", sequential], max(args.k), args.seeds[0], args.threads)
    print(f"  {first['wall']:.0f} s: {first['seconds']}", file=sys.stderr)
    rows = []
    for k in args.k:
        for pairs in (["retrieval"], ["retrieval", sequential]):
            registered = []
            source = base  # the first seed starts from the base run, the next ones from its pairs
            for seed in args.seeds:
                out = args.out / f"k{k}-{'+'.join(pairs).replace(':', '_')}-seed{seed}"
                if not (out / "report.json").is_file():
                    shutil.rmtree(out, ignore_errors=True)
                    shutil.copytree(source, out)
                source = out
                report = rkit_sfm(args.images, out, pairs, k, seed, args.threads)
                num_pairs = json.loads((out / "stages" / "pairs.json").read_text())["num_pairs"]
                registered.append(report["registered"])
                print(f"  k={k} {'+'.join(pairs)} seed {seed}: {report['registered']}/{report['images']} "
                      f"in models {report['models']}, {num_pairs} pairs, {report['wall']:.0f} s", file=sys.stderr)
            rows.append((k, " + ".join(pairs), num_pairs, registered, report["images"]))
    print(f"| pairs | k | pairs matched | registered (seeds {', '.join(map(str, args.seeds))}) |")
    print("|---|---:|---:|---|")
    for k, pairs, num_pairs, registered, images in rows:
        print(f"| {pairs} | {k} | {num_pairs} | {', '.join(f'{r}/{images}' for r in registered)} |")


if __name__ == "__main__":
    main()
