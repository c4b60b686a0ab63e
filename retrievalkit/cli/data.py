"""``rkit data``: datasets. ``rkit data synth`` generates the embedded synthetic multi-view set;
``rkit data download`` fetches the public benchmarks and training sets
(:mod:`retrievalkit.datafetch`, catalog in :mod:`retrievalkit.datasets_catalog`).
"""

from __future__ import annotations

import shlex
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


def _human(size: int | None) -> str:
    if size is None:
        return "size unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _print_plan(files, failed_hosts: dict[str, str], names: tuple[str, ...], root: Path) -> None:
    from ..datafetch import layout_lines

    click.echo("http:// URLs (as the authors publish them) are fetched as https:// unless --allow-http is given.")
    for item in files:
        state = "in place" if item.done else _human(item.size)
        target = item.destination if not item.remote.archive else f"{item.destination}/ (extracted)"
        click.echo(f"{item.url}\n    -> {target}  [{state}]")
    for host, reason in failed_hosts.items():
        click.echo(f"server unreachable: {host} ({reason}); sizes unknown, the plan above still holds")
    known = [f.size for f in files if not f.done and f.size is not None]
    todo = sum(1 for f in files if not f.done)
    click.echo(f"{todo} of {len(files)} files to fetch, {_human(sum(known))} known"
               + (f" ({todo - len(known)} of unknown size)" if todo > len(known) else ""))
    click.echo("layout:")
    for line in layout_lines(names, root):
        click.echo(f"  {line}")


@group.command("download")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None, envvar="RKIT_DATA",
              help="Data root the datasets go into (default: $RKIT_DATA). rkit eval/train read them from there.")
@click.option("--dry-run", is_flag=True, help="List URLs, target layout and sizes (HEAD); download nothing.")
@click.option("--jobs", type=click.IntRange(min=1, max=32), default=4, show_default=True,
              help="Files downloaded in parallel.")
@click.option("--allow-http", is_flag=True,
              help="Fetch http:// URLs over plain http (default: ask for https; the authors publish most "
                   "files over http). Integrity is still checked against the manifest.")
@click.option("--from-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of files you downloaded by hand (published names): used instead of the network.")
@click.option("--mirror", default=None, metavar="URL",
              help="Fetch https://HOST/PATH from URL/HOST/PATH instead (a local mirror).")
@click.option("--keep-archives", is_flag=True, help="Keep the .tar.gz archives in ROOT/.downloads after extraction.")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Retries per file (waiting 1, 2, 4 ... s), each resuming where the last stopped.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
def download(names: tuple[str, ...], root: Path | None, dry_run: bool, jobs: int, allow_http: bool,
             from_dir: Path | None, mirror: str | None, keep_archives: bool, retries: int, progress: bool) -> None:
    """Download datasets into the data root: roxford5k, rparis6k, revisitop1m, retrieval-sfm-120k,
    retrieval-sfm-30k.

    \b
    rkit data download roxford5k rparis6k --root data
    rkit data download --dry-run roxford5k rparis6k retrieval-sfm-120k
    rkit data download revisitop1m --jobs 8            (100 parts, about 400 GB; resumable)
    rkit data download roxford5k --from-dir ~/Downloads (files you fetched by hand)

    Interrupted downloads resume where they stopped; see docs/datasets.md.
    """
    from ..datafetch import data_root, execute, finish, plan, probe
    from ..datasets_catalog import lookup
    from ..download import Transfer

    names = tuple(lookup(n).name for n in names)
    data = data_root(root)
    transfer = Transfer(allow_http=allow_http or None, retries=retries)
    files = plan(names, data, mirror=mirror)
    if dry_run:
        _print_plan(files, probe([f for f in files if not f.done], transfer), names, data)
        return
    start = time.perf_counter()
    resume = " ".join(["rkit data download", *names, "--root", shlex.quote(str(data))]
                      + (["--allow-http"] if allow_http else []) + (["--mirror", shlex.quote(mirror)] if mirror else [])
                      + (["--from-dir", shlex.quote(str(from_dir))] if from_dir else []))
    if progress and from_dir is None:
        probe([f for f in files if not f.done], transfer)   # sizes for the overall progress bar
    errors = execute(files, data, transfer, jobs=jobs, from_dir=from_dir, keep_archives=keep_archives,
                     progress=progress, resume=resume)
    if errors:
        shown = "\n  ".join(errors[:10]) + (f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else "")
        raise RkitError(f"{len(errors)} of {len(files)} files could not be placed (the others are in place and "
                        f"kept; re-run the same command to resume):\n  {shown}")
    missing = finish(names, data)
    if missing:
        raise RkitError("downloaded, but these are still missing: " + "; ".join(missing))
    click.echo(f"{', '.join(names)}: in place under {data} ({time.perf_counter() - start:.1f} s)")
    from ..datafetch import layout_lines

    for line in layout_lines(names, data):
        click.echo(f"  {line}")
