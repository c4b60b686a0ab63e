"""``rkit extract``: images -> a descriptors file (a thin layer over :mod:`retrievalkit.extract`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import write_resolved_config
from ..descriptors import DescriptorSet
from ..errors import Interrupted, RkitError
from ..interrupt import rerun_command
from ..outputs import check_output_path
from .options import ModelOptions, model_options

_SHOWN_FAILURES = 20


@click.command("extract")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@model_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("descriptors.npz"),
              show_default=True, help="Descriptors file to write (.npz).")
@click.option("--format", "out_format", type=click.Choice(["npz", "h5"]), default="npz", show_default=True,
              help="npz: retrievalkit's descriptors file; h5: hloc's global-feature HDF5 (one group per "
                   "image name with 'global_descriptor'; needs h5py: pip install \"retrievalkit[hloc]\"). "
                   "With h5 the default --out is descriptors.h5.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Keep partial results in OUT-stem.partial.npz and continue from them after an interruption.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def command(source: Path, model_options: ModelOptions, out: Path, out_format: str, resume: bool,
            progress: bool) -> None:
    """Extract global descriptors of the images in SOURCE.

    SOURCE is a folder (searched recursively) or a text file with one image path per line
    (relative to the file's folder). Unreadable images are listed and skipped.

    \b
    rkit extract photos/ --pooling gem --image-size 448 --out photos.npz
    rkit extract photos/ --model runs/ft --scales 1,0.707,0.5 --whitening lw.npz
    rkit extract photos/ --format h5 --out global-feats.h5          (hloc's global features)
    """
    if out_format == "h5":
        from ..hloc import require_h5py

        require_h5py()  # before the extraction, not after it
        if click.get_current_context().get_parameter_source("out") == click.core.ParameterSource.DEFAULT:
            out = out.with_suffix(".h5")
    check_output_path(out, [source, model_options.model_dir, model_options.whitening_file])
    from ..extract import extract_descriptors, list_images, partial_path, pooling_exponent  # torch: on use

    root, paths = list_images(source)
    model, whitening = model_options.build()
    checkpoint = partial_path(out)
    if checkpoint.exists():
        if resume:
            click.echo(f"resuming from {checkpoint}", err=True)
        else:
            checkpoint.unlink()
    try:
        result = extract_descriptors(model, paths, root=root, checkpoint=checkpoint if resume else None,
                                     **model_options.extraction_kwargs(progress=progress))
    except KeyboardInterrupt:
        if not resume:  # nothing was checkpointed: say only that it stopped
            raise Interrupted() from None
        kept = f"the descriptors finished so far in {checkpoint}" if checkpoint.exists() else None
        raise Interrupted(kept=kept, resume=rerun_command()) from None
    if not result.paths:
        first = "; ".join(f"{p}: {r}" for p, r in result.failed[:3])
        raise RkitError(f"none of the {len(paths)} images could be read ({first}): check SOURCE")

    descriptors = result.descriptors
    if whitening is not None:
        descriptors = whitening.apply(descriptors)
    meta = model_options.descriptor_meta(
        model, whitening,
        input_mean=list(model.backbone.mean), input_std=list(model.backbone.std),
        pooling_p=pooling_exponent(model), root=str(root.resolve()), source=str(source),
        failed=[[p, r] for p, r in result.failed], seconds=round(result.seconds, 3),
    )
    if out_format == "h5":
        from ..hloc import raw_image_sizes, write_global_features

        write_global_features(out, result.paths, descriptors, raw_image_sizes(root, result.paths), meta=meta)
    else:
        DescriptorSet(descriptors, result.paths, meta).save(out)
    write_resolved_config(out)  # OUT.rkit-config.toml: the options this ran with

    click.echo(
        f"extracted {len(result.paths)} of {len(paths)} images -> {descriptors.shape[1]}-D descriptors in "
        f"{result.seconds:.1f} s ({result.images_per_second:.2f} images/s; {model.config.backbone}, "
        f"{model.config.pooling}, size {model_options.image_size}, "
        f"scales {','.join(f'{s:g}' for s in model_options.scales)}); wrote {out}"
    )
    if result.failed:
        click.echo(f"{len(result.failed)} image(s) skipped:")
        for path, reason in result.failed[:_SHOWN_FAILURES]:
            click.echo(f"  {path}: {reason}")
        if len(result.failed) > _SHOWN_FAILURES:
            click.echo(f"  ... and {len(result.failed) - _SHOWN_FAILURES} more (all are listed in the file's meta 'failed')")
