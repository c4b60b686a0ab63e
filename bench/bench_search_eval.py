"""Speed and recall of the faiss indexes of ``rkit search``, and speed of the evaluation.

Synthetic descriptors: ``--n`` unit vectors of dimension ``--dim`` drawn around ``--clusters``
random centres (so that, like real descriptors, they are not uniform on the sphere), and
``--queries`` perturbed copies of database vectors. The exact top-10 of the flat index is the
ground truth for the recall of the approximate ones.

    nice -n 10 python bench/bench_search_eval.py --n 100000 --dim 128 --threads 1

Prints a Markdown table (build seconds, milliseconds per query, recall@10) and the time of
:func:`retrievalkit.evaluate.evaluate_folder_collection` on ``--eval-n`` images.
"""

from __future__ import annotations

import argparse
import time
import warnings

import faiss
import numpy as np

from retrievalkit.evaluate import evaluate_folder_collection
from retrievalkit.index import build_index, default_nlist, search


def clustered_unit_vectors(n: int, dim: int, clusters: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, size=n)] + spread * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.mean(hits)) / truth.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=0.6)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    database = clustered_unit_vectors(args.n, args.dim, args.clusters, args.spread, rng)
    picks = rng.integers(0, args.n, size=args.queries)
    queries = database[picks] + 0.3 * args.spread * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    nlist = default_nlist(args.n)
    print(f"N={args.n} D={args.dim} queries={args.queries} k={args.k} threads={args.threads} "
          f"(default nlist={nlist})\n")
    print("| index | options | build s | ms / query | recall@10 | bytes / vector |")
    print("|---|---|---|---|---|---|")
    truth = None
    configs = [("flat", {}), ("ivf", {"nprobe": 1}), ("ivf", {"nprobe": 8}), ("ivf", {"nprobe": 32}),
               ("ivfpq", {"pq_m": 8, "nprobe": 8}), ("ivfpq", {"pq_m": 16, "nprobe": 8}),
               ("ivfpq", {"pq_m": 16, "nprobe": 32})]
    built: dict[tuple, faiss.Index] = {}
    build_seconds: dict[tuple, float] = {}
    for kind, options in configs:
        key = (kind, options.get("pq_m"))
        if key not in built:
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                built[key] = build_index(database, kind, **{k: v for k, v in options.items() if k != "nprobe"})
            build_seconds[key] = time.perf_counter() - started
        index = built[key]
        started = time.perf_counter()
        _, ids = search(index, queries, args.k, nprobe=options.get("nprobe"))
        per_query = 1000 * (time.perf_counter() - started) / args.queries
        if truth is None:
            truth = ids
        size = args.dim * 4 if kind in ("flat", "ivf") else options["pq_m"]
        described = ", ".join(f"{k}={v}" for k, v in options.items()) or "exact"
        print(f"| {kind} | {described} | {build_seconds[key]:.2f} | {per_query:.3f} | "
              f"{recall_at(ids, truth):.3f} | {size} |")

    n = args.eval_n
    labels = rng.integers(0, max(2, n // 20), size=n)
    descriptors = clustered_unit_vectors(n, args.dim, max(2, n // 20), args.spread, rng)
    started = time.perf_counter()
    result = evaluate_folder_collection(descriptors, labels.tolist())
    print(f"\nevaluate_folder_collection: {n} images x {n - 1} ranked, D={args.dim}: "
          f"{time.perf_counter() - started:.2f} s (mAP {result.map:.3f} on random labels)")


if __name__ == "__main__":
    main()
