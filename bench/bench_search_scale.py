"""Search at scale: flat vs IVF-PQ (+OPQ) with exact re-ranking over a memory-mapped store.

``--n`` clustered unit vectors of dimension ``--dim`` (``--clusters`` random centres, like real
descriptors they are not uniform on the sphere) are generated chunk by chunk into a descriptor
store (:mod:`retrievalkit.store`: memory-mapped ``.npy`` shards), never whole in memory;
``--queries`` perturbed database vectors are the queries. Everything else is the project's own
code: :class:`retrievalkit.searchindex.SearchIndex` builds (training the quantisers on a
``--train-size`` sample), saves, reloads and searches; the exact top-10 of the flat index is the
ground truth of recall@10. Each configuration's search runs in a fresh child process that loads
the saved index, so its peak memory (ru_maxrss) is that of serving the index alone.

    nice -n 10 python bench/bench_search_scale.py --n 1000000 --work /tmp/rkit-bench-scale \\
        --out /tmp/search-scale.md

The faiss ``IndexRefineFlat`` row re-ranks the same shortlist from a float copy held in RAM
inside the index, for comparison with our pass over the memory map.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def generate(folder: Path, n: int, dim: int, clusters: int, spread: float, seed: int, chunk: int = 100_000) -> None:
    """Write the clustered vectors as store shards of ``chunk`` rows (skipped when already there)."""
    from retrievalkit.store import ShardWriter, open_descriptors

    if (folder / "store.json").is_file() and open_descriptors(folder).count == n:
        return
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    writer = ShardWriter(folder, dim=dim)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, clusters, size=m)] + spread * rng.normal(size=(m, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        writer.append(x, [f"img/{i:09d}.jpg" for i in range(start, start + m)])


def make_queries(store_dir: Path, count: int, spread: float, seed: int) -> np.ndarray:
    from retrievalkit.store import open_descriptors

    source = open_descriptors(store_dir)
    rng = np.random.default_rng(seed + 1)
    q = source.rows(np.sort(rng.choice(source.count, count, replace=False)))
    q = q + 0.3 * spread * rng.normal(size=q.shape).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def child(args: argparse.Namespace) -> None:
    """Load a saved index, search the queries, print JSON (time per query, peak memory)."""
    import faiss

    from retrievalkit.searchindex import SearchIndex

    faiss.omp_set_num_threads(args.threads)
    queries = np.load(args.queries_file)
    started = time.perf_counter()
    index = SearchIndex.load(args.child)
    load_s = time.perf_counter() - started
    kwargs = json.loads(args.search_kwargs)
    scores, ids, seconds = timed_search(index, queries, args.k, kwargs)
    np.save(args.ids_file, ids)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    mb = lambda key: int(status.get(key, "0 kB").split()[0]) / 1024  # noqa: E731
    print(json.dumps({"load_s": load_s, "cold_ms": 1000 * seconds / len(queries),
                      "peak_mb": mb("VmHWM"), "anon_mb": mb("RssAnon"), "file_mb": mb("RssFile")}))


def timed_search(index, queries: np.ndarray, k: int, kwargs: dict):
    if kwargs.get("refine_flat"):
        return refine_flat_search(index, queries, k, **kwargs)
    started = time.perf_counter()
    scores, ids = index.search(queries, k, **kwargs)
    return scores, ids, time.perf_counter() - started


def refine_flat_search(index, queries: np.ndarray, k: int, nprobe: int, rerank_k: int, refine_flat: bool):
    """faiss' own exact re-ranking: IndexRefineFlat holding a float copy of the database."""
    import faiss

    from retrievalkit.index import ivf_of

    ivf_of(index._shard(0)).nprobe = nprobe
    if not hasattr(index, "_refine"):          # the float copy is made once, outside the timing
        base = index._shard(0)
        floats = np.ascontiguousarray(index.source.matrix())
        index._refine = faiss.IndexRefineFlat(base, faiss.swig_ptr(floats))
        index._refine.k_factor = rerank_k / k
        del floats
    refine = index._refine
    refine.k_factor = rerank_k / k
    started = time.perf_counter()
    scores, ids = refine.search(queries, k)
    return scores, ids, time.perf_counter() - started


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth)])) / truth.shape[1]


