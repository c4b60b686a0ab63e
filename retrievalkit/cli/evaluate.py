"""``rkit eval``: mAP and mP@k of a folder collection or a revisited Oxford/Paris dataset.

A thin layer over :mod:`retrievalkit.evaluate` and :mod:`retrievalkit.datasets`; the protocols
are described in ``docs/evaluation.md``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..atomic import write_text_atomic
from ..config import write_resolved_config
from ..descriptors import DescriptorSet
from ..errors import RkitError
from ..evaluate import (DEFAULT_KS, EvaluationResult, evaluate_folder_collection, evaluate_revisited,
                        folder_labels, rankings_document)
from ..extract import partial_path
from ..store import load_descriptor_set
from .options import ModelOptions, extract_with_options, model_options


def parse_ks(text: str) -> list[int]:
    """``"1,5,10"`` -> ``[1, 5, 10]``."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise RkitError(f"--ks {text!r}: write comma-separated positive integers, e.g. 1,5,10")
    return ks


def _fmt(value: float) -> str:
    return "  -   " if not np.isfinite(value) else f"{value:.4f}"


def _is_descriptors_file(path: Path) -> bool:
    from ..store import STORE_MANIFEST

    return (path.is_file() and path.suffix.lower() == ".npz") or (path / STORE_MANIFEST).is_file()


def _queries_path(save: Path) -> Path:
    return save.with_name(f"{save.name.removesuffix('.npz')}.queries.npz")


def _warn_unused_model_options(options: ModelOptions, why: str) -> None:
    unused = sorted(options.command_line - {"whiten"})
    if unused:
        click.echo(f"Warning: {', '.join('--' + n.replace('_', '-') for n in unused)} ignored: {why}", err=True)


def _whitened(dset: DescriptorSet, options: ModelOptions, what: str) -> DescriptorSet:
    """``--whiten FILE`` given with a descriptors file: whiten its descriptors here."""
    if options.whiten_file is None:
        return dset
    from ..whitening import FittedWhitening

    whitening = FittedWhitening.load(options.whiten_file)
    if dset.meta.get("whitening"):
        click.echo(f"Warning: {what} descriptors are already whitened "
                   f"({dset.meta['whitening'].get('method')}); --whiten composes a second whitening", err=True)
    meta = {**dset.meta, "whitening": whitening.describe(options.whiten_file)}
    return DescriptorSet(whitening.apply(dset.descriptors), dset.paths, meta)


@click.command("eval")
@click.argument("source", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--dataset", default=None, metavar="NAME",
              help="A revisited-layout benchmark: roxford5k, rparis6k (or classic oxford5k, paris6k), read "
                   "from DATA_ROOT/NAME/gnd_NAME.pkl and DATA_ROOT/NAME/jpg/.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=Path("data"),
              show_default=True, help="Folder holding the --dataset folders.")
@click.option("--query-descriptors", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="With --dataset and a SOURCE descriptors file: descriptors of the cropped queries "
                   "(as written by --save-descriptors), instead of extracting them.")
@model_options
@click.option("--ks", "ks_text", default=",".join(map(str, DEFAULT_KS)), show_default=True,
              help="Cut-offs of mP@k.")
@click.option("--rerank", "rerank", default="none", show_default=True, metavar="SPEC",
              help="Re-rankers (`rkit plugins`) joined by '+': aqe, dba, dba+aqe:k=2:alpha=3.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON instead of a table.")
@click.option("--save-rankings", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write each query's AP and top-100 ranked images (positive/junk/negative) as JSON, "
                   "for `rkit report`.")
