"""``rkit report``: a self-contained HTML page of an evaluation or an ablation.

A thin layer over :func:`retrievalkit.report.write_report`.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..report import write_report


@click.command("report")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write. Default: SOURCE with .html (rankings file) or "
                   "SOURCE/report.html (ablation folder).")
@click.option("--setting", default=None,
              help="Evaluation setting to show (easy, medium, hard, all ...). Default: the file's primary.")
@click.option("--images", "images_root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder the image paths are relative to, if not the one recorded in SOURCE.")
@click.option("--link-images", is_flag=True,
              help="Link the original images by relative path instead of embedding thumbnails "
                   "(smaller page, but it must stay beside the images).")
@click.option("--max-queries", type=int, default=None,
              help="Evaluation: show only the N worst queries.")
@click.option("--title", default=None, help="Page title.")
def command(source: Path, out_file: Path | None, setting: str | None, images_root: Path | None,
            link_images: bool, max_queries: int | None, title: str | None) -> None:
    """Write an HTML report of an evaluation or an ablation.

    SOURCE is the rankings file of `rkit eval --save-rankings FILE` (per query: its top 10
    marked correct/wrong/junk, AP, precision-recall curves) or the output folder of
    `rkit ablate --out DIR` (results table and plots). Tables sort by a click on a header.
    """
    summary = write_report(source, out_file, setting=setting, images_root=images_root,
                           link_images=link_images, title=title, max_queries=max_queries)
    click.echo(f"wrote {summary.kind} report {summary.path}: {summary.rows} rows, {summary.plots} plots, "
               f"{summary.images} images" + (f" ({summary.images_failed} could not be read; listed "
                                             f"at the end of the page)" if summary.images_failed else ""))
