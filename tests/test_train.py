"""The trainer end to end on a tiny database built in code, with tiny images and a tiny CNN.

No pycolmap and no pretrained weights: 3 "places" x 4 views of 48x64 px generated pictures, a
two-layer random-weight backbone registered as a plugin (so this also checks the trainer knows
no component by name).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from retrievalkit.errors import RkitError
from retrievalkit.model import load_model
from retrievalkit.plugins import PluginHost
from retrievalkit.train import CHECKPOINT_NAME, METRICS_NAME, TrainConfig, subset_database, train
from retrievalkit.trainingdb import TrainingDatabase

from tinytrain import TinyBackbone, make_database, make_host  # tiny-cnn backbone, nan-after loss, 3 x 4 views

TIMING_KEYS = {"mining_s", "training_s", "tuples_per_s", "val_s"}


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return make_host()


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> TrainingDatabase:
    return make_database(tmp_path_factory.mktemp("tinydb"))


def config(run_dir: Path, **overrides) -> TrainConfig:
    values = dict(run_dir=str(run_dir), backbone="tiny-cnn", pooling="mac", weights="none", miner="m2",
                  negatives="n2", num_negatives=2, epochs=1, queries_per_epoch=6, tuples_per_batch=2,
                  lr=1e-3, image_size=64, whiten="learned", whiten_dim=4, device="cpu", seed=3,
                  progress=False)
    values.update(overrides)
    return TrainConfig(**values)


def without_timings(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in metrics]


def test_one_epoch_writes_a_complete_run(tmp_path, database, host):
    torch.set_num_threads(1)
    result = train(config(tmp_path / "run"), database=database, host=host, log=lambda _: None)
    run = tmp_path / "run"
    lines = (run / METRICS_NAME).read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["epoch"] == 1 and record["queries"] == 6 and record["tuples"] == 6
    assert record["tuples_trained"] == 6 and record["queries_without_positive"] == 0
    assert np.isfinite(record["loss"]) and record["loss"] > 0
    assert 0 < record["mean_positive_distance"] < 2 and 0 < record["mean_negative_distance"] < 2
    assert {"mining_s", "training_s", "tuples_per_s"} <= set(record)
    saved = json.loads((run / "config.json").read_text())["options"]
    assert saved == config(run).to_dict()
    state = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 1 and "optimizer" in state and "numpy_rng" in state
    # the saved model carries the whitening and loads with the public loader
    model = load_model(result.model_dir, host)
    assert model.out_dim == 4
    assert result.summary["whitening"]["out_dim"] == 4
    with torch.no_grad():
        out = model(torch.rand(1, 3, 48, 64))
    assert out.shape == (1, 4) and float(out.norm()) == pytest.approx(1.0, abs=1e-5)


def test_validation_map_is_recorded_every_epoch(tmp_path, database, host):
    # the tiny database's own folders (place0..2) double as a folder-per-class validation set
    result = train(config(tmp_path / "val", epochs=2, whiten="none", whiten_dim=None, val=str(database.root)),
                   database=database, host=host, log=lambda _: None)
    assert [m["epoch"] for m in result.metrics] == [1, 2]
    assert all(0.0 < m["val_map"] <= 1.0 and m["val_s"] >= 0 for m in result.metrics)


def test_training_changes_the_weights_and_a_seed_repeats_them(tmp_path, database, host):
    a = train(config(tmp_path / "a", whiten="none", whiten_dim=None), database=database, host=host, log=lambda _: None)
    b = train(config(tmp_path / "b", whiten="none", whiten_dim=None), database=database, host=host, log=lambda _: None)
    wa = torch.load(a.model_dir / "weights.pt", weights_only=True)
    wb = torch.load(b.model_dir / "weights.pt", weights_only=True)
    fresh = TinyBackbone().state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["backbone.layers.0.weight"], fresh["layers.0.weight"])
    assert without_timings(a.metrics) == without_timings(b.metrics)


def test_resume_equals_an_uninterrupted_run(tmp_path, database, host):
    options = dict(epochs=2, miner="m3", negatives="n1", whiten_dim=3)
    straight = train(config(tmp_path / "straight", **options), database=database, host=host, log=lambda _: None)
    first = config(tmp_path / "resumed", **{**options, "epochs": 1})
    train(first, database=database, host=host, log=lambda _: None)
    resumed = train(config(tmp_path / "resumed", **options), resume=True, database=database, host=host,
                    log=lambda _: None)
    assert without_timings(resumed.metrics) == without_timings(straight.metrics)
    wa = torch.load(straight.model_dir / "weights.pt", weights_only=True)
    wb = torch.load(resumed.model_dir / "weights.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len((tmp_path / "resumed" / METRICS_NAME).read_text().splitlines()) == 2


def test_resume_refuses_changed_options(tmp_path, database, host):
    train(config(tmp_path / "run"), database=database, host=host, log=lambda _: None)
    with pytest.raises(RkitError, match="miner"):
        train(config(tmp_path / "run", miner="m1", epochs=2), resume=True, database=database, host=host)
    with pytest.raises(RkitError, match="--resume"):
        train(config(tmp_path / "run"), database=database, host=host)


def test_too_small_a_database_fails_before_any_work(tmp_path, database, host):
    with pytest.raises(RkitError, match="--queries 12 or fewer"):
        train(config(tmp_path / "q", queries_per_epoch=50), database=database, host=host)
    with pytest.raises(RkitError, match="only 8 candidate"):
        train(config(tmp_path / "n", num_negatives=9), database=database, host=host)
    one_model = subset_database(database, [0, 1, 2, 3])
    with pytest.raises(RkitError, match="at least 2"):
        train(config(tmp_path / "m"), database=one_model, host=host)
    assert not any((tmp_path / name / CHECKPOINT_NAME).exists() for name in ("q", "n", "m"))


def test_a_positive_miner_as_negatives_is_a_clear_error(tmp_path, database, host):
    with pytest.raises(RkitError, match="--negatives needs a negative miner"):
        train(config(tmp_path / "r", negatives="m2"), database=database, host=host)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, database, host):
    # 6 tuples per epoch: the loss turns NaN on the 9th call, in epoch 2
    with pytest.raises(RkitError, match="nan.*checkpoint \\(after epoch 1\\)"):
        train(config(tmp_path / "nan", loss="nan-after:calls=8", epochs=3), database=database, host=host,
              log=lambda _: None)
    state = torch.load(tmp_path / "nan" / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 1
    assert len((tmp_path / "nan" / METRICS_NAME).read_text().splitlines()) == 1


def test_an_unreadable_image_is_reported_and_skipped(tmp_path, host):
    db = make_database(tmp_path / "images")
    (tmp_path / "images" / db.images[5]).write_bytes(b"not an image")
    messages: list[str] = []
    result = train(config(tmp_path / "run", miner="random-positive", negatives="random-negative",
                          queries_per_epoch=0, whiten="none", whiten_dim=None),
                   database=db, host=host, log=messages.append)
    assert any(db.images[5] in m for m in messages)
    assert db.images[5] in result.summary["bad_images"]
    assert result.metrics[0]["tuples_trained"] < result.metrics[0]["tuples"]


def test_cli_trains_and_resumes(tmp_path, database, host, monkeypatch):
    from retrievalkit.cli import cli
    import retrievalkit.train as train_module

    database.save(tmp_path / "db")
    import retrievalkit.plugins as plugins_module

    monkeypatch.setattr(train_module, "get_host", lambda: host)
    monkeypatch.setattr(plugins_module, "get_host", lambda: host)  # the CLI checks names first
    runner = CliRunner()
    args = ["train", "--data", str(tmp_path / "db"), "--run-dir", str(tmp_path / "run"), "--backbone", "tiny-cnn",
            "--weights", "none", "--miner", "m2", "--negatives", "n2", "--num-negatives", "2", "--epochs", "1",
            "--queries", "4", "--image-size", "64", "--whiten", "learned", "--whiten-dim", "4",
            "--device", "cpu", "--no-progress"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "model saved to" in first.output
    assert (tmp_path / "run" / "rkit-config.toml").is_file()
    again = runner.invoke(cli, ["train", "--run-dir", str(tmp_path / "run"), "--resume", "--epochs", "2",
                                "--no-progress"])
    assert again.exit_code == 0, again.output
    assert len((tmp_path / "run" / METRICS_NAME).read_text().splitlines()) == 2


def test_a_bad_component_fails_before_the_training_data_is_built(tmp_path, host, monkeypatch):
    import retrievalkit.train as train_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("the training data was loaded before the components were checked")

    monkeypatch.setattr(train_module, "load_training_data", must_not_run)
    for bad in ({"miner": "m4"}, {"loss": "contrastiv"}, {"pooling": "macc"}, {"whiten": "lernd"},
                {"miner": "m3:t_x=1"}):
        with pytest.raises(RkitError):
            train(TrainConfig(run_dir=str(tmp_path / "run"), **bad), host=host)


def test_subset_database_keeps_the_pair_cache_renumbered():
    from retrievalkit.trainingdb import TrainingDatabase

    def make() -> TrainingDatabase:
        return TrainingDatabase(images=["a", "b", "c", "d"], clusters=[0, 0, 0, 1],
                                point_ids=[[1, 2, 3, 4], [3, 4, 5], [1, 5], [20]],
                                point_depths=[[2.0, 2, 4, 4], [1.0, 1, 3], [5.0, 6], [1.0]],
                                focals=np.array([100.0, 100, 50, 10]), centres=np.zeros((4, 3)))

    cached = make()
    cached.use_pair_statistics()
    keep = [2, 1, 0]
    sub, direct = subset_database(cached, keep), subset_database(make(), keep)
    assert sub.pair_cache is not None and direct.pair_cache is None
    for q in range(3):
        assert sub.co_observing(q).tolist() == direct.co_observing(q).tolist()
        for i in range(3):
            if i != q:
                assert sub.shared_points(q, i) == direct.shared_points(q, i)
                assert sub.overlap(q, i) == pytest.approx(direct.overlap(q, i))
                assert sub.scale_change(q, i) == pytest.approx(direct.scale_change(q, i))


def test_resuming_from_a_damaged_config_is_a_clear_error(tmp_path):
    from retrievalkit.train import CONFIG_NAME, read_saved_config

    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(RkitError, match="damaged"):
        read_saved_config(tmp_path)
