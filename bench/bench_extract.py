"""Extraction throughput and peak memory: ``extract_descriptors`` against a one-image-at-a-time loop.

Same model (EfficientNet-Lite0, ImageNet weights, GeM), same photos (every 4th of the landmarks:
31 photos of 9 places, several shapes), at two sizes (longest side 448 and 1024 px), all under
``torch.inference_mode`` on CPU. Three pipelines, each run in a fresh process so that its peak
resident memory (``ru_maxrss``) is its own, interleaved size by size:

* ``one-image loop``: what one writes by hand: PIL open, convert, resize, forward, one image
  after the other in the main process;
* ``batch 16, before``: ``extract_descriptors`` as it was (batches of up to 16 images of one
  shape whatever their size, glibc's default malloc behaviour);
* ``extract_descriptors``: as it is now (pixel budget per batch, freed memory reused during the
  extraction, 2 decoding workers).

Wall time, images/s, CPU time (user and system, this process and its workers), minor page faults
and peak RSS of the main process are reported; the ratios are what to compare, as the absolute
times depend on the other jobs on the machine.

    python bench/bench_extract.py --out docs/bench-sections/02-extraction.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_LANDMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "landmarks"
PIPELINES = ("one-image loop", "batch 16, before", "extract_descriptors")


def _photos(folder: Path, every: int) -> tuple[Path, list[str]]:
    from retrievalkit.images import list_images

    root, paths = list_images(folder)
    return root, paths[::every]


def run_one(pipeline: str, folder: Path, every: int, size: int, threads: int) -> dict:
    """Run one pipeline in this process and measure it (called in a fresh subprocess)."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    import retrievalkit.extract as extract_module
    from retrievalkit.images import resized_shape
    from retrievalkit.model import ModelConfig, build_model

    torch.set_num_threads(threads)
    root, paths = _photos(folder, every)
    model = build_model(ModelConfig("efficientnet-lite0", "gem", "imagenet")).eval()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if pipeline == "one-image loop":
        out = []
        with torch.inference_mode():
            for path in paths:
                image = Image.open(root / path).convert("RGB")
                height, width = resized_shape(image.width, image.height, size)
                image = image.resize((width, height), Image.Resampling.BICUBIC)
                out.append(model(to_tensor(image)[None])[0].numpy())
        descriptors = np.stack(out)
    else:
        old = pipeline == "batch 16, before"
        if old:
            extract_module.reuse_freed_memory = contextlib.nullcontext
        descriptors = extract_module.extract_descriptors(
            model, paths, root=root, image_size=size, batch_size=16, num_workers=2, device="cpu",
            progress=False, max_batch_pixels=None if old else extract_module.DEFAULT_BATCH_PIXELS).descriptors
    seconds = time.perf_counter() - start
    after, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"pipeline": pipeline, "size": size, "images": len(paths), "seconds": seconds,
            "user": after.ru_utime - before.ru_utime + children.ru_utime,
            "system": after.ru_stime - before.ru_stime + children.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt, "peak_rss_gb": after.ru_maxrss / 1e6,
            "descriptors": descriptors.tolist()}


def _table(results: list[dict], sizes: list[int], threads: int, images: int) -> list[str]:
    import numpy as np

    lines = [
        "## Extraction throughput and memory",
        "",
        f"{images} landmark photos (every 4th of ../shared/data/landmarks), EfficientNet-Lite0 ImageNet + GeM, "
        f"CPU ({threads} torch threads, {platform.machine()}; a 2-core machine shared with other jobs, so "
        "compare the ratios, measured side by side in one run; each pipeline in a fresh process).",
        "",
        "| size | pipeline | wall s | images/s | vs one-image loop | user s | system s | minor faults | "
        "peak RSS GB | min cosine vs loop |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        rows = {r["pipeline"]: r for r in results if r["size"] == size}
        base = rows["one-image loop"]
        for name in PIPELINES:
            r = rows[name]
            cosine = float(np.min(np.sum(np.asarray(r["descriptors"]) * np.asarray(base["descriptors"]), axis=1)))
            lines.append(f"| {size} | {name} | {r['seconds']:.1f} | {r['images'] / r['seconds']:.2f} | "
                         f"{base['seconds'] / r['seconds']:.2f}x | {r['user']:.1f} | {r['system']:.1f} | "
                         f"{r['minor_faults'] / 1e6:.2f} M | {r['peak_rss_gb']:.2f} | {cosine:.4f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_LANDMARKS)
    parser.add_argument("--every", type=int, default=4, help="Use every N-th photo (4: 31 of the 124).")
    parser.add_argument("--sizes", default="448,1024")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file for the results.")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: PIPELINE@SIZE
    args = parser.parse_args()
    if not args.images.is_dir():
        print(f"no images at {args.images}: pass --images FOLDER", file=sys.stderr)
        return 2
    if args.one is not None:
        pipeline, size = args.one.rsplit("@", 1)
        print(json.dumps(run_one(pipeline, args.images, args.every, int(size), args.threads)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for size in sizes:
        for pipeline in PIPELINES:
            done = subprocess.run([sys.executable, __file__, "--images", str(args.images), "--every", str(args.every),
                                   "--threads", str(args.threads), "--one", f"{pipeline}@{size}"],
                                  capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"{size} px, {pipeline}: {result['seconds']:.1f} s, {result['images'] / result['seconds']:.2f} img/s, "
                  f"system {result['system']:.1f} s, peak {result['peak_rss_gb']:.2f} GB", flush=True)
    lines = _table(results, sizes, args.threads, results[0]["images"])
    lines += ["", "Reproduce:", "", "```",
              f"python bench/bench_extract.py --sizes {args.sizes} --every {args.every} "
              f"--threads {args.threads} --out docs/bench-sections/02-extraction.md", "```", ""]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        from retrievalkit.atomic import write_text_atomic

        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