@click.option("--save-descriptors", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Keep the extracted descriptors in this .npz (with --dataset the queries go to "
                   "NAME.queries.npz beside it); extraction resumes from a partial file after an interruption.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
def command(source: Path | None, dataset: str | None, data_root: Path, query_descriptors: Path | None,
            model_options: ModelOptions, ks_text: str, rerank: str, as_json: bool, save_rankings: Path | None,
            save_descriptors: Path | None, progress: bool) -> None:
    """Evaluate retrieval: mAP and mP@k (revisited-protocol AP, SPEC section 5).

    \b
    Folder collection (one folder per class; every image queries all the others):
      rkit eval photos.npz                          a descriptors file from `rkit extract`
      rkit eval photos.npz --whiten lw.npz          ... whitened here with a `rkit whiten fit` file
      rkit eval photos/ --pooling gem --image-size 448
    Revisited Oxford / Paris (Easy / Medium / Hard, query crops):
      rkit eval --dataset roxford5k --data-root data --model runs/ft --save-descriptors rox.npz
      rkit eval rox.npz --dataset roxford5k --data-root data --query-descriptors rox.queries.npz
    """
    ks = parse_ks(ks_text)
    started = time.perf_counter()
    if dataset is None:
        if source is None:
            raise RkitError("nothing to evaluate: give a descriptors file or an image folder, "
                            "or --dataset NAME --data-root DIR")
        if query_descriptors is not None:
            raise RkitError("--query-descriptors needs --dataset (a folder collection uses every image as a query)")
        report = _folder(source, model_options, ks, save_descriptors, save_rankings, progress, as_json, rerank)
    else:
        report = _revisited(source, dataset, data_root, query_descriptors, model_options, ks,
                            save_descriptors, save_rankings, progress, as_json, rerank)
    report["seconds"] = round(time.perf_counter() - started, 3)
    click.echo(f"ranked and scored in {report['evaluation_seconds']:.2f} s (total {report['seconds']:.1f} s)", err=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    if save_rankings is not None:
        click.echo(f"wrote rankings to {save_rankings}", err=True)


# -- folder collections ---------------------------------------------------------------------------
def _folder(source: Path, options: ModelOptions, ks: list[int], save_descriptors: Path | None,
            save_rankings: Path | None, progress: bool, as_json: bool, rerank: str = "none") -> dict[str, Any]:
    if _is_descriptors_file(source):
        _warn_unused_model_options(options, f"{source} already holds descriptors")
        dset = _whitened(load_descriptor_set(source), options, "these")
    else:
        from ..extract import list_images

        root, paths = list_images(source)
        checkpoint = partial_path(save_descriptors) if save_descriptors is not None else None
        result, meta = extract_with_options(options, paths, root=root, checkpoint=checkpoint, progress=progress)
        dset = DescriptorSet(result.descriptors, result.paths, {**meta, "source": str(source)})
        if save_descriptors is not None:
            dset.save(save_descriptors)
            click.echo(f"wrote descriptors to {save_descriptors}", err=True)

    labels = folder_labels(dset.paths)
    started = time.perf_counter()
    result = evaluate_folder_collection(dset.descriptors, labels, ks=ks, names=dset.paths, rerank=rerank)
    seconds = time.perf_counter() - started
    counts = Counter(labels)
    classes = sorted(counts)
    sizes = {c: counts[c] for c in classes}
    report = {
        "protocol": "folder", "source": str(source), "images": len(dset), "classes": len(classes),
        "dim": dset.dim, **result.summary(),
        "class_sizes": sizes, "evaluation_seconds": round(seconds, 3),
    }
    if save_rankings is not None:
        document = rankings_document({"all": result}, dset.paths, dset.paths, root=dset.meta.get("root"),
                                     protocol="folder", meta={"source": str(source), "descriptors_meta": dset.meta})
        write_text_atomic(save_rankings, json.dumps(document) + "\n")
        write_resolved_config(save_rankings)
    if not as_json:
        _print_folder(report, result)
    return report


def _print_folder(report: dict[str, Any], result: EvaluationResult) -> None:
    click.echo(f"folder collection {report['source']}: {report['images']} images, {report['classes']} classes, "
               f"{report['dim']}-D; {result.n_queries} queries"
               + (f" ({result.n_left_out} alone in their class, left out)" if result.n_left_out else ""))
    cells = [f"mAP {_fmt(result.map)}"] + [f"mP@{k} {_fmt(v)}" for k, v in result.mp_at_k.items()]
    click.echo("  ".join(cells))
    click.echo("per class (mean AP, images):")
    width = max(len(c) for c in result.per_class_ap) if result.per_class_ap else 5
    for name, ap in sorted(result.per_class_ap.items(), key=lambda item: (np.nan_to_num(item[1], nan=2.0), item[0])):
        click.echo(f"  {name or '(no folder)':<{width}}  {_fmt(ap)}  {report['class_sizes'][name]:>5}")


# -- revisited Oxford / Paris -----------------------------------------------------------------------
def _revisited(source: Path | None, name: str, data_root: Path, query_descriptors: Path | None,
               options: ModelOptions, ks: list[int], save_descriptors: Path | None,
               save_rankings: Path | None, progress: bool, as_json: bool, rerank: str = "none") -> dict[str, Any]:
    from ..datasets import load_revisited

    have_database = source is not None
    if have_database and not _is_descriptors_file(source):
        raise RkitError(f"with --dataset, SOURCE must be a descriptors file (.npz) of the dataset's images, "
                        f"not {source}: leave SOURCE out to extract the images from {data_root / name / 'jpg'}")
    if query_descriptors is not None and not have_database:
        raise RkitError("--query-descriptors needs the database descriptors too: give them as SOURCE")
    needs_images = not (have_database and query_descriptors is not None)
    dataset = load_revisited(data_root, name, require_images=needs_images)
    if not needs_images:
        _warn_unused_model_options(options, "the database and query descriptors are given")

    # database
    if have_database:
        database = _whitened(load_descriptor_set(source), options, "the database")
    else:
        checkpoint = partial_path(save_descriptors) if save_descriptors is not None else None
        result, meta = extract_with_options(options, dataset.image_paths(), root=dataset.image_dir,
                                            checkpoint=checkpoint, progress=progress, what="database images")
        database = DescriptorSet(result.descriptors, result.paths, {**meta, "dataset": name})
        if save_descriptors is not None:
            database.save(save_descriptors)
            click.echo(f"wrote database descriptors to {save_descriptors}", err=True)
    database_ids, database_rows = dataset.match(database.paths)
    if not len(database_ids):
        raise RkitError(f"none of the {len(database)} descriptors in {source} is an image of {name}: "
                        f"extract the images of {dataset.image_dir}")

    # queries (cropped to their boxes)
    if query_descriptors is not None:
        queries = _whitened(DescriptorSet.load(query_descriptors), options, "the query")
    else:
        if have_database and database.meta.get("model"):
            # describe the queries like the database file was (typed options still win), as
            # `rkit search` does: otherwise they would get this command's defaults
            options = ModelOptions.from_descriptor_meta(database.meta, base=options)
        checkpoint = partial_path(_queries_path(save_descriptors)) if save_descriptors is not None else None
        result, meta = extract_with_options(options, dataset.query_paths(), root=dataset.image_dir,
                                            crops=dataset.query_crops(), checkpoint=checkpoint,
                                            progress=progress, what="query crops")
        queries = DescriptorSet(result.descriptors, result.paths, {**meta, "dataset": name, "query_crops": True})
        if save_descriptors is not None:
            queries.save(_queries_path(save_descriptors))
            click.echo(f"wrote query descriptors to {_queries_path(save_descriptors)}", err=True)
    query_ids, query_rows = dataset.match(queries.paths, queries=True)
    if not len(query_ids):
        raise RkitError(f"none of the {len(queries)} query descriptors is a query of {name}: "
                        f"extract the cropped queries (leave out --query-descriptors to do it here)")

    missing_db = len(dataset.images) - len(database_ids)
    missing_q = len(dataset.queries) - len(query_ids)
    if missing_db or missing_q:
        click.echo(f"Warning: {missing_db} of {len(dataset.images)} database images and {missing_q} of "
                   f"{len(dataset.queries)} queries have no descriptor: missing images count as never "
                   f"retrieved, missing queries are left out", err=True)

    started = time.perf_counter()
    results = evaluate_revisited(dataset, queries.descriptors[query_rows], database.descriptors[database_rows],
                                 query_ids=query_ids, database_ids=database_ids, ks=ks, rerank=rerank)
    seconds = time.perf_counter() - started
    report = {
        "protocol": "revisited" if dataset.is_revisited else "classic", "dataset": name,
        "images": len(dataset.images), "queries": len(dataset.queries), "dim": database.dim,
        "missing_images": missing_db, "missing_queries": missing_q,
        "settings": {setting: result.summary() for setting, result in results.items()},
        "evaluation_seconds": round(seconds, 3),
    }
    if save_rankings is not None:
        document = rankings_document(results, dataset.query_paths(), dataset.image_paths(),
                                     root=str(dataset.image_dir), protocol=report["protocol"],
                                     meta={"dataset": name, "query_crops": [list(b) if b else None for b in dataset.boxes],
                                           "descriptors_meta": database.meta})
        write_text_atomic(save_rankings, json.dumps(document) + "\n")
        write_resolved_config(save_rankings)
    if not as_json:
        click.echo(f"{name}: {len(dataset.queries)} queries, {len(dataset.images)} images, {database.dim}-D")
        click.echo(f"{'setting':<9} {'mAP':>7}" + "".join(f" {'mP@' + str(k):>7}" for k in ks) + f" {'queries':>8}")
        for setting, result in results.items():
            click.echo(f"{setting:<9} {_fmt(result.map):>7}"
                       + "".join(f" {_fmt(result.mp_at_k[k]):>7}" for k in ks) + f" {result.n_queries:>8}")
    return report
