"""Leave-landmarks-out fine-tuning on ../shared/data/landmarks: off-the-shelf vs m{1,2,3} x N{1,2}.

The SfM training database of all landmarks (``rkit sfm``, e.g. runs/landmarks_sfm) is filtered
to the images of the *training* landmarks; the network (EfficientNet-Lite0, ImageNet weights,
MAC) is fine-tuned on tuples mined there, and every photo of the *held-out* landmarks is then a
query against the other held-out photos (folder = class, SPEC section 5). For each run the
table gives mAP with no whitening (full D), with the learned whitening Lw (fitted by the
trainer on the training landmarks' mined pairs) and with PCA-whitening (fitted on the training
landmarks' descriptors) at each dimension the training data allows (a whitening learned from N
descriptors has at most N - 1 meaningful directions).

Off-the-shelf = the same pipeline with 0 epochs (the whitening is still learned, on pairs mined
by the off-the-shelf network).

    nice -n 10 python bench/bench_finetune_landmarks.py --sfm runs/landmarks_sfm \\
        --out runs/bench-finetune --section docs/bench-sections/05-training.md

Finished runs (``RUN/summary.json``) are reused, so an interrupted benchmark resumes, and the
results of several invocations with the same ``--out`` (e.g. another ``--loss`` with a
``--suffix``) are gathered in one ``results.json`` and table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from retrievalkit.errors import RkitError
from retrievalkit.evaluate import evaluate_folder_collection, folder_labels
from retrievalkit.extract import extract_descriptors, list_images
from retrievalkit.model import load_model
from retrievalkit.train import TrainConfig, subset_database, train
from retrievalkit.trainingdb import load_database
from retrievalkit.whitening import FittedWhitening, WhiteningData, fit_whitening

LANDMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "landmarks"
GRID = [("m1", "n1"), ("m1", "n2"), ("m2", "n1"), ("m2", "n2"), ("m3", "n1"), ("m3", "n2")]


def landmark_of(path: str) -> str:
    return Path(path).parts[0]


def evaluate(run: Path, eval_root: Path, eval_paths: list[str], train_db, image_size: int,
             dims: list[int]) -> dict:
    """mAP of the run's model on the held-out photos: raw, Lw and PCA at each dimension."""
    model = load_model(run / "model")
    model.set_whitening(None)
    started = time.perf_counter()
    test = extract_descriptors(model, eval_paths, root=eval_root, image_size=image_size, batch_size=8,
                               device="cpu", num_workers=0, progress=False)
    train_paths = [str(train_db.image_path(i)) for i in range(len(train_db))]
    training = extract_descriptors(model, train_paths, image_size=image_size, batch_size=8, device="cpu",
                                   num_workers=0, progress=False)
    labels = folder_labels(test.paths)
    out = {"none": evaluate_folder_collection(test.descriptors, labels).map,
           "dim": int(test.descriptors.shape[1]), "extract_s": round(time.perf_counter() - started, 1)}
    learned = FittedWhitening.load(run / "whitening.npz")
    pca = fit_whitening("pca", WhiteningData(training.descriptors))
    out["learned_max_dim"], out["pca_max_dim"] = learned.out_dim, pca.out_dim
    for dim in dims:
        if dim <= learned.out_dim:
            out[f"learned{dim}"] = evaluate_folder_collection(learned.truncated(dim).apply(test.descriptors), labels).map
        if dim <= pca.out_dim:
            out[f"pca{dim}"] = evaluate_folder_collection(pca.truncated(dim).apply(test.descriptors), labels).map
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sfm", type=Path, required=True, help="rkit sfm output (database of all landmarks)")
    parser.add_argument("--landmarks", type=Path, default=LANDMARKS)
    parser.add_argument("--holdout", default="sacre_coeur",
                        help="comma-separated landmarks of the database kept out of training (all landmarks "
                             "not reconstructed are held out too)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-finetune"))
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--tuples-per-batch", type=int, default=5)
    parser.add_argument("--dims", default="32,64,128")
    parser.add_argument("--grid", default=",".join(f"{m}+{n}" for m, n in GRID),
                        help="comma-separated MINER+NEGATIVES runs")
    parser.add_argument("--loss", default="contrastive", help="loss spec, e.g. contrastive:margin=0.9")
    parser.add_argument("--suffix", default="", help="appended to the fine-tuned runs' names (e.g. -margin0.9)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--section", type=Path, default=None, help="Markdown file to write")
    args = parser.parse_args()
    if not args.landmarks.is_dir():
        print(f"landmark photos not found at {args.landmarks}: nothing to benchmark", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    dims = [int(d) for d in args.dims.split(",")]
    db = load_database(args.sfm)
    holdout = {name.strip() for name in args.holdout.split(",") if name.strip()}
    db_landmarks = sorted({landmark_of(p) for p in db.images})
    train_landmarks = [name for name in db_landmarks if name not in holdout]
    keep = [i for i, p in enumerate(db.images) if landmark_of(p) in train_landmarks]
    train_db = subset_database(db, keep)
    root, all_paths = list_images(args.landmarks)
    eval_paths = [p for p in all_paths if landmark_of(p) not in train_landmarks]
    eval_landmarks = sorted({landmark_of(p) for p in eval_paths})
    print(f"training landmarks {train_landmarks}: {len(train_db)} registered images in {train_db.num_clusters} "
          f"models; held-out landmarks {eval_landmarks}: {len(eval_paths)} photos", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)

    runs = [("off-the-shelf", "m3", "n2", 0)] + [
        (f"{m}+{n}{args.suffix}", m, n, args.epochs) for m, n in (item.split("+") for item in args.grid.split(","))]
    earlier = args.out / "results.json"
    results = json.loads(earlier.read_text())["results"] if earlier.is_file() else {}  # several invocations add up
    for name, miner, negatives, epochs in runs:
        run = args.out / name
        if not (run / "summary.json").is_file():
            config = TrainConfig(run_dir=str(run), pooling="mac", miner=miner, negatives=negatives,
                                 num_negatives=args.num_negatives, epochs=epochs, queries_per_epoch=args.queries,
                                 tuples_per_batch=args.tuples_per_batch, lr=args.lr, image_size=args.image_size,
                                 loss=args.loss if epochs else "contrastive", whiten="learned", device="cpu",
                                 seed=args.seed, progress=False)
            started = time.perf_counter()
            try:
                train(config, resume=(run / "config.json").is_file(), database=train_db,
                      log=lambda m: print(f"[{name}] {m}", flush=True))
            except RkitError as exc:
                print(f"[{name}] failed: {exc}", flush=True)
                results[name] = {"error": str(exc)}
                continue
            print(f"[{name}] trained in {time.perf_counter() - started:.0f} s", flush=True)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] \
            if (run / "metrics.jsonl").is_file() else []
        scores = evaluate(run, root, eval_paths, train_db, args.image_size, dims)
        results[name] = {"metrics": metrics, **scores}
        print(f"[{name}] {json.dumps(scores)}", flush=True)
    report = {"train_landmarks": train_landmarks, "eval_landmarks": eval_landmarks,
              "train_images": len(train_db), "eval_images": len(eval_paths), "args": {
                  k: str(v) for k, v in vars(args).items()}, "results": results,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"}
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_losses(results, args.out / "loss.png")
    text = markdown(report, dims)
    print(text)
    if args.section:
        args.section.parent.mkdir(parents=True, exist_ok=True)
        args.section.write_text(text)
    return 0


def plot_losses(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, result in results.items():
        metrics = result.get("metrics") or []
        if metrics:
            ax.plot([m["epoch"] for m in metrics], [m["loss"] for m in metrics], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean contrastive loss per tuple")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(report: dict, dims: list[int]) -> str:
    results = report["results"]
    columns = ["none"] + [f"learned{d}" for d in dims] + [f"pca{d}" for d in dims]
    lines = ["| run | " + " | ".join(c if c == "none" else c.replace("learned", "Lw ").replace("pca", "PCA ") + " D"
                                     for c in columns) + " | loss ep1 -> last | tuples/s | mining s/epoch |",
             "|---" * (len(columns) + 4) + "|"]
    for name, result in results.items():
        if "error" in result:
            lines.append(f"| {name} | failed: {result['error']} |")
            continue
        cells = [f"{result[c]:.3f}" if c in result else "n/a" for c in columns]
        metrics = result["metrics"]
        loss = f"{metrics[0]['loss']:.3f} -> {metrics[-1]['loss']:.3f}" if metrics else "-"
        speed = f"{np.mean([m['tuples_per_s'] for m in metrics]):.2f}" if metrics else "-"
        mining = f"{np.mean([m['mining_s'] for m in metrics]):.1f}" if metrics else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {loss} | {speed} | {mining} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
