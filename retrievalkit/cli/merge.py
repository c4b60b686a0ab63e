"""``rkit merge``: the shard files of ``rkit extract --shard K/N`` -> one descriptors file."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import write_resolved_config


@click.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Descriptors file to write (.npz, or .h5 with --format h5; a store folder with --format shards).")
@click.option("--format", "out_format", type=click.Choice(["npz", "h5", "shards", "shards16"]), default="npz",
              show_default=True, help="Output format, as `rkit extract --format`: npz, h5 (hloc), shards/shards16 "
                                      "(append to a descriptor store folder).")
def command(shards: tuple[Path, ...], out: Path, out_format: str) -> None:
    """Merge the shard files of `rkit extract --shard K/N` into one descriptors file.

    Checks that the shards come from one extraction (same model, weights, options and image
    list) and cover every image exactly once; the result is what a single `rkit extract` gives.

    \b
    rkit merge part1.npz part2.npz --out photos.npz
    """
    from ..extractor import failure_lines, require_some, write_descriptors
    from ..outputs import check_output_path
    from ..shards import merge_shard_files

    check_output_path(out, list(shards))
    if out_format == "h5":
        from ..hloc import require_h5py

        require_h5py()  # before the merge, not after it

    extractor, result, header = merge_shard_files(list(shards))
    total = len(header["paths"])
    require_some(result, total, hint="check the images the shards were extracted from")
    root = Path(header["root"]) if header.get("root") else None
    write_descriptors(out, result, extractor.meta(result, root=root, shards=[str(s) for s in shards]), fmt=out_format)
    write_resolved_config(out)
    click.echo(f"merged {len(shards)} shards: {extractor.summary(result, total)}; wrote {out}")
    if result.failed:
        click.echo(f"{len(result.failed)} image(s) skipped:")
        for line in failure_lines(result.failed):
            click.echo(line)
