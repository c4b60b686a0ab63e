"""``rkit index``: build, extend, inspect saved search indexes and merge sharded results.

A thin layer over :mod:`retrievalkit.searchindex` and :mod:`retrievalkit.store`; the layout and
the arithmetic for large databases are in ``docs/search.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

from ..errors import RkitError
from ..outputs import check_output_path, check_replaceable
from ..searchindex import MANIFEST, SearchIndex, check_descriptors, check_growable, merge_partials, read_manifest
from ..store import ShardStore, ShardWriter, open_descriptors
from .search import index_params_options, params_from, write_results


@click.group("index")
def group() -> None:
    """Saved search indexes: build once, add images, serve in shards.

    \b
    rkit index build photos.store --index ivfpq --opq --shards 4 --out photos.index
    rkit index add photos.index new.npz          (append to the store, index only the new rows)
    rkit search photos.store q.npz --load-index photos.index --use-shards 0,1 --format npz --out a.npz
    rkit index merge a.npz b.npz -k 10 --out hits.tsv
    """


@group.command("build")
@click.argument("descriptors", type=click.Path(exists=True, path_type=Path))
@index_params_options
@click.option("--rerank", "rerank_spec", default="none", show_default=True, metavar="SPEC",
              help="Database-side re-ranking to apply first, e.g. dba or dba:k=3:alpha=3 (the augmented "
                   "database is saved in the index; search it with --rerank dba or dba+aqe).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Index folder to write (atomically).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def build(descriptors: Path, index_kind: str, nlist: int | None, pq_m: int | None, opq: bool, nprobe: int | None,
          rerank_k: int | None, train_size: int, n_shards: int, rerank_spec: str, out: Path, progress: bool) -> None:
    """Train and fill an index over DESCRIPTORS (a .npz file or a store folder), streamed in blocks.

    With --rerank dba the whole matrix is read into memory for the augmentation."""
    from ..rerank import as_chain

    chain = as_chain(rerank_spec)
    if chain is not None and not chain.on_database:
        raise RkitError(f"--rerank {chain} only changes queries: give it to `rkit search` instead")
    check_output_path(out, [descriptors], folder=True)  # an existing index is replaced, nothing else
    check_replaceable(out, "index build", overwrite=True, recognise=lambda folder: (folder / MANIFEST).is_file())
    started = time.perf_counter()
    params = params_from(index_kind, nlist, pq_m, opq, nprobe, rerank_k, train_size)
    index = SearchIndex.build(open_descriptors(descriptors), params, shards=n_shards, progress=progress, rerank=chain,
                              cache_rerank=False)   # the augmented database is saved in the index
    index.save(out)
    seconds = index.manifest["seconds"]
    click.echo(f"built {index.describe()} in {time.perf_counter() - started:.1f} s (train {seconds['train']:.1f} s, "
               f"add {seconds['add']:.1f} s); wrote {out}")


@group.command("add")
@click.argument("index_dir", metavar="INDEX", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("new", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def add(index_dir: Path, new: tuple[Path, ...], progress: bool) -> None:
    """Add images to INDEX without rebuilding it.

    NEW descriptors (files or stores) are first appended to the index's store as new shards;
    then every row the store has beyond the index is indexed as a new index shard, with the
    quantisers trained at build time. Without NEW, only the rows the store already gained.
    """
    manifest = read_manifest(index_dir)
    check_growable(index_dir, manifest)
    location = Path(manifest["descriptors"]["location"])
    check_descriptors(index_dir, manifest, open_descriptors(location), prefix=True)   # before growing it
    if new:
        if not location.is_dir():
            raise RkitError(f"the index was built from the file {location}, which cannot grow: build it from a store "
                            f"(`rkit extract --format shards`) to add images")
        writer = ShardWriter(location)
        for path in new:
            source = open_descriptors(path)
            for start, block in source.blocks(block_rows=1_000_000):
                writer.append(block, source.paths_at(np.arange(start, start + len(block))))
            click.echo(f"appended {source.count} rows of {path} to the store {location}", err=True)
    index = SearchIndex(manifest, [None] * len(manifest["shards"]), ShardStore(location) if location.is_dir()
                        else open_descriptors(location), index_dir)
    added = index.add(progress=progress)
    click.echo(f"added {added} vectors: {index.describe()}")


@group.command("info")
@click.argument("index_dir", metavar="INDEX", type=click.Path(exists=True, path_type=Path))
def info(index_dir: Path) -> None:
    """Print an index's manifest: kind, parameters, descriptors and shards."""
    click.echo(json.dumps(read_manifest(index_dir), indent=2))


@group.command("merge")
@click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Results per query after the merge.")
@click.option("--descriptors", type=click.Path(exists=True, path_type=Path), default=None,
              help="The index's descriptors, for the image paths (default: where the index recorded them).")
@click.option("--format", "out_format", type=click.Choice(["tsv", "json"]), default="tsv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results here (atomically) instead of to standard output.")
def merge(parts: tuple[Path, ...], k: int, descriptors: Path | None, out_format: str, out: Path | None) -> None:
    """Merge PARTS (from `rkit search --use-shards ... --format npz`) into the exact top k."""
    if out is not None:
        check_output_path(out, [*parts, descriptors])
    scores, ids, names, meta = merge_partials(parts, k)
    source = open_descriptors(descriptors or meta["descriptors"])
    if source.count < meta.get("index_count", 0):
        raise RkitError(f"{source.location} holds {source.count} rows but the index had {meta['index_count']}: "
                        f"give the descriptors the index was built from with --descriptors")
    write_results(names, scores, ids, source, out_format, out,
                  {"database": str(source.location), "k": k, "index": "merged", "parts": [str(p) for p in parts]})
