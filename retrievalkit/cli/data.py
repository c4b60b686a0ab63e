"""``rkit data``: datasets. ``rkit data synth`` generates the embedded synthetic multi-view set.

(Downloading benchmark datasets will be a sibling sub-command of this group.)
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..config import write_resolved_config
from ..errors import Interrupted, RkitError
from ..interrupt import rerun_command


@click.group("data")
def group() -> None:
    """Datasets: generate the synthetic set, download benchmarks."""


def _parse_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise RkitError(f"--size {value!r} is not WIDTHxHEIGHT. Write it like 480x360.") from None
    return width, height


@group.command("synth")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to create (images/<scene>/<view>.jpg, ground_truth.json).")
@click.option("--preset", type=click.Choice(["default", "tiny"]), default="default", show_default=True,
              help="default: 5 scenes x 12 views at 480x360; tiny: 3 x 8 at 320x240 (tests).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same images).")
@click.option("--scenes", "num_scenes", type=int, default=None, help="Number of scenes (overrides the preset).")
@click.option("--views", "views_per_scene", type=int, default=None, help="Views per scene (overrides the preset).")
@click.option("--size", "size", default=None, metavar="WxH", help="Image size, e.g. 640x480 (overrides the preset).")
@click.option("--overwrite", is_flag=True,
              help="Replace OUT if it is an earlier `rkit data synth` set with other options (never a "
                   "folder rkit did not make, nor the current folder).")
def synth(out_dir: Path, preset: str, seed: int, num_scenes: int | None, views_per_scene: int | None,
          size: str | None, overwrite: bool) -> None:
    """Generate the synthetic multi-view dataset with its true cameras.

    Several procedurally textured 3D "buildings", each rendered from cameras on an arc with
    varied distance, height and roll. SfM (rkit sfm) reconstructs them; the true co-visibility
    is available from retrievalkit.synth.synthetic_ground_truth. Re-running with the same
    options on a complete folder does nothing; an interrupted run resumes.
    """
    from ..synth import generate_synthetic, is_complete_set, resolve_params

    params = resolve_params(preset, seed=seed, num_scenes=num_scenes, views_per_scene=views_per_scene,
                            image_size=_parse_size(size))
    summary = (f"{params.num_scenes} scenes x {params.views_per_scene} views, "
               f"{params.image_size[0]}x{params.image_size[1]} px, seed {params.seed}")
    if is_complete_set(out_dir, params):
        click.echo(f"{out_dir}: already complete ({summary}); nothing to do.")
        return
    start = time.perf_counter()
    try:
        path = generate_synthetic(out_dir, preset=preset, seed=seed, num_scenes=num_scenes,
                                  views_per_scene=views_per_scene, image_size=params.image_size,
                                  overwrite=overwrite, progress=True)
    except KeyboardInterrupt:
        raise Interrupted(kept=f"the views rendered so far (in a hidden .{out_dir.resolve().name}.partial-* "
                               f"folder beside {out_dir})", resume=rerun_command()) from None
    write_resolved_config(out_dir)
    click.echo(f"{path}: {summary} ({time.perf_counter() - start:.1f} s)")
