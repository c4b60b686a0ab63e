"""The training engine: DDP under torchrun (gloo, 2 processes on 127.0.0.1), checkpoints inside
an epoch, kill -9 / SIGTERM and --resume, DataLoader workers dying with their parent, damaged
checkpoints, thread and precision choices. Tiny images, a tiny random CNN (tests/tinytrain.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from retrievalkit.errors import RkitError
from retrievalkit.train import CHECKPOINT_NAME, METRICS_NAME, train
from clirun import torchrun
from tinytrain import config, make_database, make_host

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "tinytrain.py"
TIMING_KEYS = {"mining_s", "training_s", "tuples_per_s", "val_s"}

needs_gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tinydb")
    make_database(folder / "images").save(folder)
    return folder


def run_script(db_dir: Path, run_dir: Path, *options: str, resume: bool = False, env: dict | None = None,
               ranks: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable]
    if ranks > 1:
        launcher = torchrun(ranks)
    command = launcher + [str(SCRIPT), str(db_dir), str(run_dir), *options] + (["--resume"] if resume else [])
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), **(env or {})}
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=240)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model" / "weights.pt", weights_only=True)


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / METRICS_NAME).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def checkpoint_position(run_dir: Path) -> tuple[int, int]:
    state = torch.load(run_dir / CHECKPOINT_NAME, weights_only=True)
    position = json.loads(state["epoch_json"])["position"] if "epoch_json" in state else 0
    return int(state["epoch"]), int(position)


#: 2 epochs of 12 tuples, 3 steps of 4 tuples each. SGD: its update is linear in the gradient,
#: so between 1 and 2 ranks only the order of float sums differs (DDP's all-reduce). One torch
#: thread everywhere: the in-process and the subprocess runs must sum floats the same way.
OPTIONS = dict(loss="signal-contrastive", epochs=2, queries_per_epoch=12, tuples_per_batch=4, whiten="none",
               whiten_dim=None, optimizer="sgd", lr=0.05, negatives="n2", threads=1)
#: the largest difference allowed between the weights of a 2-rank and a 1-rank run
DDP_TOLERANCE = 1e-5


def as_args(**options) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in {**OPTIONS, **options}.items()]


@pytest.fixture(scope="module")
def reference(db_dir, tmp_path_factory) -> Path:
    """The uninterrupted 1-process run every other run is compared with (in this process)."""
    from retrievalkit.trainingdb import load_database

    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train(config(run_dir, **OPTIONS), database=load_database(db_dir), host=make_host(), log=lambda _: None)
    return run_dir


def resume_here(db_dir: Path, run_dir: Path, **options) -> list[str]:
    from retrievalkit.trainingdb import load_database

    messages: list[str] = []
    train(config(run_dir, **{**OPTIONS, **options}), resume=True, database=load_database(db_dir),
          host=make_host(), log=messages.append)
    return messages


def same_weights(a: Path, b: Path, atol: float = 0.0) -> bool:
    wa, wb = weights(a), weights(b)
    assert set(wa) == set(wb)
    return all(torch.allclose(wa[k], wb[k], atol=atol, rtol=0) if atol else torch.equal(wa[k], wb[k]) for k in wa)


@needs_gloo
def test_two_ranks_train_the_same_model_as_one_with_the_same_global_batch(db_dir, reference, tmp_path):
    two = run_script(db_dir, tmp_path / "two", *as_args(), ranks=2)
    assert two.returncode == 0, two.stderr
    assert same_weights(reference, tmp_path / "two", atol=DDP_TOLERANCE)
    ma, mb = metrics(reference), metrics(tmp_path / "two")
    assert [m["tuples_trained"] for m in ma] == [m["tuples_trained"] for m in mb] == [12, 12]
    for a, b in zip(ma, mb):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["queries_short_of_models"] == b["queries_short_of_models"]
    # only rank 0 wrote files: one metrics line per epoch, one summary
    assert len((tmp_path / "two" / METRICS_NAME).read_text().splitlines()) == 2
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["ranks"] == 2


@needs_gloo
def test_a_two_rank_run_stopped_by_sigterm_resumes_on_one_rank(db_dir, reference, tmp_path):
    # each rank has 2 tuples per step: its 3rd loss call is in step 2, so both stop after 8 tuples
    first = run_script(db_dir, tmp_path / "moved", *as_args(checkpoint_every="0"),
                       env={"RKIT_TEST_SIGNAL": "TERM:3"}, ranks=2)
    assert first.returncode != 0
    assert checkpoint_position(tmp_path / "moved") == (0, 8)
    resume_here(db_dir, tmp_path / "moved")
    assert same_weights(reference, tmp_path / "moved", atol=DDP_TOLERANCE)


def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(db_dir, reference, tmp_path):
    # the loss is called once per tuple: call 19 is in epoch 2, step 2 (tuples 17-20), after the
    # in-epoch checkpoint at 4 of 12 tuples of epoch 2
    killed = run_script(db_dir, tmp_path / "killed", *as_args(checkpoint_every="4t", num_workers=1),
                        env={"RKIT_TEST_SIGNAL": "KILL:19"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert checkpoint_position(tmp_path / "killed") == (1, 4)
    messages = resume_here(db_dir, tmp_path / "killed", checkpoint_every="4t", num_workers=1)
    assert any("epoch 2 at tuple 4 of 12" in m for m in messages)
    assert same_weights(reference, tmp_path / "killed")
    assert metrics(reference) == metrics(tmp_path / "killed")
    assert not list((tmp_path / "killed").glob(".pixels*"))


def test_sigterm_mid_epoch_leaves_a_resumable_checkpoint(db_dir, reference, tmp_path):
    # SIGTERM at tuple 6 of epoch 1: the step (tuples 5-8) finishes, a checkpoint is written
    stopped = run_script(db_dir, tmp_path / "stopped", *as_args(checkpoint_every="0"),
                         env={"RKIT_TEST_SIGNAL": "TERM:6"})
    assert stopped.returncode == 130, stopped.stderr
    assert "--resume" in stopped.stderr and "epoch 1, 8 of 12 tuples" in stopped.stderr
    assert checkpoint_position(tmp_path / "stopped") == (0, 8)
    resume_here(db_dir, tmp_path / "stopped")
    assert same_weights(reference, tmp_path / "stopped")
    assert metrics(reference) == metrics(tmp_path / "stopped")


WORKER_SCRIPT = """
import os, sys, time
import numpy as np, torch
from retrievalkit.tupledata import image_loader

