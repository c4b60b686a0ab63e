"""Benchmark ``rkit sfm`` on a folder-per-landmark photo collection (default: ../shared/data/landmarks).

Runs (or resumes) :func:`retrievalkit.sfm.run_sfm` and checks the result against the folders:
how many images each landmark gets registered, whether any 3D model mixes two landmark folders,
and the wall time of every stage. Prints a Markdown summary and writes it as JSON
(``bench_summary.json``) into the output folder.

    nice -n 10 python bench/bench_sfm.py --out runs/landmarks_sfm --pairs retrieval --k 20 --threads 2
    python bench/bench_sfm.py --out runs/landmarks_sfm --summary-only   # re-read a finished run

A run whose stages are all finished is only re-read (stage markers), so ``--summary-only`` is
just a guard against starting work by mistake.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from retrievalkit.atomic import write_text_atomic
from retrievalkit.sfm import SfmOptions, run_sfm
from retrievalkit.trainingdb import load_database

DEFAULT_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "landmarks"


def landmark_summary(out_dir: Path) -> dict:
    """Per-landmark registration, model purity and stage timings of a finished run."""
    report = json.loads((out_dir / "report.json").read_text())
    db = load_database(out_dir)
    folder_of = lambda name: name.split("/", 1)[0]  # noqa: E731
    total = collections.Counter(folder_of(n) for n in db.images + report["unregistered"]
                                + [u[0] for u in report["unreadable"]])
    registered = collections.Counter(folder_of(n) for n in db.images)
    models = []
    for cluster in range(db.num_clusters):
        folders = collections.Counter(folder_of(db.images[i]) for i in db.cluster_members(cluster))
        models.append(dict(folders))
    mixed = [m for m in models if len(m) > 1]
    return {
        "registered": len(db.images),
        "images": report["images"],
        "models": len(models),
        "mixed_models": mixed,
        "per_landmark": {f: f"{registered.get(f, 0)}/{total[f]}" for f in sorted(total)},
        "model_folders": models,
        "seconds": report["seconds"],
        "pairs_mode": report["pairs_mode"],
        "num_pairs": json.loads((out_dir / "stages" / "pairs.json").read_text()).get("num_pairs"),
        "verified_pairs": json.loads((out_dir / "stages" / "matches.json").read_text()).get("verified_pairs"),
        "co_observing_pairs": len(db.pair_cache) if db.pair_cache is not None else None,
        "options": report["options"],
    }


def markdown(summary: dict) -> str:
    s = summary["seconds"]
    lines = [
        f"- pairs: {summary['pairs_mode']} ({summary['num_pairs']} pairs, {summary['verified_pairs']} verified)",
        f"- registered {summary['registered']}/{summary['images']} in {summary['models']} models; "
        f"models mixing landmarks: {len(summary['mixed_models'])}",
        "- per landmark: " + ", ".join(f"{k} {v}" for k, v in summary["per_landmark"].items()),
        "- seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in s.items()) + f" (total {sum(s.values()):.0f})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--pairs", default="auto")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--min-model-size", type=int, default=3)
    parser.add_argument("--init-min-tri-angle", type=float, default=16.0)
    parser.add_argument("--init-max-forward-motion", type=float, default=0.95)
    parser.add_argument("--abs-pose-min-inliers", type=int, default=30)
    parser.add_argument("--one-mapper-run", action="store_true",
                        help="one COLMAP mapper run over all images instead of one per match-graph group")
    parser.add_argument("--threads", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.summary_only:
        if not args.images.is_dir():
            print(f"skipped: no photos at {args.images}", file=sys.stderr)
            return 0
        options = SfmOptions(image_size=args.image_size, pairs=args.pairs, k=args.k,
                             min_model_size=args.min_model_size, init_min_tri_angle=args.init_min_tri_angle,
                             init_max_forward_motion=args.init_max_forward_motion,
                             abs_pose_min_num_inliers=args.abs_pose_min_inliers,
                             split_components=not args.one_mapper_run,
                             num_threads=args.threads, seed=args.seed)
        run_sfm(args.images, args.out, options)
    summary = landmark_summary(args.out)
    write_text_atomic(args.out / "bench_summary.json", json.dumps(summary, indent=1) + "\n")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
