"""``rkit extract``: images -> a descriptors file (a thin layer over :mod:`retrievalkit.extractor`)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..config import write_resolved_config
from ..errors import Interrupted, RkitError
from ..interrupt import rerun_command
from ..outputs import check_output_path
from .options import ModelOptions, model_options

_SHOWN_FAILURES = 20


@click.command("extract")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@model_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("descriptors.npz"),
              show_default=True, help="Descriptors file to write (.npz or .h5), store folder with --format shards, "
                                      "or the shard file with --shard.")
@click.option("--format", "out_format", type=click.Choice(["npz", "h5", "shards", "shards16"]), default="npz",
              show_default=True,
              help="npz: retrievalkit's descriptors file; h5: hloc's global-feature HDF5 (one group per "
                   "image name with 'global_descriptor'; needs h5py: pip install \"retrievalkit[hloc]\"); "
                   "shards / shards16: append a float32 / float16 shard to the store folder OUT "
                   "(docs/search.md), for databases beyond RAM. With h5 the default --out is descriptors.h5.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Keep partial results in OUT-stem.partial.npz and continue from them after an interruption.")
@click.option("--checkpoint-every", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds between saves of the partial results (with --resume).")
@click.option("--shard", default=None, metavar="K/N",
              help="Compute only shard K of N (e.g. 2/4) and write it to --out; `rkit merge` joins the N shards.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def command(source: Path, model_options: ModelOptions, out: Path, out_format: str, resume: bool,
            checkpoint_every: float, shard: str | None, progress: bool) -> None:
    """Extract global descriptors of the images in SOURCE.

    SOURCE is a folder (searched recursively, following symbolic links) or a text file with one
    image path per line (relative to the file's folder). Unreadable images are listed and skipped.
    Under torchrun (several processes) the images are split over the ranks and rank 0 writes OUT.

    \b
    rkit extract photos/ --pooling gem --image-size 448 --out photos.npz
    rkit extract photos/ --model runs/ft --scales 1,0.707,0.5 --whitening lw.npz
    rkit extract photos/ --shard 1/2 --out part1.npz   (then: rkit merge part1.npz part2.npz --out all.npz)
    torchrun --nproc-per-node 2 -m retrievalkit extract photos/ --out photos.npz
    rkit extract photos/ --format h5 --out global-feats.h5          (hloc's global features)
    """
    if out_format == "h5":
        from ..hloc import require_h5py

        require_h5py()  # before the extraction, not after it
        if click.get_current_context().get_parameter_source("out") == click.core.ParameterSource.DEFAULT:
            out = out.with_suffix(".h5")
    check_output_path(out, [source, model_options.model_dir, model_options.whitening_file])
    from ..extractor import Extractor, failure_lines, require_some, write_descriptors  # torch: on use
    from ..images import list_images
    from ..shards import is_writer, launched_by_torchrun, parse_shard

    share = parse_shard(shard) if shard is not None else None
    if share is not None and out_format != "npz":
        raise RkitError("--shard writes a shard file: give --format to `rkit merge` instead")
    if share is not None and launched_by_torchrun():
        raise RkitError("--shard and torchrun both split the images: use one of them")
    root, paths = list_images(source)
    extractor = Extractor.open(model_options.settings())
    checkpoint = _checkpoint(out, resume)
    try:
        if share is not None:
            extractor.extract_shard(paths, share, out, root=root, checkpoint=checkpoint,
                                    checkpoint_every=checkpoint_every, progress=progress)
            click.echo(f"wrote shard {share[0] + 1}/{share[1]} of {len(paths)} images to {out}; when every "
                       f"shard is done: rkit merge SHARD_FILES... --out FILE")
            return
        result = extractor.extract(paths, root=root, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                                   progress=progress, distributed=launched_by_torchrun())
    except KeyboardInterrupt:
        raise _interrupted(checkpoint) from None
    if not is_writer():
        return
    require_some(result, len(paths))
    write_descriptors(out, result, extractor.meta(result, root=root, source=str(source)), fmt=out_format)
    write_resolved_config(out)  # OUT.rkit-config.toml: the options this ran with
    click.echo(f"extracted {extractor.summary(result, len(paths))}; wrote {out}")
    if result.failed:
        click.echo(f"{len(result.failed)} image(s) skipped:")
        for line in failure_lines(result.failed, _SHOWN_FAILURES, " (all are listed in the file's meta 'failed')"):
            click.echo(line)


def _checkpoint(out: Path, resume: bool) -> Path | None:
    """``OUT.partial.npz`` (each torchrun rank adds ``.rankK-of-N``): resumed, or removed with --no-resume."""
    from ..extract import partial_path

    checkpoint = partial_path(out)
    mine = _own_checkpoint(checkpoint)
    if mine.exists():
        if resume:
            click.echo(f"resuming from {mine}", err=True)
        else:
            mine.unlink()
    return checkpoint if resume else None


def _own_checkpoint(checkpoint: Path) -> Path:
    """This process's checkpoint file: its rank's under torchrun (read from torchrun's variables)."""
    from ..shards import launched_by_torchrun, rank_checkpoint

    if not launched_by_torchrun():
        return checkpoint
    return rank_checkpoint(checkpoint, (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])))


def _interrupted(checkpoint: Path | None) -> Interrupted:
    """What Ctrl-C or SIGTERM during an extraction kept, and the command that resumes it."""
    from ..shards import launched_by_torchrun

    if checkpoint is None:  # --no-resume: nothing was checkpointed, say only that it stopped
        return Interrupted()
    mine = _own_checkpoint(checkpoint)
    kept = f"the descriptors finished so far in {mine}" if mine.exists() else None
    if launched_by_torchrun():   # rerun_command() would be a one-process rkit
        return Interrupted(kept=kept, resume=f"the same torchrun command with {os.environ['WORLD_SIZE']} processes "
                                             f"(another number of processes starts again)")
    return Interrupted(kept=kept, resume=rerun_command())
