"""``rkit search``: the top-k database images for query descriptors or query images.

A thin layer over :mod:`retrievalkit.index` (faiss). Query images are described with the model
that made the database: the one recorded in the database file's meta, or ``--model`` /
``--backbone ...`` given here (see ``docs/evaluation.md``).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..atomic import write_text_atomic
from ..config import write_resolved_config
from ..descriptors import DescriptorSet
from ..errors import RkitError
from ..index import INDEX_KINDS, build_index, search
from ..index import load_index as read_index_file
from ..index import save_index as write_index_file
from .options import ModelOptions, extract_with_options, model_options


def _queries(specs: tuple[str, ...], database: DescriptorSet, options: ModelOptions,
             progress: bool) -> tuple[np.ndarray, list[str]]:
    """Stack the query descriptors: ``.npz`` files as they are, images extracted with the model."""
    from ..extract import list_images

    blocks: list[np.ndarray] = []
    names: list[str] = []
    image_paths: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.suffix.lower() == ".npz":
            queries = DescriptorSet.load(path)
            blocks.append(queries.descriptors)
            names.extend(queries.paths)
        else:
            root, paths = list_images(path)
            image_paths.extend(str(root / p) for p in paths)
    if image_paths:
        if not database.meta.get("model") and not ({"model", "backbone", "pooling"} & options.typed):
            raise RkitError("the database file does not say which model described it, so query images cannot be "
                            "described the same way: give --model DIR or --backbone/--pooling/--weights "
                            "(and --image-size, --scales, --whiten) as used for the database")
        options = ModelOptions.from_descriptor_meta(database.meta, base=options)
        result, _ = extract_with_options(options, image_paths, root=None, progress=progress, what="query images")
        blocks.append(result.descriptors)
        names.extend(result.paths)
    if not blocks:
        return np.zeros((0, database.dim), dtype=np.float32), []
    dims = {b.shape[1] for b in blocks}
    if len(dims) > 1 or database.dim not in dims:
        raise RkitError(f"query descriptors are {sorted(dims)}-D but the database is {database.dim}-D: describe "
                        f"queries and database with the same model and whitening")
    return np.concatenate(blocks).astype(np.float32), names


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
@click.option("--format", "out_format", type=click.Choice(["tsv", "json", "hloc-pairs"]), default="tsv",
              show_default=True, help="tsv: query, rank, score, path per line (with a header); json: one "
              "document; hloc-pairs: 'query match' per line, hloc's pairs-from-retrieval file (no self-matches).")
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
    database = DescriptorSet.load(database_file)
    if not query_specs and save_index is None:
        raise RkitError("no queries given: name descriptors files or images after DATABASE "
                        "(or only --save-index FILE to build an index)")
    queries, names = _queries(query_specs, database, model_options, progress)
    if query_specs and not names:
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
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            index = build_index(database.descriptors, index_kind, nlist=nlist, pq_m=pq_m, nprobe=nprobe)
        for warning in caught:
            click.echo(f"Warning: {warning.message}", err=True)
        what = f"built {index_kind} index of {index.ntotal} {database.dim}-D vectors"
    click.echo(f"{what} in {time.perf_counter() - started:.2f} s", err=True)
    if save_index is not None:
        write_index_file(index, save_index)
        click.echo(f"wrote index to {save_index}", err=True)
    if not query_specs:
        return
    matched = num_matched or k
    if out_format == "hloc-pairs":  # one more, as the query itself is dropped when in the database
        k = min(matched + 1, len(database))
    started = time.perf_counter()
    scores, ids = search(index, queries, k, nprobe=nprobe)
    click.echo(f"searched {len(names)} queries in {time.perf_counter() - started:.3f} s", err=True)
    if out_format == "hloc-pairs":
        from ..hloc import hloc_pairs_text

        text = hloc_pairs_text(names, ids, database.paths, database.meta.get("root"), matched)
    else:
        text = format_results(names, scores, ids, database, out_format,
                              info={"database": str(database_file), "k": k,
                                    "index": type(index).__name__ if load_index else index_kind})
    if out is None:
        click.echo(text, nl=False)
    else:
        write_text_atomic(out, text)
        write_resolved_config(out)
        click.echo(f"wrote {len(names)} x {ids.shape[1]} results to {out}", err=True)


def format_results(names: list[str], scores: np.ndarray, ids: np.ndarray, database: DescriptorSet,
                   out_format: str, info: dict[str, Any]) -> str:
    """TSV (``query, rank, score, path`` with a header line) or JSON text of the results."""
    rows = [
        [(rank + 1, database.paths[i], float(s)) for rank, (i, s) in enumerate(zip(id_row.tolist(), score_row.tolist()))
         if i >= 0]
        for id_row, score_row in zip(ids, scores)
    ]
    if out_format == "json":
        document = {**info, "root": database.meta.get("root"), "results": [
            {"query": name, "neighbours": [{"rank": r, "path": p, "score": round(s, 6)} for r, p, s in hits]}
            for name, hits in zip(names, rows)
        ]}
        return json.dumps(document, indent=2) + "\n"
    lines = ["query\trank\tscore\tpath"]
    for name, hits in zip(names, rows):
        lines.extend(f"{name}\t{r}\t{s:.6f}\t{p}" for r, p, s in hits)
    return "\n".join(lines) + "\n"
