"""Fault cases of docs/reliability.md: each is a class of failure turned into a clear message.

Bad output paths (every command), `rkit data synth --out . --overwrite`, a full disk, a
truncated .npz, an OSError, SIGTERM during `rkit extract`. Other engineers' classes (NaN
descriptors, plugins, downloads, DataLoader workers) have their own test modules.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrievalkit.cli import main
from retrievalkit.descriptors import DescriptorSet
from retrievalkit.errors import DiskFullError
from retrievalkit.outputs import MARKER_NAME

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *args) -> tuple[int, str]:
    """Run rkit in-process; return (exit status, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def expect_error(capsys, *args, match: str) -> str:
    code, err = run(capsys, *args)
    assert code == 2, err
    assert err.startswith("Error: ") and "Traceback" not in err, err
    assert match in err, err
    return err


@pytest.fixture
def files(tmp_path):
    """A photo folder, a descriptors file, a whitening-like file and a rankings-like file."""
    photos = tmp_path / "photos" / "a"
    photos.mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(photos / "0000.jpg")
    desc = tmp_path / "desc.npz"
    DescriptorSet(np.eye(4, 8, dtype=np.float32), [f"a/{i}.jpg" for i in range(4)]).save(desc)
    other = tmp_path / "w.npz"
    other.write_bytes(b"whitening")
    rankings = tmp_path / "rankings.json"
    rankings.write_text("{}")
    return tmp_path


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- every command refuses an output path that is one of its inputs or inside an input folder --
GUARDED = {
    "extract into its image folder": ("extract {t}/photos --out {t}/photos/a/0000.jpg", "inside the input folder"),
    "whiten fit over its descriptors": ("whiten fit {t}/desc.npz --whiten pca --out {t}/desc.npz", "also an input"),
    "whiten apply over the whitening": ("whiten apply {t}/desc.npz --whitening {t}/w.npz --out {t}/w.npz", "also an input"),
    "search --out over the database": ("search {t}/desc.npz {t}/desc.npz --out {t}/desc.npz", "also an input"),
    "search --save-index over a query": ("search {t}/desc.npz {t}/w.npz --save-index {t}/w.npz", "also an input"),
    "eval --save-rankings over its source": ("eval {t}/desc.npz --save-rankings {t}/desc.npz", "also an input"),
    "eval --save-descriptors in the photos": ("eval {t}/photos --save-descriptors {t}/photos/d.npz", "inside the input folder"),
    "sfm --out inside the photos": ("sfm {t}/photos --out {t}/photos/sfm", "inside the input folder"),
    "sfm --out containing the photos": ("sfm {t}/photos --out {t}", "contains the input"),
    "train --run-dir inside --data": ("train --data {t}/photos --run-dir {t}/photos/run", "inside the input folder"),
    "ablate --out inside --data": ("ablate --data {t}/photos --out {t}/photos/abl", "inside the input folder"),
    "report over its rankings file": ("report {t}/rankings.json --out {t}/rankings.json", "also an input"),
}


@pytest.mark.parametrize("case", list(GUARDED), ids=list(GUARDED))
def test_output_path_that_would_destroy_an_input_is_refused(case, files, capsys):
    command, match = GUARDED[case]
    before = _snapshot(files)
    expect_error(capsys, *command.format(t=files).split(), match=match)
    assert _snapshot(files) == before, "nothing may be written or removed"


# -- rkit data synth --out . --overwrite -------------------------------------------------------------
SYNTH = ("--preset", "tiny", "--scenes", "1", "--views", "2", "--size", "64x48")


def test_synth_never_replaces_the_current_folder(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    expect_error(capsys, "data", "synth", "--out", ".", "--overwrite", *SYNTH, match="current folder")
    expect_error(capsys, "data", "synth", "--out", "..", "--overwrite", *SYNTH, match="current folder")
    assert (work / "notes.txt").read_text() == "mine" and sorted(os.listdir(work)) == ["notes.txt"]


def test_synth_overwrite_replaces_only_its_own_output(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"precious")
    expect_error(capsys, "data", "synth", "--out", mine, "--overwrite", *SYNTH, match="not made by rkit")
    assert (mine / "photo.jpg").read_bytes() == b"precious"

    out = tmp_path / "set"
    assert run(capsys, "data", "synth", "--out", out, *SYNTH)[0] == 0
    assert json.loads((out / MARKER_NAME).read_text())["command"] == "data synth"
    assert run(capsys, "data", "synth", "--out", out, "--overwrite", *SYNTH[:-2], "--size", "48x36")[0] == 0
    assert Image.open(next((out / "images").rglob("*.jpg"))).size == (48, 36)


def test_synth_into_an_empty_current_folder_fills_it_in_place(tmp_path, monkeypatch, capsys):
    work = tmp_path / "empty"
    work.mkdir()
    inode = work.stat().st_ino
    monkeypatch.chdir(work)
    assert run(capsys, "data", "synth", "--out", ".", *SYNTH)[0] == 0
    assert work.stat().st_ino == inode and (work / "ground_truth.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"


# -- a full disk ---------------------------------------------------------------------------------------
def _fill_disk_after(monkeypatch, nbytes: int):
    """Make numpy.savez write ``nbytes`` of its file, then fail as a full disk does."""
    def savez(file, *args, **kwargs):
        Path(file).write_bytes(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", savez)


def test_full_disk_names_the_file_and_keeps_the_old_output(tmp_path, monkeypatch):
    out = tmp_path / "d.npz"
    DescriptorSet(np.ones((2, 3), np.float32), ["a", "b"]).save(out)
    before = out.read_bytes()
    _fill_disk_after(monkeypatch, 100)
    with pytest.raises(DiskFullError) as info:
        DescriptorSet(np.ones((1000, 64), np.float32), ["x"] * 1000).save(out)
    message = str(info.value)
    assert str(out) in message and "needed 260.0 KB" in message and "free there" in message
    assert "previous d.npz is intact" in message
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def test_full_disk_in_a_command_is_an_error_line(files, monkeypatch, capsys):
    _fill_disk_after(monkeypatch, 10)
    err = expect_error(capsys, "whiten", "fit", files / "desc.npz", "--whiten", "pca", "--out", files / "new.npz",
                       match="no space left on the disk while writing")
    assert "no new.npz was written" in err and not (files / "new.npz").exists()


def test_text_outputs_report_a_full_disk_too(tmp_path, monkeypatch):
    from retrievalkit.atomic import write_text_atomic

    target = tmp_path / "r.json"
    target.write_text("old")

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskFullError, match=r"needed 5 bytes.*previous r.json is intact"):
        write_text_atomic(target, "hello")
    assert target.read_text() == "old"


# -- damaged inputs and system errors: one line, exit 2 -------------------------------------------------
@pytest.mark.parametrize("command", ["eval {f}", "search {f} {f}", "whiten fit {f} --whiten pca --out {t}/w2.npz"])
def test_truncated_npz_is_an_error_line(command, files, capsys):
    data = (files / "desc.npz").read_bytes()
    cut = files / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    expect_error(capsys, *command.format(f=cut, t=files).split(), match="damaged")


def test_os_error_is_an_error_line(files, capsys):
    blocker = files / "file"
    blocker.write_text("x")
    expect_error(capsys, "whiten", "fit", files / "desc.npz", "--whiten", "pca", "--out", blocker / "w.npz",
                 match=str(blocker))


# -- SIGTERM during rkit extract --------------------------------------------------------------------------
def _wait_for_progress(proc: subprocess.Popen, seen: list[str], pattern: str, timeout: float) -> bool:
    def reader() -> None:
        while chunk := proc.stderr.read(1):
            seen.append(chunk)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if re.search(pattern, "".join(seen[-400:])):
            return True
        time.sleep(0.02)
    return False


SLOW_POOLING = """
    import time
    from torch import nn
    from retrievalkit import Component, hookimpl

    class SlowMAC(nn.Module):
        def forward(self, x):
            time.sleep(0.05)  # a slow extraction without using the CPU: time to send the signal
            return x.clamp(min=0).amax(dim=(-2, -1))

    @hookimpl
    def rkit_poolings():
        return [Component("slowmac", SlowMAC, "MAC that takes its time (tests)")]
"""


@pytest.mark.slow  # a subprocess that imports torch: about 10-20 s
def test_sigterm_during_extract_keeps_a_resumable_partial_and_says_how_to_resume(tmp_path, capsys,
                                                                                install_fake_plugin):
    from retrievalkit.model import ModelConfig, build_model

    site = install_fake_plugin("rkit-slowmac", "slowmac", "rkit_slowmac_plugin", SLOW_POOLING)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(80):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(photos / f"{i:04d}.png")
    build_model(ModelConfig("efficientnet-lite0", "slowmac", "none")).save(tmp_path / "model")  # fixed weights
    out = tmp_path / "d.npz"
    args = ["extract", str(photos), "--out", str(out), "--model", str(tmp_path / "model"), "--image-size", "32",
            "--batch-size", "1", "--workers", "0", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "retrievalkit", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    seen: list[str] = []
    started = _wait_for_progress(proc, seen, r"\b[1-9]\d*/80\b", timeout=120)  # images are done
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    time.sleep(0.1)
    err = "".join(seen)
    assert started, err
    assert proc.returncode == 130, err
    partial = tmp_path / "d.partial.npz"
    assert f"Interrupted: kept the descriptors finished so far in {partial}" in err, err
    assert "Resume with: rkit extract" in err and "Traceback" not in err, err
    assert partial.is_file() and not out.exists()

    resume = err.split("Resume with: rkit ", 1)[1].strip().split()
    code, resumed_err = run(capsys, *resume, "--no-progress")
    assert code == 0, resumed_err
    assert "resuming from" in resumed_err
    assert len(DescriptorSet.load(out)) == 80 and not partial.exists()


# -- rkit report: damaged rankings files, TeX-looking file names --------------------------------------
def _rankings(tmp_path: Path, names: list[str]) -> Path:
    from retrievalkit.evaluate import evaluate_folder_collection, folder_labels, rankings_document

    root = tmp_path / "imgs"
    rng = np.random.default_rng(2)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / name)
    x = rng.normal(size=(len(names), 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    result = evaluate_folder_collection(x, folder_labels(names), names=names)
    path = tmp_path / "rank.json"
    path.write_text(json.dumps(rankings_document({"all": result}, names, names, root=str(root))))
    return path


@pytest.mark.parametrize("field, value", [("ap", "abc"), ("score", "0.5x"), ("n_positives", 2.5),
                                          ("precision", {"1": [1]})])
def test_report_on_a_rankings_file_with_a_non_numeric_field(field, value, tmp_path, capsys):
    path = _rankings(tmp_path, ["a/0.jpg", "a/1.jpg", "b/0.jpg", "b/1.jpg"])
    doc = json.loads(path.read_text())
    entry = doc["settings"]["all"]["queries"][1]
    if field == "score":
        entry["top"][0]["score"] = value
    else:
        entry[field] = value
    path.write_text(json.dumps(doc))
    err = expect_error(capsys, "report", path, "--out", tmp_path / "r.html", match="settings.all.queries[1]")
    assert "rkit eval" in err and not (tmp_path / "r.html").exists()


def test_report_with_dollar_signs_in_file_names(tmp_path, capsys):
    """matplotlib would read `$...$` in a legend label as TeX (and fail on `$^$`)."""
    names = ["a/price $5 or $6.jpg", "a/1.jpg", "b$/x $^$ y.jpg", "b$/1.jpg"]
    path = _rankings(tmp_path, names)
    code, err = run(capsys, "report", path, "--out", tmp_path / "r.html")
    assert code == 0, err
    text = (tmp_path / "r.html").read_text()
    assert "price $5 or $6.jpg" in text and text.count('class="plot"') == 2


# -- Ctrl-C / SIGTERM in the other long commands: what was kept, how to resume ----------------------
def test_interrupted_ablation_and_synth_say_what_was_kept(files, monkeypatch, capsys):
    import retrievalkit.cli.ablate as cli_ablate
    import retrievalkit.synth as synth

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_ablate, "run_ablation", interrupted)
    monkeypatch.setattr(synth, "generate_synthetic", interrupted)
    code, err = run(capsys, "ablate", "--data", files / "photos", "--out", files / "abl")
    assert code == 130 and "Interrupted: kept 0 finished cell result(s)" in err, err
    assert f"Resume with: rkit ablate --data {files / 'photos'} --out {files / 'abl'}" in err
    code, err = run(capsys, "data", "synth", "--out", files / "set", *SYNTH)
    assert code == 130 and "Interrupted: kept the views rendered so far" in err, err
    assert "Resume with: rkit data synth --out" in err


def test_full_disk_while_torch_saves_a_checkpoint(tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError "... file write failed"."""
    import shutil
    from collections import namedtuple

    from retrievalkit.atomic import atomic_path

    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"epoch 3")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100, 100, 0))
    with pytest.raises(DiskFullError, match="previous checkpoint.pt is intact"):
        with atomic_path(target):
            raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed "
                               "writing file data/0: file write failed")
    assert target.read_bytes() == b"epoch 3"
    with pytest.raises(RuntimeError, match="unrelated"):  # other errors pass through unchanged
        with atomic_path(target):
            raise RuntimeError("unrelated")


def test_report_on_an_ablation_with_a_non_numeric_field(tmp_path, capsys):
    from retrievalkit.ablate import AblationResult, CellResult, write_outputs

    cells = [CellResult("c1", {"dim": "8"}, {"dim": "8"}, "ok", map=0.5),
             CellResult("c2", {"dim": "4"}, {"dim": "4"}, "ok", map=0.7)]
    write_outputs(AblationResult(tmp_path, ["dim"], cells, {}, {}, {"dim": ["8", "4"]}))
    doc = json.loads((tmp_path / "results.json").read_text())
    doc["cells"][1]["per_query_ap"] = [0.5, "x"]
    (tmp_path / "results.json").write_text(json.dumps(doc))
    expect_error(capsys, "report", tmp_path, match="cell c2 has per_query_ap \"x\", not a number")


def test_index_build_replaces_only_an_earlier_index(files, capsys):
    mine = files / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    expect_error(capsys, "index", "build", files / "desc.npz", "--out", mine, match="not made by rkit")
    assert (mine / "notes.txt").read_text() == "keep"
    expect_error(capsys, "index", "build", files / "desc.npz", "--out", files, match="contains the input")
    out = files / "desc.index"
    assert run(capsys, "index", "build", files / "desc.npz", "--out", out, "--no-progress")[0] == 0
    assert run(capsys, "index", "build", files / "desc.npz", "--out", out, "--no-progress")[0] == 0  # replaced
