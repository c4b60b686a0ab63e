"""``rkit whiten``: learn a whitening from a descriptors file (``fit``) and apply it (``apply``).

A thin layer over :mod:`retrievalkit.whitening`; the methods are the ``whitening`` plugins
(``rkit plugins`` lists them). See ``docs/whitening.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..config import write_resolved_config
from ..datasets import read_labels  # noqa: F401 (was defined here)
from ..descriptors import DescriptorSet
from ..errors import RkitError
from ..outputs import check_output_path
from ..whitening import DEFAULT_MAX_PAIRS, FittedWhitening, WhiteningData, fit_whitening, read_pairs_file
from .common import echo_warnings, renamed_option
from .options import component_callback


@click.group("whiten")
def group() -> None:
    """Learn and apply whitening (PCA, learned Lw).

    \b
    rkit whiten fit train.npz --whiten learned --labels folder --dim 128 --out lw.npz
    rkit whiten apply test.npz --whitening lw.npz --out test-lw.npz
    """


@group.command("fit")
@click.argument("descriptors", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--whiten", "method", default="learned", show_default=True, metavar="METHOD",
              callback=component_callback("whitening"),
              help="The whitening method to fit (a component, with options): none, pca, pca:whiten=false, "
                   "learned, learned:rotation=all, learned:ridge=0.1 ... (as `rkit train/ablate --whiten`).")
@click.option("--dim", type=int, default=None,
              help="Output dimension (e.g. 32, 64, 128, 256, 512). Default: every meaningful direction.")
@click.option("--labels", "labels_spec", default=None, metavar="folder|FILE",
              help="Supervision for 'learned': 'folder' (same parent folder = matching) or a PATH<TAB>LABEL file.")
@click.option("--pairs", "pairs_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Supervision for 'learned': a file of A<TAB>B<TAB>1|0 lines (paths or row indices).")
@click.option("--max-pairs", type=int, default=DEFAULT_MAX_PAIRS, show_default=True,
              help="With --labels: at most this many pairs of each kind (a seeded sample).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the pair sample.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Whitening file to write (.npz).")
@renamed_option("--method", "method", "--whiten")
def fit_command(descriptors: Path, method: str, dim: int | None, labels_spec: str | None,
                pairs_file: Path | None, max_pairs: int, seed: int, out: Path) -> None:
    """Learn a whitening from a descriptors file.

    DESCRIPTORS is a file written by `rkit extract`. `pca` needs nothing else; `learned` needs
    --labels or --pairs. See docs/whitening.md.
    """
    label_file = Path(labels_spec) if labels_spec not in (None, "folder") else None
    check_output_path(out, [descriptors, label_file, pairs_file])
    start = time.perf_counter()
    dset = DescriptorSet.load(descriptors)
    if dset.meta.get("whitening"):
        click.echo(f"Warning: {descriptors} is already whitened ({dset.meta['whitening'].get('method')}); "
                   f"a whitening is normally learned on unwhitened descriptors.", err=True)
    labels = read_labels(labels_spec, dset.paths) if labels_spec else None
    positives = negatives = None
    if pairs_file is not None:
        positives, negatives = read_pairs_file(pairs_file, dset.paths)
    data = WhiteningData(dset.descriptors, positives, negatives, labels)
    if labels is not None and pairs_file is None:
        data = data.with_pairs_from_labels(max_pairs=max_pairs, seed=seed)
    from ..plugins import get_host

    host = get_host()  # the plugin host's start-up is not part of the fit's time
    fit_started = time.perf_counter()
    fitted = fit_whitening(method, data, dim=dim, host=host)
    fit_seconds = time.perf_counter() - fit_started
    fitted.meta.update({"source": str(descriptors), "source_count": len(dset),
                        "supervision": f"pairs file {pairs_file}" if pairs_file else
                        (f"labels {labels_spec}" if labels_spec else "descriptors only"),
                        "descriptors_meta": {k: v for k, v in dset.meta.items() if k in
                                             ("model", "backbone", "pooling", "image_size", "scales")}})
    fitted.save(out)
    write_resolved_config(out)
    counts = f"{len(dset)} descriptors"
    if "n_positive_pairs" in fitted.meta:
        counts += f", {fitted.meta['n_positive_pairs']} matching and {fitted.meta['n_negative_pairs']} non-matching pairs"
    click.echo(f"{fitted.method}: {fitted.in_dim} -> {fitted.out_dim} dimensions "
               f"(rank {fitted.meta.get('rank', fitted.in_dim)}) from {counts} "
               f"in {fit_seconds:.1f} s (command {time.perf_counter() - start:.1f} s in all); wrote {out}")


@group.command("apply")
@click.argument("descriptors", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--whitening", "whitening_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The fitted whitening file to apply (written by `rkit whiten fit`).  [required]")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Whitened descriptors file to write (.npz).")
@renamed_option("--whiten", "whitening_file", "--whitening", type=click.Path(dir_okay=False, path_type=Path))
def apply_command(descriptors: Path, whitening_file: Path | None, out: Path) -> None:
    """Apply a fitted whitening to a descriptors file.

    Writes the whitened descriptors of DESCRIPTORS to --out; their meta records the whitening.
    """
    if whitening_file is None:
        raise RkitError("give the fitted whitening to apply: --whitening FILE (from `rkit whiten fit`)")
    check_output_path(out, [descriptors, whitening_file])
    start = time.perf_counter()
    fitted = FittedWhitening.load(whitening_file)
    dset = DescriptorSet.load(descriptors)
    source = fitted.meta.get("source")
    if source and Path(source).resolve() == descriptors.resolve():
        click.echo(f"Warning: {whitening_file} was learned on {descriptors} itself; results on the data a "
                   f"whitening was learned on are optimistic (learn it on a separate set).", err=True)
    with echo_warnings():
        dset.whitened(fitted, whitening_file).save(out)
    write_resolved_config(out)
    click.echo(f"whitened {len(dset)} descriptors {fitted.in_dim} -> {fitted.out_dim} D with "
               f"{fitted.method} in {time.perf_counter() - start:.1f} s; wrote {out}")
