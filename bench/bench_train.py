"""Training engine benchmarks: throughput vs the old loop, memory over an epoch, a shared CPU.

Three measurements, each run in fresh processes, one after the other, reported side by side:

``throughput``  training tuples/s of the engine (DataLoader ``--workers``, shape-grouped forward
                passes, threads chosen by ``retrievalkit.device``) against the one-image-per-
                forward loop of commit 2775992 (its ``retrievalkit/train.py``, loaded from git
                into a temporary module), same network (EfficientNet-Lite0 + MAC, ImageNet
                weights), same seed, queries, miners and image size, on the landmark photos
                (one 3D model per folder; ``random-positive`` + ``n2``, since the folders have no
                3D points). Only the training phase is timed (``training_s`` in metrics.jsonl).
``memory``      memory (PSS of the training process and its workers, from /proc) sampled over
                one 200-tuple epoch on generated small images, engine vs old loop: the old loop
                keeps every decoded image for the epoch, the engine keeps none.
``contention``  the engine's tuples/s alone, then beside two CPU-heavy processes (numpy matrix
                products on all cores); also the old loop with torch's default threads.

    python bench/bench_train.py throughput --size 224 --queries 12
    python bench/bench_train.py memory --tuples 200 --size 96
    python bench/bench_train.py contention --size 160 --queries 8
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LANDMARKS = REPO.parent / "shared" / "data" / "landmarks"
OLD_COMMIT = "2775992"


def old_engine():
    """``retrievalkit/train.py`` of :data:`OLD_COMMIT` as the module ``retrievalkit._train_old``."""
    source = subprocess.check_output(["git", "show", f"{OLD_COMMIT}:retrievalkit/train.py"], cwd=REPO, text=True)
    spec = importlib.util.spec_from_loader("retrievalkit._train_old", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "retrievalkit"
    sys.modules[spec.name] = module
    exec(compile(source, f"{OLD_COMMIT}:retrievalkit/train.py", "exec"), module.__dict__)
    return module


def landmarks_database():
    from retrievalkit.extract import list_images
    from retrievalkit.trainingdb import TrainingDatabase

    root, paths = list_images(LANDMARKS)
    clusters = [sorted({p.split("/")[0] for p in paths}).index(p.split("/")[0]) for p in paths]
    return TrainingDatabase(images=paths, clusters=clusters, root=root)


def generated_database(folder: Path, models: int = 12, views: int = 20):
    """``models`` x ``views`` 240x180 photos-like pictures (noise textures), one model each."""
    from PIL import Image

    from retrievalkit.trainingdb import TrainingDatabase

    rng = np.random.default_rng(0)
    images, clusters = [], []
    for model in range(models):
        base = rng.integers(0, 255, size=(45, 60, 3), dtype=np.uint8)
        for view in range(views):
            name = f"m{model:02d}/v{view:02d}.jpg"
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            picture = np.roll(base, view, axis=1)
            Image.fromarray(picture).resize((240, 180) if view % 4 else (180, 240)).save(folder / name)
            images.append(name)
            clusters.append(model)
    return TrainingDatabase(images=images, clusters=clusters, root=folder)


def run_training(engine: str, run_dir: Path, data: str, options: dict) -> dict:
    """One training run in this process; returns its epoch metrics (first epoch)."""
    import torch

    if data == "landmarks":
        db = landmarks_database()
    else:
        db = generated_database(Path(data))
    if engine == "old":
        module = old_engine()
        torch.set_num_threads(options.pop("old_threads", torch.get_num_threads()))
        options.pop("num_workers", None)
        config = module.TrainConfig(run_dir=str(run_dir), **options)
    else:
        from retrievalkit import train as module

        options.pop("old_threads", None)
        config = module.TrainConfig(run_dir=str(run_dir), **options)
    result = module.train(config, database=db, log=lambda m: print(m, file=sys.stderr, flush=True))
    metrics = result.metrics[0]
    metrics["torch_threads"] = torch.get_num_threads()
    return metrics


def child(args: argparse.Namespace) -> int:
    options = json.loads(args.options)
    metrics = run_training(args.engine, Path(args.run_dir), args.data, options)
    print("RESULT " + json.dumps(metrics), flush=True)
    return 0


def pss_of_tree(pid: int) -> float:
    """Proportional set size (MB) of ``pid`` and its descendants (shared pages split fairly)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total


