"""A saved index over a store that is not in the page cache: what opening, searching and streaming read.

Runs after ``bench/bench_search_scale.py`` (its ``--work`` folder holds the store, the queries and
the ``ivfpq_nlist_N`` index). Before each measurement the page cache is emptied
(``/proc/sys/vm/drop_caches``: needs root; without it the script stops and says so). Each
measurement runs in a fresh process, with the store's memory maps advised as the toolkit does
(``advised``: rows gathered through a ``MADV_RANDOM`` map, blocks streamed through a default one)
or with the kernel's default advice everywhere (``default``, what the toolkit did before), and
reports seconds and MB read from disk (``/proc/self/io``).

    sudo python bench/bench_cold_store.py --work /work/bench10m/n10000000-d128 --index ivfpq_nlist_4096
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def megabytes_read() -> int:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["read_bytes"]) >> 20


def measure(args: argparse.Namespace) -> dict:
    """One cold measurement in this process: ``search`` (open + search) or ``stream`` (all blocks)."""
    import faiss

    from retrievalkit import store
    from retrievalkit.searchindex import SearchIndex

    faiss.omp_set_num_threads(1)
    if args.child_advice == "default":
        store._random_access = lambda array: array
    out: dict = {"advice": args.child_advice}
    started, before = time.perf_counter(), megabytes_read()
    if args.child_what == "stream":
        rows = sum(len(block) for _, block in store.open_descriptors(args.work / "store").blocks())
        out.update(rows=rows, stream_s=time.perf_counter() - started, stream_mb=megabytes_read() - before)
        return out
    index = SearchIndex.load(args.work / args.index)
    out.update(open_s=time.perf_counter() - started, open_mb=megabytes_read() - before)
    queries = np.load(args.work / "queries.npy")[: args.queries]
    started, before = time.perf_counter(), megabytes_read()
    index.search(queries, 10, nprobe=args.nprobe, rerank_k=args.rerank_k)
    out.update(ms_per_query=1000 * (time.perf_counter() - started) / len(queries),
               search_mb=megabytes_read() - before)
    return out


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as exc:
        sys.exit(f"cannot empty the page cache ({exc}): run this benchmark as root")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="bench_search_scale.py's n<N>-d<D> folder.")
    parser.add_argument("--index", default="ivfpq_nlist_4096")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--rerank-k", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child-advice", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-what", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_advice:
        return print(json.dumps(measure(args)))
    rows = []
    for what in ("search", "stream"):
        for _ in range(args.repeats):
            for advice in ("default", "advised"):      # side by side, alternating
                drop_page_cache()
                command = [sys.executable, __file__, *sys.argv[1:], "--child-advice", advice, "--child-what", what]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"cold page cache, {args.work}, index {args.index}, {args.queries} queries, nprobe {args.nprobe}, "
          f"re-rank {args.rerank_k}\n")
    print("| advice | open s | open MB read | ms / query (cold) | search MB read | stream all s | stream MB read |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for advice in ("default", "advised"):
        searched = [r for r in rows if r["advice"] == advice and "open_s" in r]
        streamed = [r for r in rows if r["advice"] == advice and "stream_s" in r]
        best = lambda key, group: min(r[key] for r in group)  # noqa: E731
        print(f"| {advice} | {best('open_s', searched):.2f} | {best('open_mb', searched)} | "
              f"{best('ms_per_query', searched):.1f} | {best('search_mb', searched)} | "
              f"{best('stream_s', streamed):.1f} | {best('stream_mb', streamed)} |")


if __name__ == "__main__":
    main()