class Slow(torch.utils.data.Dataset):
    def __len__(self): return 8
    def __getitem__(self, k):
        if k >= 2: time.sleep(120)   # stuck in an item: torch's own watchdog would not notice
        return torch.zeros(1)

loader = iter(image_loader(Slow(), 2, torch.device("cpu")))
next(loader)
children = [p.pid for p in loader._workers]
print(" ".join(map(str, children)), flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_dataloader_workers_exit_when_their_parent_is_killed(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(Path(f"/proc/{p}").exists() for p in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not any(_alive(p) for p in workers)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("finished")
    database = make_database(folder / "images")
    train(config(folder / "run", whiten="none", whiten_dim=None), database=database, host=make_host(),
          log=lambda _: None)
    return folder / "run", database


def resume_with_checkpoint(finished_run, tmp_path, write) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    write(run_dir / CHECKPOINT_NAME)
    train(config(run_dir, epochs=2, whiten="none", whiten_dim=None), resume=True, database=finished_run[1],
          host=make_host(), log=lambda _: None)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_resume_from_a_damaged_checkpoint_is_a_clear_error(finished_run, tmp_path, content):
    with pytest.raises(RkitError, match="not a readable rkit train checkpoint.*not used"):
        resume_with_checkpoint(finished_run, tmp_path, lambda path: path.write_bytes(content))


def test_resume_refuses_a_malicious_checkpoint_without_running_it(finished_run, tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(RkitError, match="not a readable rkit train checkpoint"):
        resume_with_checkpoint(finished_run, tmp_path / "a", lambda path: torch.save(
            {"epoch": Payload()}, path, pickle_module=pickle))
    assert not marker.exists()
    with pytest.raises(RkitError, match="not a complete rkit train checkpoint"):
        resume_with_checkpoint(finished_run, tmp_path / "b", lambda path: torch.save({"epoch": 1}, path))


def test_batched_forward_gives_the_one_image_at_a_time_descriptors(tmp_path):
    # with batch-norm frozen, a shape group through the network = each image alone
    from retrievalkit.model import build_model, ModelConfig
    from retrievalkit.train import set_batchnorm_frozen

    model = build_model(ModelConfig("tiny-cnn", "mac", "none"), make_host())
    model.train()
    set_batchnorm_frozen(model)
    images = torch.rand(5, 3, 48, 64)
    together = model(images)
    alone = torch.cat([model(images[i:i + 1]) for i in range(5)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_the_learning_rate_decays_per_epoch(tmp_path):
    result = train(config(tmp_path / "run", epochs=2, lr=1e-3, lr_decay=0.5, whiten="none", whiten_dim=None),
                   database=make_database(tmp_path / "images"), host=make_host(), log=lambda _: None)
    assert [m["lr"] for m in result.metrics] == pytest.approx([1e-3 * np.exp(-0.5), 1e-3 * np.exp(-1.0)])


def test_threads_follow_what_the_process_may_use(monkeypatch):
    from retrievalkit import device

    monkeypatch.setattr(device.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(device, "_cgroup_cpu_limit", lambda: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert device.compute_threads(0, workers=2) == 4
    assert device.compute_threads(0, workers=2, processes_per_machine=2) == 1
    assert device.compute_threads(3, workers=2) == 3
    monkeypatch.setattr(device, "_cgroup_cpu_limit", lambda: 2.5)  # a container quota of 2.5 CPUs
    assert device.usable_cpus() == 3 and device.compute_threads(0, workers=1) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert device.compute_threads(0, workers=0) == 1


def test_cgroup_quota_is_read_from_cpu_max(tmp_path):
    from retrievalkit.device import _cgroup_cpu_limit

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_limit(tmp_path) is None


def test_precision_choices():
    from retrievalkit.device import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None and resolve_precision("fp32", cpu) is None
    with pytest.raises(RkitError, match="CUDA"):
        resolve_precision("bf16", cpu)
    with pytest.raises(RkitError, match="precision"):
        resolve_precision("fp8", cpu)


def test_checkpoint_every_parses_seconds_and_tuples():
    from retrievalkit.trainstate import CheckpointEvery

    assert CheckpointEvery.parse("10m") == CheckpointEvery(600.0, "seconds")
    assert CheckpointEvery.parse("200t") == CheckpointEvery(200.0, "tuples")
    assert CheckpointEvery.parse("45") == CheckpointEvery(45.0, "seconds")
    assert CheckpointEvery.parse("200t").due(0.0, 190, 205) and not CheckpointEvery.parse("200t").due(0.0, 0, 5)
    with pytest.raises(RkitError, match="checkpoint-every"):
        CheckpointEvery.parse("often")


def test_making_a_loader_leaves_torchs_generator_alone():
    # a run resumed mid-epoch makes one loader fewer; dropout draws after it must not shift
    from retrievalkit.tupledata import image_loader

    torch.manual_seed(0)
    before = torch.get_rng_state()
    list(image_loader([torch.zeros(1)] * 3, 0, torch.device("cpu")))
    assert torch.equal(before, torch.get_rng_state())