def run_child(args, index_dir: Path, work: Path, **search_kwargs) -> tuple[dict, np.ndarray]:
    ids_file = work / "ids.npy"
    command = [sys.executable, __file__, "--child", str(index_dir), "--queries-file", str(work / "queries.npy"),
               "--ids-file", str(ids_file), "--k", str(args.k), "--threads", str(args.threads),
               "--search-kwargs", json.dumps(search_kwargs)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), np.load(ids_file)


def build(args, store: Path, work: Path, name: str, shards: int = 1, **params) -> tuple[Path, float, float]:
    from retrievalkit.searchindex import IndexParams, SearchIndex

    folder = work / name
    if (folder / "index.json").is_file() and not args.rebuild:     # built by an earlier run
        manifest = json.loads((folder / "index.json").read_text())
        wanted = {k: v for k, v in params.items()}
        if all(manifest["params"].get(k) == v for k, v in wanted.items()) and len(manifest["shards"]) == shards:
            size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 2 ** 20
            return folder, sum(manifest["seconds"].values()), size_mb
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = SearchIndex.build(store, IndexParams(train_size=args.train_size, **params), shards=shards)
    seconds = time.perf_counter() - started
    index.save(folder)
    size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 2 ** 20
    return folder, seconds, size_mb


def describe(kwargs: dict) -> str:
    if not kwargs:
        return "-"
    nprobe, rerank_k = kwargs["nprobe"] or "default (16)", kwargs["rerank_k"]
    how = f"nprobe {nprobe}, " + (f"re-rank {rerank_k}" if rerank_k else
                                  "re-rank default (400)" if rerank_k is None else "no re-rank")
    return how + (" (faiss IndexRefineFlat)" if kwargs.get("refine_flat") else "")


def interleaved_timings(args, work: Path, configs: list) -> list[float]:
    """ms per query of each configuration: the fastest of ``--rounds`` rounds over all of them."""
    from retrievalkit.searchindex import SearchIndex

    queries = np.load(work / "queries.npy")[: args.timing_queries]
    loaded = {}
    for _, (folder, _, _), _ in configs:
        loaded.setdefault(folder, SearchIndex.load(folder))
    best = [float("inf")] * len(configs)
    for _ in range(args.rounds):
        for i, (_, (folder, _, _), kwargs) in enumerate(configs):
            _, _, seconds = timed_search(loaded[folder], queries, args.k, kwargs)
            best[i] = min(best[i], 1000 * seconds / len(queries))
    return best


def full_plan(nlist: int) -> list:
    """(label, folder, index parameters, shards, searches): the 1M comparison of every option."""
    small, large = nlist, 4 * nlist
    return [
        (f"ivfpq, nlist {small}", "ivfpq", dict(pq_m=16, nlist=small), 1,
         [dict(nprobe=16, rerank_k=0), dict(nprobe=16, rerank_k=400)]),
        (f"ivfpq+opq, nlist {small}", "ivfpq+opq", dict(pq_m=16, nlist=small, opq=True), 1,
         [dict(nprobe=16, rerank_k=400)]),
        (f"ivfpq 8 B, nlist {small}", "ivfpq_8_B", dict(pq_m=8, nlist=small), 1, [dict(nprobe=16, rerank_k=800)]),
        (f"ivfpq, nlist {large}", "ivfpq_nlist_4x", dict(pq_m=16, nlist=large), 1,
         [dict(nprobe=8, rerank_k=0), dict(nprobe=8, rerank_k=100), dict(nprobe=8, rerank_k=200),
          dict(nprobe=8, rerank_k=200, refine_flat=True), dict(nprobe=16, rerank_k=400)]),
        (f"ivfpq, nlist {large}, 4 shards", "ivfpq_nlist_4x_4_shards", dict(pq_m=16, nlist=large), 4,
         [dict(nprobe=8, rerank_k=50)]),
    ]


