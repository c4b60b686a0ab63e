"""N2 negative mining at the paper's scale: time and peak memory of three ways to the same negatives.

Synthetic L2-normalised descriptors (default 2,000 queries drawn from a 20,000-image pool,
1280-D as EfficientNet-Lite0 gives, 700 "3D models" of 5-60 images), N = 5 negatives from
distinct models per query:

* ``full-ranking``: the previous n2 (commit 2775992): faiss with k = pool size, then argsorts and
  ``np.unique`` over queries x pool (:func:`full_ranking`, kept here for the comparison);
* ``dense-topk``: one dense similarity matrix (numpy BLAS), the query's model masked, a top-k
  selection deep enough to be exact (N x the largest model), then one image per model;
* ``grown-k``: what ``n2`` does now (:func:`retrievalkit.mining.negatives_from_distinct_models`):
  an exact search through ``retrievalkit.index`` only as deep as needed, deeper for the few
  queries still short of N models.

Each method runs in its own process on the same data (written once to /tmp; peak RSS =
``ru_maxrss``, reported above the RSS once the descriptors are loaded) and must return the same negatives as ``grown-k``.

    python bench/bench_mining.py --out docs/bench-sections/07-mining.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


DATA = Path("/tmp/bench-mining-data.npz")


def make_data(queries: int, pool: int, dim: int, models: int, seed: int = 0) -> None:
    """Write the synthetic descriptors, models and queries to :data:`DATA`."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 61, size=models)
    clusters = np.repeat(np.arange(models), sizes)[:pool]
    clusters = np.concatenate([clusters, rng.integers(0, models, size=max(0, pool - len(clusters)))])
    centres = rng.standard_normal((models, dim), dtype=np.float32)
    vectors = centres[clusters] + 1.5 * rng.standard_normal((pool, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query_ids = np.sort(rng.choice(pool, size=queries, replace=False))
    np.savez(DATA, vectors=vectors, clusters=clusters, queries=query_ids)


def load_data():
    from retrievalkit.trainingdb import TrainingDatabase

    with np.load(DATA) as data:
        vectors, clusters, queries = data["vectors"], data["clusters"], data["queries"]
    db = TrainingDatabase(images=[f"{i}.jpg" for i in range(len(clusters))], clusters=clusters)
    return db, vectors, queries, np.arange(len(clusters))


def full_ranking(db, vectors, queries, pool, count):
    """The n2 of commit 2775992: rank the whole pool for every query, then one per model."""
    from retrievalkit.mining import first_per_model, ranked_negatives

    ranked = ranked_negatives(db, vectors, queries, pool, len(pool))
    return first_per_model(db, ranked, count)


def dense_topk(db, vectors, queries, pool, count):
    """A dense similarity matrix and a top-k selection deep enough to hold ``count`` models."""
    from retrievalkit.mining import first_per_model

    similarity = vectors[queries] @ vectors[pool].T
    similarity[db.clusters[queries][:, None] == db.clusters[pool][None, :]] = -np.inf
    depth = min(len(pool), count * int(np.bincount(db.clusters[pool]).max()))
    top = np.argpartition(-similarity, depth - 1, axis=1)[:, :depth]
    order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
    ranked = pool[np.take_along_axis(top, order, axis=1)]
    return first_per_model(db, ranked, count)


def grown_k(db, vectors, queries, pool, count):
    from retrievalkit.mining import negatives_from_distinct_models

    return negatives_from_distinct_models(db, vectors, queries, pool, count)[0]


METHODS = {"full-ranking": full_ranking, "dense-topk": dense_topk, "grown-k": grown_k}


def run_one(args: argparse.Namespace) -> None:
    db, vectors, queries, pool = load_data()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started, cpu_started = time.perf_counter(), time.process_time()
    chosen = METHODS[args.method](db, vectors, queries, pool, args.negatives)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.save(args.result, chosen)
    print(json.dumps({"method": args.method, "seconds": seconds, "cpu_seconds": cpu, "peak_mb_above_data": (peak - base) / 1024}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--pool", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--models", type=int, default=700)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--methods", default="grown-k,dense-topk,full-ranking")
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.method:
        run_one(args)
        return 0
    make_data(args.queries, args.pool, args.dim, args.models)
    rows, results = [], {}
    for method in args.methods.split(","):
        result = Path(f"/tmp/bench-mining-{method}.npy")
        command = [sys.executable, __file__, "--method", method, "--result", str(result),
                   f"--negatives={args.negatives}"]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        results[method] = np.load(result)
        rows.append(row)
        print(json.dumps(row), flush=True)
    reference = results.get("grown-k")
    for row in rows:
        row["same_negatives_as_grown_k"] = bool(reference is not None and np.array_equal(results[row["method"]], reference))
    print(f"\n{args.queries} queries x {args.pool} pool x {args.dim}-D, {args.models} models, N={args.negatives}\n")
    print("| method | wall s | CPU s | peak MB above the data | same negatives |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['seconds']:.2f} | {row['cpu_seconds']:.2f} | "
              f"{row['peak_mb_above_data']:.0f} | {row['same_negatives_as_grown_k']} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