def launch(engine: str, data: str, options: dict, sample_memory: bool = False) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-train-{engine}-")) / "run"
    command = [sys.executable, __file__, "child", "--engine", engine, "--run-dir", str(run_dir),
               "--data", data, "--options", json.dumps(options)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []

    def sample() -> None:
        while process.poll() is None:
            samples.append((time.perf_counter() - started, pss_of_tree(process.pid)))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        sampler.start()
    output = process.communicate()[0]
    if process.returncode:
        raise SystemExit(f"{engine} run failed ({process.returncode})")
    metrics = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
    metrics["wall_s"] = time.perf_counter() - started
    if sample_memory:
        sampler.join()
        metrics["pss_samples"] = samples
    return metrics


def base_options(args: argparse.Namespace) -> dict:
    return dict(backbone="efficientnet-lite0", pooling="mac", weights="imagenet", miner="random-positive",
                negatives="n2", num_negatives=5, epochs=1, queries_per_epoch=args.queries, tuples_per_batch=5,
                image_size=args.size, whiten="none", device="cpu", progress=False, seed=0,
                num_workers=args.workers)


def throughput(args: argparse.Namespace) -> list[dict]:
    """The old loop with torch's default threads and with 1 thread (its best on a busy CPU),
    then the engine."""
    rows = []
    variants = {"old-default": ("old", "old loop, torch default threads", {}),
                "old-1thread": ("old", "old loop, 1 thread", {"old_threads": 1}),
                "new": ("new", f"engine, --workers {args.workers}", {})}
    chosen = args.engines.split(",") if args.engines != "new" else list(variants)
    for engine, label, extra in (variants[name] for name in chosen):
        metrics = launch(engine, "landmarks", {**base_options(args), **extra})
        rows.append({"engine": label, "tuples": metrics["tuples_trained"], "tuples_per_s": metrics["tuples_per_s"],
                     "training_s": metrics["training_s"], "mining_s": metrics["mining_s"],
                     "torch_threads": metrics["torch_threads"], "loss": metrics["loss"]})
        print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["engine_speedup_over_this"] = round(rows[-1]["tuples_per_s"] / row["tuples_per_s"], 2)
    return rows


def memory(args: argparse.Namespace) -> list[dict]:
    folder = Path(tempfile.mkdtemp(prefix="bench-train-images-"))
    generated_database(folder)
    options = {**base_options(args), "queries_per_epoch": args.tuples, "negatives": "random-negative"}
    rows = []
    for engine in args.engines.split(","):   # the old loop with 1 thread: its fastest on a busy CPU
        metrics = launch(engine, str(folder), {**options, "old_threads": 1}, sample_memory=True)
        samples, wall = metrics["pss_samples"], metrics["wall_s"]
        quarters = [[mb for t, mb in samples if wall * (q - 0.25) < t <= wall * q] or [0.0]
                    for q in (0.25, 0.5, 0.75, 1.0)]
        rows.append({"engine": engine, "tuples": metrics["tuples_trained"], "wall_s": round(wall, 1),
                     "tuples_per_s": metrics["tuples_per_s"],
                     "max_pss_mb_per_quarter": [round(max(v)) for v in quarters],
                     "median_pss_mb_per_quarter": [round(float(np.median(v))) for v in quarters]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def burner() -> subprocess.Popen:
    code = ("import numpy as np\na = np.random.rand(700, 700)\n"
            "while True:\n    a = (a @ a); a /= np.abs(a).max()\n")
    return subprocess.Popen([sys.executable, "-c", code])


def contention(args: argparse.Namespace) -> list[dict]:
    rows = []
    labels = {"new": "engine (threads from affinity/quota, 2 workers)", "old": "old loop (torch default threads)"}
    for engine, label in ((e, labels[e]) for e in args.engines.split(",")):
        alone = launch(engine, "landmarks", base_options(args))
        burners = [burner(), burner()]
        try:
            busy = launch(engine, "landmarks", base_options(args))
        finally:
            for process in burners:
                process.kill()
        rows.append({"engine": label, "alone_tuples_per_s": alone["tuples_per_s"],
                     "beside_two_busy_tuples_per_s": busy["tuples_per_s"],
                     "slowdown": round(alone["tuples_per_s"] / busy["tuples_per_s"], 2),
                     "torch_threads": alone["torch_threads"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["throughput", "memory", "contention", "child"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--tuples", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engines", default="new", help="memory, contention: new and/or old; throughput: old-default, old-1thread, new (default: all)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "child":
        return child(args)
    if args.mode != "memory" and not LANDMARKS.is_dir():
        raise SystemExit(f"the landmark photos are not at {LANDMARKS}")
    rows = {"throughput": throughput, "memory": memory, "contention": contention}[args.mode](args)
    record = {"mode": args.mode, "args": {k: v for k, v in vars(args).items() if k in ("size", "queries", "tuples",
                                                                                      "workers")},
              "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "rows": rows}
    print(json.dumps(record, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
