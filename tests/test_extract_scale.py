"""Sharded and distributed extraction give exactly the single-process descriptors; the merge
refuses shards that do not belong together or do not cover every image once.

Tiny random images, a saved EfficientNet-Lite0 with seeded random weights, CPU. torch's CPU
kernels may order a reduction by the thread count, so every run here uses one thread (torchrun
sets OMP_NUM_THREADS=1 for its processes): then the results are bitwise identical.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from clirun import torchrun
from retrievalkit.cli import main
from retrievalkit.descriptors import DescriptorSet
from retrievalkit.model import ModelConfig, build_model

SIZES = [(96, 64), (64, 96), (96, 64), (80, 80), (96, 64), (96, 64), (64, 96)]
COMMON = ["--image-size", "96", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for every in-process run of this module, whatever earlier tests set (an in-process
    `rkit train` chooses its own count), so the results compare bit for bit with torchrun's ranks."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Seven small random images (three shapes), one unreadable file, a saved random-weight model."""
    folder = tmp_path_factory.mktemp("scale")
    images = folder / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "bad.jpg").write_bytes(b"not a jpeg")
    torch.manual_seed(0)
    build_model(ModelConfig("efficientnet-lite0", "gem", "none")).save(folder / "model")
    return folder


def run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


@pytest.fixture(scope="module")
def single(collection):
    out = collection / "single.npz"
    assert run(["extract", str(collection / "imgs"), "--model", str(collection / "model"), *COMMON,
                "--out", str(out)]) == 0
    return DescriptorSet.load(out)


def test_shards_merged_equal_one_process(collection, single, capsys) -> None:
    shards = []
    for k in (1, 2, 3):
        shard = collection / f"part{k}.npz"
        assert run(["extract", str(collection / "imgs"), "--model", str(collection / "model"), *COMMON,
                    "--shard", f"{k}/3", "--out", str(shard)]) == 0
        shards.append(str(shard))
    out = collection / "merged.npz"
    assert run(["merge", *shards[::-1], "--out", str(out)]) == 0, capsys.readouterr().err
    merged = DescriptorSet.load(out)
    assert merged.paths == single.paths == [f"{i}.png" for i in range(7)]
    np.testing.assert_array_equal(merged.descriptors, single.descriptors)
    assert [p for p, _ in merged.meta["failed"]] == ["bad.jpg"]
    assert merged.meta["model"] == single.meta["model"]


@pytest.mark.parametrize("case, message", [
    ("missing", "missing 3/3"),
    ("twice", "given twice 1/3"),
    ("other", "shards of different extractions"),
    ("not a shard", "not an extraction shard file"),
])
def test_merge_refuses_shards_that_do_not_belong_together(collection, single, capsys, case, message) -> None:
    parts = [str(collection / f"part{k}.npz") for k in (1, 2, 3)]
    if not all(os.path.exists(p) for p in parts):
        pytest.skip("needs the shards of test_shards_merged_equal_one_process")
    if case == "missing":
        given = parts[:2]
    elif case == "twice":
        given = [parts[0], parts[0], parts[1]]
    elif case == "other":
        other = collection / "other.npz"
        assert run(["extract", str(collection / "imgs"), "--model", str(collection / "model"), *COMMON[:-1],
                    "--no-progress", "--image-size", "64", "--shard", "3/3", "--out", str(other)]) == 0
        given = parts[:2] + [str(other)]
    else:
        given = parts[:2] + [str(collection / "single.npz")]
    capsys.readouterr()
    assert run(["merge", *given, "--out", str(collection / "never.npz")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (collection / "never.npz").exists()


def test_merge_refuses_an_incomplete_shard(collection, single, capsys) -> None:
    from retrievalkit.extract import load_pooled, save_pooled

    part = collection / "part1.npz"
    if not part.exists():
        pytest.skip("needs the shards of test_shards_merged_equal_one_process")
    header, pooled, failed = load_pooled(part)
    cut = collection / "cut1.npz"
    save_pooled(cut, header, dict(list(pooled.items())[1:]), failed)
    assert run(["merge", str(cut), str(collection / "part2.npz"), str(collection / "part3.npz"),
                "--out", str(collection / "never.npz")]) == 2
    assert "are in no shard" in capsys.readouterr().err


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_torchrun_two_ranks_write_one_file_equal_to_one_process(collection, single) -> None:
    out = collection / "ranks.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [*torchrun(2), "-m", "retrievalkit", "extract", str(collection / "imgs"), "--model", str(collection / "model"), *COMMON,
               "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = DescriptorSet.load(out)
    assert ranks.paths == single.paths
    np.testing.assert_array_equal(ranks.descriptors, single.descriptors)
    assert [p for p, _ in ranks.meta["failed"]] == ["bad.jpg"]
    assert done.stdout.count("wrote") == 1  # rank 0 only
    assert not list(collection.glob("ranks.partial*"))


def test_shard_numbers_and_rank_checkpoints() -> None:
    from pathlib import Path

    from retrievalkit.errors import RkitError
    from retrievalkit.shards import parse_shard, rank_checkpoint

    assert parse_shard("2/4") == (1, 4)
    for bad in ("0/4", "5/4", "2", "a/b", "1/0"):
        with pytest.raises(RkitError, match="write K/N"):
            parse_shard(bad)
    assert rank_checkpoint(Path("o.partial.npz"), (1, 4)) == Path("o.partial.rank2-of-4.npz")
    assert rank_checkpoint(Path("o.partial.npz"), (0, 1)) == Path("o.partial.npz")


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_an_interrupted_torchrun_extraction_resumes_from_each_ranks_checkpoint(tmp_path) -> None:
    """SIGTERM to torchrun while its ranks extract: each rank keeps its own checkpoint and says so;
    the same torchrun command then resumes both and writes the one-process descriptors."""
    import signal
    import time

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(48):
        Image.fromarray(rng.integers(0, 256, (180, 240, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
    torch.manual_seed(0)
    build_model(ModelConfig("efficientnet-lite0", "gem", "none")).save(tmp_path / "model")
    options = [str(images), "--model", str(tmp_path / "model"), "--image-size", "240", "--batch-size", "1",
               "--workers", "0", "--device", "cpu", "--no-progress", "--checkpoint-every", "0.001"]
    out = tmp_path / "ranks.npz"
    command = [*torchrun(2), "-m", "retrievalkit", "extract", *options, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    checkpoints = [tmp_path / f"ranks.partial.rank{k}-of-2.npz" for k in (1, 2)]
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not all(c.exists() for c in checkpoints) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)                   # torchrun passes it on to its ranks
    _, stderr = job.communicate(timeout=120)
    assert job.returncode != 0 and not out.exists(), f"the job ended before it was stopped: {stderr[-2000:]}"
    assert all(c.exists() for c in checkpoints), stderr[-3000:]
    assert "Interrupted: kept the descriptors finished so far in" in stderr, stderr[-3000:]
    assert "the same torchrun command with 2 processes" in stderr
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(f"resuming from {c}" in done.stderr for c in checkpoints), done.stderr[-3000:]
    assert run(["extract", *options, "--out", str(tmp_path / "one.npz")]) == 0
    resumed, single = DescriptorSet.load(out), DescriptorSet.load(tmp_path / "one.npz")
    assert resumed.paths == single.paths
    np.testing.assert_array_equal(resumed.descriptors, single.descriptors)
    assert not list(tmp_path.glob("*.partial*"))
