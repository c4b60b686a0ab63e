"""Training throughput: tuples per second of training and seconds per epoch of mining.

Trains EfficientNet-Lite0 + MAC (ImageNet weights) for a few epochs on a training database at
each image size asked for, with each negative miner, and reports from the run's
``metrics.jsonl``: training tuples/s (forward + backward of the 2 + N images of a tuple and the
optimizer steps) and mining seconds per epoch (extracting the queries' and the pool's
descriptors with the current network, then the faiss search and the miners).

    nice -n 10 python bench/bench_train_sizes.py --data runs/landmarks_sfm --sizes 224,320 \\
        --negatives n1,n2 --out runs/bench-train

``--data`` may also be the synthetic set's database that ``rkit train`` caches
(``RUN_DIR/synthetic-sfm``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from retrievalkit.train import TrainConfig, train
from retrievalkit.trainingdb import load_database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="rkit sfm output / training database")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-train"))
    parser.add_argument("--sizes", default="224,320")
    parser.add_argument("--negatives", default="n1,n2")
    parser.add_argument("--miner", default="m3")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    db = load_database(args.data)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for negatives in args.negatives.split(","):
            run = args.out / f"{args.miner}-{negatives}-{size}"
            if run.exists():
                shutil.rmtree(run)  # timings must come from a fresh run
            config = TrainConfig(run_dir=str(run), pooling="mac", miner=args.miner, negatives=negatives,
                                 num_negatives=args.num_negatives, epochs=args.epochs, queries_per_epoch=args.queries,
                                 image_size=size, whiten="none", device="cpu", progress=False)
            result = train(config, database=db, log=lambda m: print(m, flush=True))
            metrics = result.metrics
            rows.append({"size": size, "miner": args.miner, "negatives": negatives,
                         "tuples_per_s": float(np.mean([m["tuples_per_s"] for m in metrics])),
                         "training_s_per_epoch": float(np.mean([m["training_s"] for m in metrics])),
                         "mining_s_per_epoch": float(np.mean([m["mining_s"] for m in metrics])),
                         "tuples_per_epoch": int(np.mean([m["tuples_trained"] for m in metrics]))})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{len(db)} images, {db.num_clusters} models; {args.queries} queries/epoch, "
          f"{args.num_negatives} negatives, {args.epochs} epochs; {platform.machine()}, "
          f"{torch.get_num_threads()} torch threads\n")
    print("| image size | miners | tuples/s (train) | training s/epoch | mining s/epoch |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['size']} | {row['miner']}+{row['negatives']} | {row['tuples_per_s']:.2f} | "
              f"{row['training_s_per_epoch']:.1f} | {row['mining_s_per_epoch']:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
