"""``rkit search``: the top-k database images for query descriptors or query images.

Parses options and calls the library: :mod:`retrievalkit.search` (results and their formats)
over :mod:`retrievalkit.searchindex` (faiss indexes, exact re-ranking, shards) and
:mod:`retrievalkit.rerank` (``--rerank``). Query images are described with the model
that made the database: the one recorded in the database file's meta, or ``--model`` /
``--backbone ...`` given here (see ``docs/evaluation.md``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..atomic import write_text_atomic
from ..config import write_resolved_config
from ..descriptors import DescriptorSet
from ..errors import RkitError
from ..index import INDEX_KINDS
from ..outputs import check_output_path
from ..search import FORMATS, SearchResults, format_results, load_queries
from ..searchindex import DEFAULT_RERANK_K, IndexParams, SearchIndex, save_partial
from ..store import DescriptorSource
from .options import ModelOptions, echo_warnings, extract_with_options, model_options


def _queries(specs: tuple[str, ...], database: DescriptorSource, options: ModelOptions,
             progress: bool) -> DescriptorSet:
    """The query descriptors: ``.npz`` files as they are, images extracted with the database's model."""
    from ..extract import list_images

    files = [spec for spec in specs if Path(spec).suffix.lower() == ".npz"]
    sets = [DescriptorSet.load(f) for f in files]          # read (and checked) before any extraction
    image_paths: list[str] = []
    for spec in specs:
        if spec not in files:
            root, paths = list_images(Path(spec))
            image_paths.extend(str(root / p) for p in paths)
    if not image_paths:
        return load_queries(sets, dim=database.dim)
    if not database.meta.get("model") and not ({"model", "backbone", "pooling"} & options.typed):
        raise RkitError("the database file does not say which model described it, so query images cannot be "
                        "described the same way: give --model DIR or --backbone/--pooling/--weights "
                        "(and --image-size, --scales, --whitening) as used for the database")
    options = ModelOptions.from_descriptor_meta(database.meta, base=options)
    result, _ = extract_with_options(options, image_paths, root=None, progress=progress, what="query images")
    return load_queries([*sets, DescriptorSet(result.descriptors, result.paths)], dim=database.dim)