def scale_plan(nlist: int) -> list:
    """One IVF-PQ index (16-byte codes), searched with growing probes and shortlists, and the same
    in 4 shards, each re-ranking a quarter of the shortlist (10M and up)."""
    return [(f"ivfpq, nlist {nlist}", f"ivfpq_nlist_{nlist}", dict(pq_m=16, nlist=nlist), 1,
             [dict(nprobe=8, rerank_k=0)] + [dict(nprobe=8, rerank_k=r) for r in (200, 500, 1000)]
             + [dict(nprobe=16, rerank_k=r) for r in (500, 1000, 2000)]),
            (f"ivfpq, nlist {nlist}, 4 shards", f"ivfpq_nlist_{nlist}_4_shards", dict(pq_m=16, nlist=nlist), 4,
             [dict(nprobe=8, rerank_k=250)])]


def defaults_plan(nlist: int) -> list:
    """What `rkit index build --index ivfpq` gives with no other option (nlist about 4 sqrt(N), pq_m
    from the dimension, nprobe 16, a shortlist of 400), and with a longer shortlist."""
    return [("ivfpq, defaults", "ivfpq_defaults", {}, 1,
             [dict(nprobe=None, rerank_k=None), dict(nprobe=None, rerank_k=1000)])]


PLANS = {"full": full_plan, "scale": scale_plan, "defaults": defaults_plan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=0.4)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--train-size", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1, help="faiss threads while searching.")
    parser.add_argument("--build-threads", type=int, default=0,
                        help="faiss threads while building (default: as --threads).")
    parser.add_argument("--plan", choices=sorted(PLANS), default="full",
                        help="full: every option at one size; scale: one IVF-PQ index, several shortlists; defaults: "
                             "the library's default IVF-PQ (--nlist unused).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rkit-bench-scale"))
    parser.add_argument("--out", type=Path, default=None, help="Also write the Markdown table here.")
    parser.add_argument("--rebuild", action="store_true", help="Rebuild indexes saved by an earlier run in --work.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved timing rounds (the fastest counts).")
    parser.add_argument("--timing-queries", type=int, default=1000)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ids-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--search-kwargs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    work = args.work / f"n{args.n}-d{args.dim}"
    store = work / "store"
    started = time.perf_counter()
    generate(store, args.n, args.dim, args.clusters, args.spread, args.seed)
    gen_s = time.perf_counter() - started
    np.save(work / "queries.npy", make_queries(store, args.queries, args.spread, args.seed))
    store_mb = sum(f.stat().st_size for f in store.iterdir()) / 2 ** 20
    faiss.omp_set_num_threads(args.build_threads or args.threads)
    configs = [("flat (exact)", build(args, store, work, "flat", kind="flat"), {})]
    for name, folder_name, params, shards, searches in PLANS[args.plan](args.nlist):
        built = build(args, store, work, folder_name, shards=shards, kind="ivfpq", **params)
        configs += [(name, built, kwargs) for kwargs in searches]
    faiss.omp_set_num_threads(args.threads)
    measured = [run_child(args, folder, work, **kwargs) for _, (folder, _, _), kwargs in configs]
    truth = measured[0][1]
    best = interleaved_timings(args, work, configs)
    lines = [f"N = {args.n:,} x {args.dim}-D float32 (store: {store_mb:.0f} MB on disk, generated in {gen_s:.0f} s), "
             f"{args.queries} queries (recall), {args.timing_queries} of them timed in {args.rounds} interleaved "
             f"rounds (fastest round counts), k = {args.k}, nlist = {args.nlist}, quantisers trained on "
             f"{args.train_size:,} rows, faiss on {args.threads} thread(s) searching, "
             f"{args.build_threads or args.threads} building, plan {args.plan!r}.", "",
             "| index | search | build s | index MB | ms / query | speed-up vs flat | recall@10 | "
             "first pass ms / query | peak RSS MB | private MB | file-backed MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    shown_build = set()
    for (name, (folder, seconds, size_mb), kwargs), (child_numbers, ids), ms in zip(configs, measured, best):
        build_text = "" if folder in shown_build else f"{seconds:.0f}"
        shown_build.add(folder)
        lines.append(f"| {name} | {describe(kwargs)} | {build_text} | {size_mb:.0f} | {ms:.2f} | {best[0] / ms:.0f}x | "
                     f"{recall(ids, truth):.3f} | {child_numbers['cold_ms']:.2f} | {child_numbers['peak_mb']:.0f} | "
                     f"{child_numbers['anon_mb']:.0f} | {child_numbers['file_mb']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
