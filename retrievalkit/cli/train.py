"""``rkit train``: fine-tune a model on tuples mined from an SfM database (a thin layer over
:mod:`retrievalkit.train`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from click.core import ParameterSource

from ..settings import TrainConfig
from .options import component_callback

_DEFAULTS = TrainConfig()
#: Sources that count as "the user asked for this value" when resuming.
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.DEFAULT_MAP)


@click.command("train")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Training database: an `rkit sfm` output folder, a retrieval-SfM db.pkl, or a downloaded "
                   "set by name (retrieval-sfm-120k, retrieval-sfm-30k under $RKIT_DATA). "
                   "Omitted: the embedded synthetic set (built once, cached in $RKIT_CACHE, default ~/.cache/retrievalkit).")
@click.option("--images-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the images of a db.pkl.")
@click.option("--val", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Validation images, one folder per class: mAP after every epoch.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(_DEFAULTS.run_dir),
              show_default=True, help="Where config, metrics, checkpoints and the model go.")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its last checkpoint.")
@click.option("--backbone", default=_DEFAULTS.backbone, show_default=True, callback=component_callback("backbone"),
              help="Backbone component.")
@click.option("--weights", default=_DEFAULTS.weights, show_default=True,
              help="Initial backbone weights: imagenet, none, or a local state dict.")
@click.option("--pooling", default=_DEFAULTS.pooling, show_default=True, callback=component_callback("pooling"),
              help="Pooling: mac, spoc, gem ... Default mac, the pooling the paper fine-tunes (the contrastive "
                   "margin 0.7 is tuned for it); `rkit extract` defaults to gem, the best without fine-tuning "
                   "(docs/definitions.md §1). The saved model keeps its pooling.")
@click.option("--miner", default=_DEFAULTS.miner, show_default=True, callback=component_callback("miner"),
              help="Positive miner: m1, m2, m3 (m3:t_i=0.2:t_s=1.5), random-positive.")
@click.option("--negatives", default=_DEFAULTS.negatives, show_default=True, callback=component_callback("miner"),
              help="Negative miner: n1, n2, random-negative.")
@click.option("--num-negatives", type=click.IntRange(min=1), default=_DEFAULTS.num_negatives, show_default=True,
              help="Negatives per tuple (N).")
@click.option("--loss", default=_DEFAULTS.loss, show_default=True, callback=component_callback("loss"),
              help="Loss: contrastive (contrastive:margin=0.7), triplet (triplet:margin=0.1).")
@click.option("--epochs", type=click.IntRange(min=0), default=_DEFAULTS.epochs, show_default=True)
@click.option("--queries", "queries_per_epoch", type=click.IntRange(min=0), default=_DEFAULTS.queries_per_epoch,
              show_default=True, help="Queries (tuples) per epoch; 0 = every image with a positive.")
@click.option("--pool-size", type=click.IntRange(min=0), default=_DEFAULTS.pool_size, show_default=True,
              help="Random candidate negatives per epoch; 0 = all images.")
@click.option("--tuples-per-batch", type=click.IntRange(min=1), default=_DEFAULTS.tuples_per_batch,
              show_default=True, help="Tuples whose gradients are summed per optimizer step.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default=_DEFAULTS.optimizer, show_default=True)
@click.option("--lr", type=float, default=_DEFAULTS.lr, show_default=True, help="Learning rate.")
@click.option("--momentum", type=float, default=_DEFAULTS.momentum, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=float, default=_DEFAULTS.weight_decay, show_default=True)
@click.option("--lr-decay", type=click.FloatRange(min=0), default=_DEFAULTS.lr_decay, show_default=True,
              help="Learning rate of epoch e = lr * exp(-lr_decay * e) (the authors' schedule); 0: constant.")
@click.option("--image-size", type=click.IntRange(min=32), default=_DEFAULTS.image_size, show_default=True,
              help="Longest image side (pixels) for training and mining.")
@click.option("--freeze-bn/--train-bn", default=_DEFAULTS.freeze_bn, show_default=True,
              help="Keep batch-norm statistics frozen (recommended: a few images per forward pass give "
                   "meaningless batch statistics).")
@click.option("--whiten", default=_DEFAULTS.whiten, show_default=True, callback=component_callback("whitening"),
              help="Whitening learned after training on the mined pairs: learned, pca, none.")
@click.option("--whiten-dim", type=click.IntRange(min=1), default=None,
              help="Output dimension of the whitening (default: all meaningful directions).")
@click.option("--device", default=_DEFAULTS.device, show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=_DEFAULTS.precision,
              show_default=True, help="auto: bf16 autocast on a CUDA GPU that has it, else fp32. fp16 adds a "
                                      "gradient scaler. Reduced precision needs CUDA.")
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True)
@click.option("--workers", "num_workers", type=click.IntRange(min=0), default=_DEFAULTS.num_workers,
              show_default=True, help="Image-decoding processes (training and mining); 0: decode in-process.")
@click.option("--threads", type=click.IntRange(min=0), default=_DEFAULTS.threads, show_default=True,
              help="CPU threads for torch per process (0: the CPUs this process may use, by affinity, "
                   "cgroup quota and OMP_NUM_THREADS, less one per worker).")
@click.option("--checkpoint-every", default=_DEFAULTS.checkpoint_every, show_default=True,
              help="Checkpoint inside an epoch every N seconds (600, 10m, 1h) or N tuples (200t); 0: only "
                   "at the end of each epoch.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@click.pass_context
def command(ctx: click.Context, resume: bool, **options: object) -> None:
    """Fine-tune a model on an SfM training database (Radenović et al. 2016).

    Every epoch: draw queries, mine a positive (--miner) and hard negatives (--negatives) with
    the current network, train on the tuples. Then learn the whitening on the mined pairs and
    save the model to RUN_DIR/model, ready for `rkit extract/eval --model RUN_DIR/model`.

    \b
    rkit train --pooling mac --miner m3 --whiten learned
    rkit train --data runs/sfm --val photos/ --miner m3 --negatives n2 --epochs 10
    rkit train --run-dir runs/train --resume        (after an interruption)
    torchrun --nproc-per-node 4 -m retrievalkit train --data runs/sfm   (4 GPUs)
    """
    from ..outputs import check_output_path

    check_output_path(options["run_dir"], [options[k] for k in ("data", "images_root", "val")], option="--run-dir")
    from ..train import read_saved_config, train  # torch: only once the command runs

    values = {key: (str(value) if isinstance(value, Path) else value) for key, value in options.items()}
    if resume:
        saved = read_saved_config(values["run_dir"])
        given = {key for key in values if ctx.get_parameter_source(key) in _GIVEN}
        values = {**saved, **{key: values[key] for key in given}, "run_dir": values["run_dir"]}
    from ..datafetch import resolve_training_data

    values["data"], values["images_root"] = resolve_training_data(values.get("data"), values.get("images_root"))
    config = TrainConfig.from_dict(values)
    write_config: Callable[[], None] | None = None
    if not resume:
        from ..config import write_resolved_config

        def write_config() -> None:
            write_resolved_config(Path(config.run_dir), ctx)

    result = train(config, resume=resume, log=lambda message: click.echo(message, err=True), on_start=write_config)
    if result.summary:   # rank 0 under torchrun (the other ranks saved nothing)
        click.echo(f"model saved to {result.model_dir}")
        click.echo(f"use it with: rkit eval IMAGES --model {result.model_dir}  (or rkit extract ... --model)")
