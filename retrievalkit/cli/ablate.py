"""``rkit ablate``: run a grid of components and options on a folder-per-class collection.

A thin layer over :func:`retrievalkit.ablate.run_ablation`; see that module for the protocol.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..ablate import DEFAULT_SETTINGS, OPTIONAL_SETTINGS, AblationOptions, format_table, parse_grid, run_ablation
from ..config import write_resolved_config
from ..errors import Interrupted
from ..interrupt import rerun_command
from ..outputs import check_output_path
from .options import component_callback


@click.command("ablate")
@click.option("--data", type=click.Path(exists=True, path_type=Path), required=True,
              help="Evaluation collection: one sub-folder per class (landmark).")
@click.option("--whiten-data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Separate folder-per-class collection to learn whitenings on. Default: "
                   "leave-one-class-out on --data (never on the class being evaluated).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: per-cell results, shared descriptors, results.{csv,md,json}. "
                   "Re-running with the same folder skips finished cells.")
@click.option("--grid", "grid", multiple=True, metavar="AXIS=V1,V2",
              help="A grid axis (repeatable): backbone, weights, pooling, image_size, scales "
                   "(1+0.707+0.5), whiten, dim, rerank (none,aqe,dba+aqe), or COMPONENT.OPTION (pooling.p=2,3). In a config "
                   "file: a table [ablate.grid] with lists.")
@click.option("--backbone", default=DEFAULT_SETTINGS["backbone"], show_default=True, callback=component_callback("backbone"),
              help="Backbone of cells the grid does not vary (NAME[:OPTION=VALUE]).")
@click.option("--weights", default=DEFAULT_SETTINGS["weights"], show_default=True,
              help="Backbone weights: imagenet, none or a state-dict file.")
@click.option("--pooling", default=DEFAULT_SETTINGS["pooling"], show_default=True, callback=component_callback("pooling"))
@click.option("--image-size", type=click.IntRange(min=1), default=int(DEFAULT_SETTINGS["image_size"]), show_default=True,
              help="Longest image side in pixels at scale 1.")
@click.option("--scales", default=DEFAULT_SETTINGS["scales"], show_default=True,
              help="Scales joined by '+' or ',' (1+0.707+0.5).")
@click.option("--whiten", default=DEFAULT_SETTINGS["whiten"], show_default=True, callback=component_callback("whitening"),
              help="Whitening: none, pca, learned (with options, e.g. learned:rotation=all).")
@click.option("--dim", default=DEFAULT_SETTINGS["dim"], show_default=True,
              help="Output dimension after whitening, or 'full'.")
@click.option("--rerank", default=OPTIONAL_SETTINGS["rerank"], show_default=True,
              help="Re-ranking of cells the grid does not vary: none, aqe, dba, dba+aqe (options after ':').")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, mps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most images of one shape per forward pass.")
@click.option("--workers", "num_workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Image-decoding worker processes (0: decode in the main process).")
@click.option("--refit-per-dim", is_flag=True,
              help="Fit each whitening for every dim, instead of fitting once and keeping its first "
                   "dim rows (for a third-party whitening whose rows are not ordered by importance).")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def command(data: Path, whiten_data: Path | None, out_dir: Path, grid: tuple[str, ...], backbone: str,
            weights: str, pooling: str, image_size: int, scales: str, whiten: str, dim: str, rerank: str, device: str,
            batch_size: int, num_workers: int, refit_per_dim: bool, progress: bool) -> None:
    """Run a grid of component/option ablations, sharing extractions between cells.

    \b
    Example:
      rkit ablate --data photos/ --out runs/abl --image-size 448 \\
        --grid pooling=mac,spoc,gem --grid whiten=none,pca,learned --grid dim=32,128,512

    Prints a table and writes results.csv, results.md and results.json to --out (see
    docs/ablations.md; `rkit report OUT` makes an HTML page of it).
    """
    base = {"backbone": backbone, "weights": weights, "pooling": pooling, "image_size": str(image_size),
            "scales": scales.replace(",", "+"), "whiten": whiten, "dim": str(dim), "rerank": rerank}
    parsed = parse_grid(grid)
    check_output_path(out_dir, [data, whiten_data], folder=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_resolved_config(out_dir)
    options = AblationOptions(data=data, out_dir=out_dir, whiten_data=whiten_data, device=device,
                              batch_size=batch_size, num_workers=num_workers, progress=progress,
                              share_whitening_fits=not refit_per_dim)
    try:
        result = run_ablation(base, parsed, options)
    except KeyboardInterrupt:
        done = len(list((out_dir / "cells").glob("*.json")))
        raise Interrupted(kept=f"{done} finished cell result(s) in {out_dir / 'cells'} (and the extractions "
                               f"so far in {out_dir / 'descriptors'})", resume=rerun_command()) from None
    fixed = {k: v for k, v in result.base.items() if k not in result.axes}
    click.echo("fixed: " + " ".join(f"{k}={v}" for k, v in fixed.items()))
    click.echo(format_table(result))
    s = result.stats
    click.echo(
        f"\n{s['cells']} cells: {s['cells_run']} run, {s['cells_reused']} reused from an earlier run, "
        f"{s['cells_failed']} failed. Extractions: {s['extractions_run']} run "
        f"({s['extraction_s']:.1f} s), {s['extractions_reused'] + s['extractions_skipped']} reused, "
        f"for {s['extraction_groups']} extraction groups; without sharing about "
        f"{s['unshared_extraction_estimate_s']:.1f} s of extraction. Whitening fits: "
        f"{s['whitening_fits_run']} run ({s['whitening_fit_s']:.1f} s), {s['whitening_fits_reused']} reused. "
        f"Wall time {s['wall_s']:.1f} s."
    )
    if result.earlier:
        click.echo(f"{len(result.earlier)} cell(s) of earlier runs into {out_dir} (same data) are listed too, "
                   f"marked '(earlier run)'.")
    click.echo(f"Results: {out_dir / 'results.md'}, results.csv, results.json")
    if result.failed:
        click.echo(f"{len(result.failed)} cell(s) failed (see the table); re-running retries them.", err=True)
