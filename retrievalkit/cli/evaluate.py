"""``rkit eval``: mAP and mP@k of a folder collection or a revisited Oxford/Paris dataset.

Parses the options and calls the library: descriptors come from a file
(:meth:`DescriptorSet.load`) or are extracted here, then
:func:`retrievalkit.evaluate.evaluate_descriptors` / :func:`~retrievalkit.evaluate.evaluate_dataset`
do the work. The protocols are described in ``docs/evaluation.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..config import write_resolved_config
from ..descriptors import DescriptorSet
from ..errors import RkitError
from ..evaluate import DEFAULT_KS, Evaluation, evaluate_dataset, evaluate_descriptors
from ..outputs import check_output_path
from .options import ModelOptions, echo_warnings, extract_with_options, model_options


def partial_path(path: Path) -> Path:
    """:func:`retrievalkit.extract.partial_path`, imported on use (that module imports torch)."""
    from ..extract import partial_path as extract_partial_path

    return extract_partial_path(path)


def parse_ks(text: str) -> list[int]:
    """``"1,5,10"`` -> ``[1, 5, 10]``."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise RkitError(f"--ks {text!r}: write comma-separated positive integers, e.g. 1,5,10")
    return ks


def _is_descriptors_file(path: Path) -> bool:
    from ..store import STORE_MANIFEST

    return (path.is_file() and path.suffix.lower() == ".npz") or (path / STORE_MANIFEST).is_file()


def _queries_path(save: Path) -> Path:
    return save.with_name(f"{save.name.removesuffix('.npz')}.queries.npz")


def _warn_unused_model_options(options: ModelOptions, why: str) -> None:
    unused = sorted(options.command_line - {"whitening"})
    if unused:
        click.echo(f"Warning: {', '.join('--' + n.replace('_', '-') for n in unused)} ignored: {why}", err=True)


def _load(path: Path, options: ModelOptions) -> DescriptorSet:
    """A descriptors file, whitened here with ``--whitening FILE`` if one is given."""
    from ..store import load_descriptor_set

    dset = load_descriptor_set(path)    # a .npz file or a store folder (retrievalkit/store.py)
    if options.whitening_file is None:
        return dset
    from ..whitening import FittedWhitening

    with echo_warnings():
        return dset.whitened(FittedWhitening.load(options.whitening_file), options.whitening_file)


def _extract(options: ModelOptions, paths: list[str], root: Path, save: Path | None, progress: bool,
             what: str, crops: list | None = None, **meta: object) -> DescriptorSet:
    """Describe ``paths`` with the model options; keep them in ``save`` (resumable) if given."""
    checkpoint = partial_path(save) if save is not None else None
    result, made = extract_with_options(options, paths, root=root, crops=crops, checkpoint=checkpoint,
                                        progress=progress, what=what)
    dset = DescriptorSet(result.descriptors, result.paths, {**made, **meta})
    if save is not None:
        dset.save(save)
        click.echo(f"wrote the descriptors of the {what} to {save}", err=True)
    return dset


@click.command("eval")
@click.argument("source", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--dataset", default=None, metavar="NAME",
              help="A revisited-layout benchmark: roxford5k, rparis6k (or classic oxford5k, paris6k), read "
                   "from DATA_ROOT/NAME/gnd_NAME.pkl and DATA_ROOT/NAME/jpg/.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=Path("data"),
              envvar="RKIT_DATA", show_default=True,
              help="Folder holding the --dataset folders (default: $RKIT_DATA, else ./data); "
                   "`rkit data download` fills it.")
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
@click.option("--distractors", default=None, metavar="NAME",
              help="With --dataset: add a distractor set to the database, e.g. revisitop1m (R1M protocol; "
                   "described once per model and cached under DATA_ROOT/NAME/descriptors).")