def index_params_options(function):
    """The options that choose and tune an index (``rkit search`` and ``rkit index build``)."""
    options = [
        click.option("--index", "index_kind", type=click.Choice(INDEX_KINDS), default="flat", show_default=True,
                     help="flat: exact inner product; ivf / ivfpq: approximate, for large databases."),
        click.option("--nlist", type=click.IntRange(min=1), default=None,
                     help="IVF cells (default about 4 sqrt(N), at least 39 vectors per cell)."),
        click.option("--pq-m", type=click.IntRange(min=1), default=None,
                     help="ivfpq: bytes per vector (sub-quantisers); must divide the dimension."),
        click.option("--opq", is_flag=True, help="ivfpq: learn an OPQ rotation before product quantisation."),
        click.option("--nprobe", type=click.IntRange(min=1), default=None,
                     help="IVF cells visited per query (default min(nlist, 16)); more = slower, better recall."),
        click.option("--rerank-k", type=click.IntRange(min=0), default=None,
                     help=f"Shortlist per query re-ranked by the exact inner product, read from the memory-mapped "
                          f"descriptors (default for ivfpq: {DEFAULT_RERANK_K} up to 1M vectors, 0.4 sqrt(N) "
                          f"beyond; 0 = off)."),
        click.option("--train-size", type=click.IntRange(min=1), default=IndexParams.train_size, show_default=True,
                     help="Rows the IVF/PQ quantisers are trained on (a random sample of larger databases)."),
        click.option("--shards", "n_shards", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Split the index into this many shards of consecutive rows (merged exactly)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def params_from(index_kind: str, nlist: int | None, pq_m: int | None, opq: bool, nprobe: int | None,
                rerank_k: int | None, train_size: int) -> IndexParams:
    return IndexParams(kind=index_kind, nlist=nlist, pq_m=pq_m, opq=opq, nprobe=nprobe, rerank_k=rerank_k,
                       train_size=train_size)


def _index_for(source: DescriptorSource, load_index: Path | None, params: IndexParams, n_shards: int,
               progress: bool, chain: Any, cache_rerank: bool) -> SearchIndex:
    """The index to search: loaded (built with the same database-side ``chain``) or built now."""
    started = time.perf_counter()
    if load_index is not None:
        ctx = click.get_current_context()
        ignored = [f"--{n.replace('_', '-')}" for n in ("index_kind", "nlist", "pq_m", "opq", "n_shards", "train_size")
                   if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if ignored:
            click.echo(f"Warning: {', '.join(ignored)} ignored: the index comes from {load_index}", err=True)
        index = SearchIndex.load(load_index, source, database_rerank=chain.database_spec if chain else "")
        what = f"loaded {index.describe()} from {load_index}"
    else:
        with echo_warnings():
            index = SearchIndex.build(source, params, shards=n_shards, progress=progress, rerank=chain,
                                      cache_rerank=cache_rerank)
        what = f"built {index.describe()}"
    click.echo(f"{what} in {time.perf_counter() - started:.2f} s", err=True)
    return index


@click.command("search")
@click.argument("database_file", metavar="DATABASE", type=click.Path(exists=True, path_type=Path))
@click.argument("query_specs", metavar="[QUERIES]...", nargs=-1)
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Results per query.")
@index_params_options
@click.option("--save-index", type=click.Path(path_type=Path), default=None,
              help="Write the built index to this folder (atomically), to reuse with --load-index.")
@click.option("--load-index", type=click.Path(path_type=Path), default=None,
              help="Use an index saved by --save-index / `rkit index build` for this DATABASE (checked against it).")
@click.option("--use-shards", default=None, metavar="I,J,...",
              help="Search only these shards of the index (one server's part; write --format npz and "
                   "combine the parts with `rkit index merge`).")
@click.option("--rerank", "rerank_spec", default="none", show_default=True, metavar="SPEC",
              help="Re-rankers (`rkit plugins`), joined by '+': aqe, dba, dba+aqe:k=2:alpha=3.")
@click.option("--format", "out_format", type=click.Choice([*FORMATS, "npz"]), default="tsv", show_default=True,
              help="tsv: query, rank, score, path per line (with a header); json: one document; hloc-pairs: "
                   "'query match' per line, hloc's pairs-from-retrieval file (no self-matches); npz: raw "
                   "scores and row ids (partial results for `rkit index merge`).")
@click.option("--num-matched", type=click.IntRange(min=1), default=None,
              help="With --format hloc-pairs: matches per query (default: -k).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results here (atomically) instead of to standard output.")
@model_options
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def command(database_file: Path, query_specs: tuple[str, ...], k: int, index_kind: str, nlist: int | None,
            pq_m: int | None, opq: bool, nprobe: int | None, rerank_k: int | None, train_size: int, n_shards: int,
            save_index: Path | None, load_index: Path | None, use_shards: str | None, rerank_spec: str,
            out_format: str, num_matched: int | None, out: Path | None, model_options: ModelOptions,
            progress: bool) -> None:
    """Search DATABASE (a descriptors file or store folder) for each of QUERIES.

    A query is a descriptors file (.npz), an image, a folder of images or a text file listing
    images; images are described with the database's model (from its file, or --model ...).

    \b
    rkit search db.npz queries.npz -k 20 --format json --out hits.json
    rkit search db.npz photo.jpg other/ --image-size 448 --rerank dba+aqe
    rkit search db.npz --index ivfpq --pq-m 16 --opq --save-index db.index   (build once)
    rkit search db.npz q.npz --load-index db.index --nprobe 8 --rerank-k 200
    rkit search db.npz db.npz --format hloc-pairs --num-matched 20 --out pairs.txt   (for hloc / rkit sfm --pairs)
    """
    from ..rerank import IndexNeighbours, as_chain
    from ..store import open_descriptors

    inputs = [database_file, load_index, model_options.model_dir, model_options.whitening_file,
              *(Path(q) for q in query_specs)]
    for option, path, folder in (("--out", out, False), ("--save-index", save_index, True)):
        if path is not None:
            check_output_path(path, inputs, option=option, folder=folder)
    source = open_descriptors(database_file)
    if not query_specs and save_index is None:
        raise RkitError("no queries given: name descriptors files or images after DATABASE "
                        "(or only --save-index FOLDER to build an index)")
    chain = as_chain(rerank_spec)
    queries = _queries(query_specs, source, model_options, progress)
    if query_specs and not len(queries):
        raise RkitError("the queries given hold no descriptors: check the query files")
    params = params_from(index_kind, nlist, pq_m, opq, nprobe, rerank_k, train_size)
    index = _index_for(source, load_index, params, n_shards, progress, chain, cache_rerank=save_index is None)
    if save_index is not None:
        index.save(save_index)
        click.echo(f"wrote index to {save_index}", err=True)
    if not query_specs:
        return
    info = {"database": str(database_file), "k": k, "rerank": str(chain) if chain else "none",
            "index": f"loaded {index.params.kind}" if load_index else index_kind}
    if out_format == "hloc-pairs":  # one more, as the query itself is dropped when in the database
        info["num_matched"] = num_matched or k
        k = min(info["num_matched"] + 1, source.count)
    shard_ids, started = _shard_list(use_shards), time.perf_counter()
    vectors = queries.descriptors if chain is None else chain.transform_queries(queries.descriptors,
                                                                                IndexNeighbours(index))
    scores, ids = index.search(vectors, k, nprobe=nprobe, rerank_k=rerank_k, shard_ids=shard_ids)
    click.echo(f"searched {len(queries)} queries in {time.perf_counter() - started:.3f} s", err=True)
    if out_format == "npz":
        if out is None:
            raise RkitError("--format npz writes a file: give --out FILE.npz")
        save_partial(out, scores, ids, queries.paths, index, shard_ids)
        click.echo(f"wrote {len(queries)} x {ids.shape[1]} partial results to {out}", err=True)
        return
    write_results(list(queries.paths), scores, ids, source, out_format, out, info)


def _shard_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise RkitError(f"--use-shards {text!r}: write shard numbers separated by commas, e.g. 0,1") from None


def write_results(names: list[str], scores: np.ndarray, ids: np.ndarray, source: DescriptorSource,
                  out_format: str, out: Path | None, info: dict[str, Any]) -> None:
    """Format results to ``out`` or standard output; only the paths of the ids shown are decoded."""
    if out_format == "hloc-pairs":       # the pairs writer walks every database name
        paths: Any = source.all_paths()
    else:                                # row -> path for the rows shown: no N Python strings
        shown = np.unique(ids[ids >= 0])
        paths = dict(zip(shown.tolist(), source.paths_at(shown)))
    results = SearchResults(names, scores, ids, paths, root=source.meta.get("root"), info=info)  # type: ignore[arg-type]
    text = format_results(results, out_format)
    if out is None:
        click.echo(text, nl=False)
    else:
        write_text_atomic(out, text)
        write_resolved_config(out)
        click.echo(f"wrote {len(names)} x {ids.shape[1]} results to {out}", err=True)
