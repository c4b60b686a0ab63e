"""`rkit data download` against a local HTTP server on 127.0.0.1 serving tiny archives in the real
layouts (no internet), then `rkit eval --dataset` (with and without R1M distractors) and
`rkit train --data NAME` on what it fetched; and the failure cases: a dropped connection, a 404,
a damaged archive, an archive that tries to escape, a dry run."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from _http_fixture import Server, jpeg_bytes, make_tar
from retrievalkit.cli import cli
from retrievalkit.datasets_catalog import R1M_PARTS

OX = "www.robots.ox.ac.uk/~vgg/data/oxbuildings"
REVISITOP = "cmp.felk.cvut.cz/revisitop/data/datasets"
R1M = "ptak.felk.cvut.cz/revisitop/revisitop1m"
SFM = "cmp.felk.cvut.cz/cnnimageretrieval/data/train"
CIDS = [f"{i:02x}a1b2c3d4e5f{i:02x}" for i in range(8)]
OX_IMAGES = ["all_souls_000001", "all_souls_000002", "all_souls_000003",
             "radcliffe_000001", "radcliffe_000002", "radcliffe_000003"]
OX_QUERIES = ["all_souls_000000", "radcliffe_000000"]


def publish_roxford(www: Path) -> None:
    names = OX_IMAGES + OX_QUERIES
    make_tar(www / OX / "oxbuild_images-v1.tgz",
             {f"oxbuild/{n}.jpg": jpeg_bytes(i + (0 if n.startswith("all") else 50)) for i, n in enumerate(names)})
    gnd = {"imlist": OX_IMAGES, "qimlist": OX_QUERIES,
           "gnd": [{"bbx": [0, 0, 60, 50], "easy": [0, 1], "hard": [2], "junk": []},
                   {"bbx": [5, 5, 70, 60], "easy": [3], "hard": [4, 5], "junk": []}]}
    (www / REVISITOP / "roxford5k").mkdir(parents=True)
    (www / REVISITOP / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(gnd))


def publish_r1m(www: Path) -> None:
    for part in range(1, R1M_PARTS + 1):
        make_tar(www / R1M / "jpg" / f"revisitop1m.{part}.tar.gz", {f"{part:03d}/d{part}.jpg": jpeg_bytes(1000 + part)})
    (www / R1M / "revisitop1m.txt").write_text("".join(f"{p:03d}/d{p}.jpg\n" for p in range(1, R1M_PARTS + 1)))


def publish_sfm(www: Path) -> None:
    make_tar(www / SFM / "ims" / "ims.tar.gz",
             {f"{c[-2:]}/{c[-4:-2]}/{c[-6:-4]}/{c}": jpeg_bytes(200 + i) for i, c in enumerate(CIDS)})
    whiten = {"cids": CIDS, "cluster": [0, 0, 0, 1, 1, 1, 2, 2], "qidxs": [0, 3, 6], "pidxs": [1, 4, 7]}
    (www / SFM / "dbs").mkdir(parents=True)
    (www / SFM / "dbs" / "retrieval-SfM-30k-whiten.pkl").write_bytes(pickle.dumps(whiten))


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=True)


def download_args(root: Path, base: str, *names: str) -> list[str]:
    return ["data", "download", *names, "--root", str(root), "--mirror", base, "--allow-http", "--jobs", "4",
            "--retries", "1", "--no-progress"]


TINY_MODEL = ["--backbone", "alexnet", "--weights", "none", "--image-size", "96", "--workers", "0",
              "--device", "cpu", "--no-progress", "--json"]


@pytest.fixture
def published(tmp_path):
    www = tmp_path / "www"
    publish_roxford(www)
    publish_r1m(www)
    publish_sfm(www)
    with Server(www) as server:
        yield server, tmp_path / "data"


def test_download_lay_out_then_eval_and_train(published, tmp_path, monkeypatch):
    server, root = published
    result = run(*download_args(root, server.base, "roxford5k", "revisitop1m", "retrieval-sfm-30k"))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert sorted(p.name for p in (root / "roxford5k" / "jpg").iterdir()) == sorted(f"{n}.jpg" for n in OX_IMAGES + OX_QUERIES)
    assert (root / "revisitop1m" / "jpg" / "100" / "d100.jpg").is_file()
    assert (root / "retrieval-sfm-120k" / "ims" / CIDS[0][-2:] / CIDS[0][-4:-2] / CIDS[0][-6:-4] / CIDS[0]).is_file()
    assert not list((root / ".downloads").iterdir())            # archives removed after extraction
    manifest = json.loads((root / ".rkit-manifest.json").read_text())
    assert len(manifest) == 1 + 1 + R1M_PARTS + 1 + 2 and all(len(e["sha256"]) == 64 and e["in_place"] for e in manifest.values())
    pairs = (root / "retrieval-sfm-30k" / "retrieval-SfM-30k-whiten-pairs.tsv").read_text().splitlines()
    first = pairs[0].split("\t")
    assert len(pairs) == 3 and first[2] == "1" and (root / "retrieval-sfm-30k" / first[0]).resolve().is_file()

    gets = sum(1 for method, *_ in server.log if method == "GET")
    again = run(*download_args(root, server.base, "roxford5k", "revisitop1m", "retrieval-sfm-30k"))
    assert again.exit_code == 0 and sum(1 for m, *_ in server.log if m == "GET") == gets   # all in place

    # one random-weight model saved once, so the dataset, its queries and the distractors share it
    from retrievalkit.model import ModelConfig, build_model

    torch.manual_seed(0)
    build_model(ModelConfig(backbone="alexnet", pooling="gem", weights="none")).save(tmp_path / "model")
    fixed = ["--model", str(tmp_path / "model"), *TINY_MODEL[4:]]
    plain = run("eval", "--dataset", "roxford5k", "--data-root", str(root), *fixed)
    assert plain.exit_code == 0, plain.output + repr(plain.exception)
    report = json.loads(plain.stdout[plain.stdout.index("{"):])
    assert report["images"] == 6 and set(report["settings"]) == {"easy", "medium", "hard"}

    with_r1m = run("eval", "--dataset", "roxford5k", "--distractors", "revisitop1m", *fixed,
                   "--save-rankings", str(tmp_path / "r1m-rankings.json"), env={"RKIT_DATA": str(root)})
    assert with_r1m.exit_code == 0, with_r1m.output + repr(with_r1m.exception)
    assert "+ 100 distractors (revisitop1m)" in with_r1m.output and '"distractors": 100' in with_r1m.output
    rankings_text = (tmp_path / "r1m-rankings.json").read_text()
    assert "../../revisitop1m/jpg/" in rankings_text                # distractors named in the report file
    cached = list((root / "revisitop1m" / "descriptors").glob("*.npz"))
    assert len(cached) == 1                                      # described once, cached by model
    again = run("eval", "--dataset", "roxford5k", "--distractors", "revisitop1m", *fixed,
                env={"RKIT_DATA": str(root)})
    assert again.exit_code == 0 and "from the cache" in again.output
    reranked = run("eval", "--dataset", "roxford5k", "--distractors", "revisitop1m", "--rerank", "dba+aqe", *fixed,
                   env={"RKIT_DATA": str(root)})
    assert reranked.exit_code == 0, reranked.output + repr(reranked.exception)
    assert '"rerank": "dba:alpha=3:k=2+aqe:alpha=3:k=2"' in reranked.output and '"distractors": 100' in reranked.output
    r1m = json.loads(with_r1m.stdout[with_r1m.stdout.index("{"):])
    for setting in ("medium", "hard"):   # distractors can only push positives down
        assert r1m["settings"][setting]["map"] <= report["settings"][setting]["map"] + 1e-6

    monkeypatch.setenv("RKIT_DATA", str(root))
    trained = run("train", "--data", "retrieval-sfm-30k", "--run-dir", str(tmp_path / "run"), "--backbone", "alexnet",
                  "--weights", "none", "--pooling", "gem", "--miner", "m1", "--negatives", "n1", "--num-negatives", "1",
                  "--epochs", "1", "--queries", "2", "--image-size", "96", "--whiten", "none", "--device", "cpu",
                  "--threads", "1", "--no-progress")
    assert trained.exit_code == 0, trained.output + repr(trained.exception)
    assert (tmp_path / "run" / "model" / "model.json").is_file()

    # rkit whiten fit on the whitening pairs laid out beside the *-whiten.pkl
    listed = root / "retrieval-sfm-30k" / "retrieval-SfM-30k-whiten-images.txt"
    extracted = run("extract", str(listed), *TINY_MODEL[:-1], "--out", str(tmp_path / "w.npz"))
    assert extracted.exit_code == 0, extracted.output + repr(extracted.exception)
    fitted = run("whiten", "fit", str(tmp_path / "w.npz"), "--whiten", "learned:rotation=all", "--pairs",
                 str(root / "retrieval-sfm-30k" / "retrieval-SfM-30k-whiten-pairs.tsv"), "--out", str(tmp_path / "lw.npz"))
    assert fitted.exit_code == 0, fitted.output + repr(fitted.exception)
    assert "3 matching" in fitted.output


def test_unknown_name_and_missing_root(tmp_path, monkeypatch):
    monkeypatch.delenv("RKIT_DATA", raising=False)
    result = run("data", "download", "roxford5k")
    assert result.exit_code != 0 and "--root" in str(result.exception)
    result = run("data", "download", "oxford105k", "--root", str(tmp_path))
    assert "unknown dataset 'oxford105k'" in str(result.exception) and "roxford5k" in str(result.exception)
    result = run("train", "--data", "retrieval-sfm-30k")
    assert "RKIT_DATA" in str(result.exception)


def test_404_names_the_url_and_the_manual_route(tmp_path):
    www = tmp_path / "www"
    publish_roxford(www)
    (www / REVISITOP / "roxford5k" / "gnd_roxford5k.pkl").unlink()
    with Server(www) as server:
        result = run(*download_args(tmp_path / "data", server.base, "roxford5k"))
    message = str(result.exception)
    assert result.exit_code != 0 and "HTTP 404" in message and "gnd_roxford5k.pkl" in message
    assert "--from-dir" in message and "re-run" in message
    assert (tmp_path / "data" / "roxford5k" / "jpg" / "all_souls_000001.jpg").is_file()   # the rest is kept


def test_from_dir_places_manual_downloads(tmp_path):
    www = tmp_path / "www"
    publish_roxford(www)
    manual = tmp_path / "manual"
    manual.mkdir()
    for path in (www / OX / "oxbuild_images-v1.tgz", www / REVISITOP / "roxford5k" / "gnd_roxford5k.pkl"):
        (manual / path.name).write_bytes(path.read_bytes())
    result = run("data", "download", "roxford5k", "--root", str(tmp_path / "data"), "--from-dir", str(manual),
                 "--no-progress", "--mirror", "http://127.0.0.1:9")   # the network is never asked
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "data" / "roxford5k" / "gnd_roxford5k.pkl").is_file()
    assert sorted(p.name for p in manual.iterdir()) == ["gnd_roxford5k.pkl", "oxbuild_images-v1.tgz"]


def test_checksum_error_and_damaged_archive_leave_nothing_half_extracted(tmp_path):
    www = tmp_path / "www"
    publish_roxford(www)
    root = tmp_path / "data"
    archive = www / OX / "oxbuild_images-v1.tgz"
    good = archive.read_bytes()
    with Server(www) as server:
        assert run(*download_args(root, server.base, "roxford5k")).exit_code == 0
        # the server's copy changes; the folder is deleted and downloaded again: the manifest refuses it
        archive.write_bytes(good[:100] + bytes(b ^ 0xFF for b in good[100:200]) + good[200:])
        for path in (root / "roxford5k" / "jpg").iterdir():
            path.unlink()
        (root / "roxford5k" / "jpg").rmdir()
        result = run(*download_args(root, server.base, "roxford5k"))
        assert result.exit_code != 0 and "checksum error" in str(result.exception)
        assert not (root / "roxford5k" / "jpg").exists() or not list((root / "roxford5k" / "jpg").iterdir())
        assert not list((root / ".downloads").glob("*.tgz"))
        # first download of a damaged archive (no manifest): a clear error, nothing extracted
        (root / ".rkit-manifest.json").unlink()
        archive.write_bytes(good[: len(good) * 2 // 3])
        result = run(*download_args(root, server.base, "roxford5k"))
    assert result.exit_code != 0 and "damaged" in str(result.exception)
    assert not (root / "roxford5k" / "jpg").exists() or not list((root / "roxford5k" / "jpg").iterdir())
    assert not [p for p in root.rglob("*") if ".extract-" in p.name]


@pytest.mark.parametrize("entries, links", [
    ({"oxbuild/ok.jpg": b"x", "../../escaped.txt": b"owned"}, {}),
    ({"oxbuild/ok.jpg": b"x", "/tmp/rkit-absolute-test.txt": b"owned"}, {}),
    ({"oxbuild/ok.jpg": b"x"}, {"oxbuild/link": "../../../escaped-link"}),
])
def test_archive_escaping_the_root_is_refused(tmp_path, entries, links):
    www = tmp_path / "www"
    publish_roxford(www)
    make_tar(www / OX / "oxbuild_images-v1.tgz", entries, links=links)
    root = tmp_path / "deep" / "data"
    with Server(www) as server:
        result = run(*download_args(root, server.base, "roxford5k"))
    assert result.exit_code != 0 and "refused, nothing was extracted" in str(result.exception)
    assert not (root / "roxford5k" / "jpg").exists() or not list((root / "roxford5k" / "jpg").iterdir())
    outside = [p for p in tmp_path.rglob("*escaped*")] + list(Path("/tmp").glob("rkit-absolute-test.txt"))
    assert outside == []


def test_dry_run_prints_real_urls_and_layout_without_downloading(tmp_path):
    root = tmp_path / "data"
    result = run("data", "download", "--dry-run", "roxford5k", "rparis6k", "retrieval-sfm-120k", "--root", str(root))
    assert result.exit_code == 0, result.output
    out = result.output
    for url in ("https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz",
                "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_2-v1.tgz",
                "http://cmp.felk.cvut.cz/revisitop/data/datasets/rparis6k/gnd_rparis6k.pkl",
                "http://cmp.felk.cvut.cz/cnnimageretrieval/data/train/ims/ims.tar.gz",
                "http://cmp.felk.cvut.cz/cnnimageretrieval/data/train/dbs/retrieval-SfM-120k.pkl"):
        assert url in out
    assert f"{root / 'roxford5k' / 'gnd_roxford5k.pkl'}" in out and "rkit eval --dataset roxford5k" in out
    assert "server unreachable" in out or "MiB" in out      # offline here; sizes where a server answers
    assert not root.exists()


def test_interruption_says_what_was_kept_and_how_to_resume(tmp_path, monkeypatch):
    import retrievalkit.datafetch as datafetch
    from retrievalkit.errors import Interrupted

    def place(item, *args, **kwargs):
        if item.remote.name.endswith(".pkl"):
            raise KeyboardInterrupt      # Ctrl-C (or SIGTERM, which rkit turns into the same)
        item.done = True

    monkeypatch.setattr(datafetch, "place", place)
    result = run("data", "download", "roxford5k", "--root", str(tmp_path), "--no-progress", "--jobs", "1")
    assert isinstance(result.exception, Interrupted)
    message = result.exception.message()
    assert "1 of 2 files in place" in message and "*.part" in message
    assert f"Resume with: rkit data download roxford5k --root {tmp_path}" in message
