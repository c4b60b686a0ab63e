"""``rkit search``: the top-k database images for query descriptors or query images.

Parses options and calls the library: :mod:`retrievalkit.search` (results and their formats)
over :mod:`retrievalkit.index` (faiss). Query images are described with the model
that made the database: the one recorded in the database file's meta, or ``--model`` /
``--backbone ...`` given here (see ``docs/evaluation.md``).
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..atomic import write_text_atomic
from ..config import write_resolved_config
from ..descriptors import DescriptorSet
from ..errors import RkitError
from ..index import INDEX_KINDS, build_index
from ..index import load_index as read_index_file
from ..index import save_index as write_index_file
from ..outputs import check_output_path
from ..search import FORMATS, format_results, load_queries, search_database
from .options import ModelOptions, echo_warnings, extract_with_options, model_options


def _queries(specs: tuple[str, ...], database: DescriptorSet, options: ModelOptions,
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


@click.command("search")
@click.argument("database_file", metavar="DATABASE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("query_specs", metavar="[QUERIES]...", nargs=-1)
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Results per query.")
@click.option("--index", "index_kind", type=click.Choice(INDEX_KINDS), default="flat", show_default=True,
              help="flat: exact inner product; ivf / ivfpq: approximate, for large databases.")
@click.option("--nlist", type=click.IntRange(min=1), default=None,
              help="IVF cells (default about 4 sqrt(N), at least 39 vectors per cell).")
@click.option("--pq-m", type=click.IntRange(min=1), default=None,
              help="ivfpq: bytes per vector (sub-quantisers); must divide the dimension.")
@click.option("--nprobe", type=click.IntRange(min=1), default=None,
              help="IVF cells visited per query (default min(nlist, 16)); more = slower, better recall.")
@click.option("--save-index", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the built index here (atomically), to reuse with --load-index.")
@click.option("--load-index", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Use an index written by --save-index for this DATABASE instead of building one.")
@click.option("--format", "out_format", type=click.Choice(list(FORMATS)), default="tsv", show_default=True,
              help="tsv: query, rank, score, path per line (with a header); json: one document; hloc-pairs: "
                   "'query match' per line, hloc's pairs-from-retrieval file (no self-matches).")
@click.option("--num-matched", type=click.IntRange(min=1), default=None,
              help="With --format hloc-pairs: matches per query (default: -k).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results here (atomically) instead of to standard output.")
@model_options
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def command(database_file: Path, query_specs: tuple[str, ...], k: int, index_kind: str, nlist: int | None,
            pq_m: int | None, nprobe: int | None, save_index: Path | None, load_index: Path | None,
            out_format: str, num_matched: int | None, out: Path | None, model_options: ModelOptions,
            progress: bool) -> None:
    """Search DATABASE (a descriptors file) for each of QUERIES.

    A query is a descriptors file (.npz), an image, a folder of images or a text file listing
    images; images are described with the database's model (from its file, or --model ...).

    \b
    rkit search db.npz queries.npz -k 20 --format json --out hits.json
    rkit search db.npz photo.jpg other/ --image-size 448
    rkit search db.npz --index ivfpq --nlist 4096 --pq-m 32 --save-index db.ivfpq   (build once)
    rkit search db.npz q.npz --load-index db.ivfpq --nprobe 32
    rkit search db.npz db.npz --format hloc-pairs --num-matched 20 --out pairs.txt   (for hloc / rkit sfm --pairs)
    """
    inputs = [database_file, load_index, model_options.model_dir, model_options.whitening_file,
              *(Path(q) for q in query_specs)]
    for option, path in (("--out", out), ("--save-index", save_index)):
        if path is not None:
            check_output_path(path, inputs, option=option)
    database = DescriptorSet.load(database_file)
    if not query_specs and save_index is None:
        raise RkitError("no queries given: name descriptors files or images after DATABASE "
                        "(or only --save-index FILE to build an index)")
    queries = _queries(query_specs, database, model_options, progress)
    if query_specs and not len(queries):
        raise RkitError("the queries given hold no descriptors: check the query files")
    started = time.perf_counter()
    if load_index is not None:
        ctx = click.get_current_context()
        ignored = [f"--{n.replace('_', '-')}" for n in ("index_kind", "nlist", "pq_m")
                   if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if ignored:
            click.echo(f"Warning: {', '.join(ignored)} ignored: the index comes from {load_index}", err=True)
        index = read_index_file(load_index, expected_size=len(database), expected_dim=database.dim)
        what = f"loaded {type(index).__name__} index of {index.ntotal} vectors from {load_index}"
    else:
        with echo_warnings():
            index = build_index(database.descriptors, index_kind, nlist=nlist, pq_m=pq_m, nprobe=nprobe)
        what = f"built {index_kind} index of {index.ntotal} {database.dim}-D vectors"
    click.echo(f"{what} in {time.perf_counter() - started:.2f} s", err=True)
    if save_index is not None:
        write_index_file(index, save_index)
        click.echo(f"wrote index to {save_index}", err=True)
    if not query_specs:
        return
    info = {"database": str(database_file), "k": k, "index": type(index).__name__ if load_index else index_kind}
    if out_format == "hloc-pairs":  # one more, as the query itself is dropped when in the database
        info["num_matched"] = num_matched or k
        k = min(info["num_matched"] + 1, len(database))
    started = time.perf_counter()
    results = search_database(database, queries, k, index=index, nprobe=nprobe, info=info)
    click.echo(f"searched {len(queries)} queries in {time.perf_counter() - started:.3f} s", err=True)
    text = format_results(results, out_format)
    if out is None:
        click.echo(text, nl=False)
    else:
        write_text_atomic(out, text)
        write_resolved_config(out)
        click.echo(f"wrote {len(queries)} x {results.ids.shape[1]} results to {out}", err=True)