@click.option("--distractor-index", default="flat", show_default=True, metavar="KIND[:nlist=N:pq_m=M:nprobe=P]",
              help="faiss index for --distractors, as in rkit search: flat, ivf, ivfpq (e.g. ivfpq:nlist=8192:pq_m=64).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
def command(source: Path | None, dataset: str | None, data_root: Path, query_descriptors: Path | None,
            model_options: ModelOptions, ks_text: str, rerank: str, as_json: bool, save_rankings: Path | None,
            save_descriptors: Path | None, distractors: str | None, distractor_index: str, progress: bool) -> None:
    """Evaluate retrieval: mAP and mP@k (revisited-protocol AP, docs/definitions.md).

    \b
    Folder collection (one folder per class; every image queries all the others):
      rkit eval photos.npz                          a descriptors file from `rkit extract`
      rkit eval photos.npz --whitening lw.npz       ... whitened here with a `rkit whiten fit` file
      rkit eval photos/ --pooling gem --image-size 448
    Revisited Oxford / Paris (Easy / Medium / Hard, query crops):
      rkit eval --dataset roxford5k --data-root data --model runs/ft --save-descriptors rox.npz
      rkit eval rox.npz --dataset roxford5k --data-root data --query-descriptors rox.queries.npz
    """
    ks = parse_ks(ks_text)
    inputs = [source, query_descriptors, data_root / dataset if dataset else None,
              model_options.model_dir, model_options.whitening_file]
    for option, path in (("--save-rankings", save_rankings), ("--save-descriptors", save_descriptors)):
        if path is not None:
            check_output_path(path, inputs, option=option)
    started = time.perf_counter()
    if dataset is None:
        if source is None:
            raise RkitError("nothing to evaluate: give a descriptors file or an image folder, "
                            "or --dataset NAME --data-root DIR")
        if query_descriptors is not None:
            raise RkitError("--query-descriptors needs --dataset (a folder collection uses every image as a query)")
        if distractors is not None:
            raise RkitError("--distractors needs --dataset (e.g. --dataset roxford5k --distractors revisitop1m)")
        evaluation = evaluate_descriptors(_folder(source, model_options, save_descriptors, progress),
                                          ks=ks, source=str(source), rerank=rerank)
    else:
        described = _revisited(source, dataset, data_root, query_descriptors, model_options, save_descriptors,
                               progress)
        extra = None
        if distractors is not None:   # R1M protocol: retrievalkit/distractors.py
            from .distractors import describe_distractors

            extra = describe_distractors(distractors, data_root, model_options, described[1].meta, progress)
        evaluation = evaluate_dataset(*described, ks=ks, distractors=extra, distractor_index=distractor_index,
                                      rerank=rerank)
    for note in evaluation.notes:
        click.echo(f"Warning: {note}", err=True)
    _output(evaluation, time.perf_counter() - started, as_json, save_rankings)


def _output(evaluation: Evaluation, seconds: float, as_json: bool, save_rankings: Path | None) -> None:
    if save_rankings is not None:
        evaluation.save_rankings(save_rankings)
        write_resolved_config(save_rankings)
    if not as_json:
        click.echo(evaluation.table(), nl=False)
    click.echo(f"ranked and scored in {evaluation.seconds:.2f} s (total {seconds:.1f} s)", err=True)
    if as_json:
        click.echo(json.dumps({**evaluation.report(), "seconds": round(seconds, 3)}, indent=2))
    if save_rankings is not None:
        click.echo(f"wrote rankings to {save_rankings}", err=True)


def _folder(source: Path, options: ModelOptions, save_descriptors: Path | None, progress: bool) -> DescriptorSet:
    """The collection's descriptors: SOURCE itself, or SOURCE's images described here."""
    if _is_descriptors_file(source):
        _warn_unused_model_options(options, f"{source} already holds descriptors")
        return _load(source, options)
    from ..extract import list_images

    root, paths = list_images(source)
    return _extract(options, paths, root, save_descriptors, progress, "images", source=str(source))


def _revisited(source: Path | None, name: str, data_root: Path, query_descriptors: Path | None,
               options: ModelOptions, save_descriptors: Path | None, progress: bool):
    """``(dataset, database, queries)``: descriptors read from the files given, the rest extracted."""
    from ..datasets import load_revisited

    if source is not None and not _is_descriptors_file(source):
        raise RkitError(f"with --dataset, SOURCE must be a descriptors file (.npz) of the dataset's images, "
                        f"not {source}: leave SOURCE out to extract the images from {data_root / name / 'jpg'}")
    if query_descriptors is not None and source is None:
        raise RkitError("--query-descriptors needs the database descriptors too: give them as SOURCE")
    dataset = load_revisited(data_root, name, require_images=query_descriptors is None)
    if query_descriptors is not None:
        _warn_unused_model_options(options, "the database and query descriptors are given")
    if source is not None:
        database = _load(source, options)
    else:
        database = _extract(options, dataset.image_paths(), dataset.image_dir, save_descriptors, progress,
                            "database images", dataset=name)
    if query_descriptors is not None:
        queries = _load(query_descriptors, options)
    else:
        if source is not None and database.meta.get("model"):
            # describe the queries like the database file was (typed options still win), as
            # `rkit search` does: otherwise they would get this command's defaults
            options = ModelOptions.from_descriptor_meta(database.meta, base=options)
        queries = _extract(options, dataset.query_paths(), dataset.image_dir,
                           _queries_path(save_descriptors) if save_descriptors is not None else None,
                           progress, "query crops", crops=dataset.query_crops(), dataset=name, query_crops=True)
    return dataset, database, queries
