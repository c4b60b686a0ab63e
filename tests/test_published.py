"""Networks in the authors' checkpoint format (cnnimageretrieval-pytorch), built here from random
weights: they load, and their descriptors equal an independent computation of conv features ->
GeM with their p -> L2 -> whitening -> L2 (float32; tolerance 1e-5 absolute on unit vectors)."""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner
from PIL import Image

from retrievalkit.cli import cli
from retrievalkit.errors import RkitError
from retrievalkit.model import load_model
from retrievalkit.published import PUBLISHED, PublishedSpec, is_published_model, load_published_model

TOLERANCE = 1e-5
MEAN, STD = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]     # not ImageNet's: the file's own must be used


@functools.lru_cache(maxsize=None)   # built once per architecture: random VGG16 takes a while
def their_features(architecture: str) -> torch.nn.Sequential:
    """Their ``features``: VGG's without the last max pooling, a ResNet's children but the last 2."""
    torch.manual_seed(0)
    network = getattr(torchvision.models, architecture)(weights=None)
    children = list(network.features.children())[:-1] if architecture.startswith("vgg") else list(network.children())[:-2]
    return torch.nn.Sequential(*children).eval()


def write_checkpoint(path, architecture: str, *, whiten: bool, lw: bool, p: float = 2.7) -> dict:
    features = their_features(architecture)
    dim = 512 if architecture == "vgg16" else 2048
    state = collections.OrderedDict((f"features.{k}", v) for k, v in features.state_dict().items())
    state["pool.p"] = torch.tensor([p])
    rng = np.random.default_rng(1)
    parts = {"features": features, "p": p}
    if whiten:
        state["whiten.weight"] = torch.randn(dim, dim, generator=torch.Generator().manual_seed(2)) / dim ** 0.5
        state["whiten.bias"] = torch.randn(dim, generator=torch.Generator().manual_seed(3)) * 0.01
        parts["linear"] = (state["whiten.weight"].numpy().astype(np.float64), state["whiten.bias"].numpy().astype(np.float64))
    meta = {"architecture": architecture, "local_whitening": False, "pooling": "gem", "regional": False,
            "whitening": whiten, "mean": MEAN, "std": STD, "outputdim": dim}
    if lw:
        P, m = rng.standard_normal((dim, dim)) / dim ** 0.5, rng.standard_normal((dim, 1)) * 0.01
        meta["Lw"] = {"retrieval-SfM-120k": {"ss": {"m": m, "P": P}, "ms": {"m": m * 2, "P": P}}}
        parts["linear"] = (P, -(P @ m).reshape(-1))
    torch.save({"epoch": 10, "meta": meta, "state_dict": state, "best_score": 0.5}, path)
    return parts


def reference(parts: dict, images: torch.Tensor) -> np.ndarray:
    """conv features -> GeM(p) -> L2 -> linear -> L2, written out here."""
    x = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        fmap = parts["features"](x).double()
    pooled = fmap.clamp(min=1e-6).pow(parts["p"]).mean(dim=(-2, -1)).pow(1.0 / parts["p"])
    v = F.normalize(pooled, dim=-1).numpy()
    if "linear" in parts:
        weight, bias = parts["linear"]
        v = v @ weight.T + bias
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return v


@pytest.mark.parametrize("architecture, whiten, lw", [
    ("vgg16", False, True), ("vgg16", True, False), ("resnet50", False, False), ("resnet50", True, False),
])
def test_checkpoint_descriptors_match_an_independent_computation(tmp_path, architecture, whiten, lw):
    path = tmp_path / f"{architecture}.pth"
    parts = write_checkpoint(path, architecture, whiten=whiten, lw=lw)
    assert is_published_model(path)
    model = load_model(path)
    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model(images).numpy()
    np.testing.assert_allclose(ours, reference(parts, images), atol=TOLERANCE, rtol=0)
    assert model.out_dim == (512 if architecture == "vgg16" else 2048)
    assert float(model.pooling.p.detach()[0]) == pytest.approx(2.7)


def test_lw_choices_and_the_cli(tmp_path):
    """resnet50 with Lw: descriptors as computed by hand (ss), ms and none selectable, and rkit extract."""
    path = tmp_path / "net.pth"
    parts = write_checkpoint(path, "resnet50", whiten=False, lw=True)
    with pytest.raises(RkitError, match="no Lw retrieval-SfM-30k/ss"):
        load_published_model(f"{path}:lwset=retrieval-SfM-30k")
    ms = load_published_model(f"{path}:lw=ms")
    P, bias = parts["linear"]
    torch.testing.assert_close(ms.whitening.bias, torch.as_tensor(2 * bias, dtype=ms.whitening.bias.dtype),  # float64 layer
                               atol=1e-6, rtol=0)
    images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(4))
    ms.set_whitening(None)                   # the same network without Lw (as :lw=none gives)
    with torch.no_grad():
        plain = ms(images).numpy()
    without_lw = {k: v for k, v in parts.items() if k != "linear"}
    np.testing.assert_allclose(plain, reference(without_lw, images), atol=TOLERANCE, rtol=0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")   # PNG: exact pixels (JPEG decoding may use a fast DCT)
    result = CliRunner().invoke(cli, ["extract", str(folder), "--model", str(path), "--image-size", "96", "--workers",
                                      "0", "--device", "cpu", "--out", str(tmp_path / "d.npz"), "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    from retrievalkit.descriptors import DescriptorSet

    described = DescriptorSet.load(tmp_path / "d.npz")
    assert described.descriptors.shape == (2, 2048)
    pictures = torch.stack([torch.from_numpy(np.asarray(Image.open(folder / p), dtype=np.float32) / 255).permute(2, 0, 1)
                            for p in described.paths])
    np.testing.assert_allclose(described.descriptors, reference(parts, pictures), atol=TOLERANCE, rtol=0)


def l2(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize("whiten", [True, False])
def test_several_scales_are_combined_as_the_authors_code_does(tmp_path, whiten):
    """-w networks: L2(W x + b) per scale, then the mean (their msp = 1); Lw networks: the GeM mean of
    the scales with their p, then Lw (their post-processing). Also after a save and load."""
    from types import SimpleNamespace

    from retrievalkit.extract import finish_descriptors

    path = tmp_path / "net.pth"
    parts = write_checkpoint(path, "resnet50", whiten=whiten, lw=not whiten)
    generator = torch.Generator().manual_seed(5)
    scales = [torch.rand(2, 3, 64, 80, generator=generator), torch.rand(2, 3, 46, 56, generator=generator)]
    per_scale = [reference({k: v for k, v in parts.items() if k != "linear"}, images) for images in scales]
    weight, bias = parts["linear"]
    if whiten:
        expected = l2(np.mean([l2(x @ weight.T + bias) for x in per_scale], axis=0))
    else:
        p = parts["p"]
        expected = l2(l2(np.mean([x ** p for x in per_scale], axis=0) ** (1 / p)) @ weight.T + bias)
    model = load_model(path)
    model.save(tmp_path / "saved")
    for loaded in (model, load_model(tmp_path / "saved")):
        assert loaded.whiten_each_scale is whiten
        with torch.no_grad():
            pooled = {(i, s): loaded.pooled(images)[i].numpy() for s, images in enumerate(scales) for i in range(2)}
        plan = SimpleNamespace(paths=["a.jpg", "b.jpg"], scales=[1.0, 0.707])
        ours = finish_descriptors(loaded, plan, pooled, {}).descriptors
        np.testing.assert_allclose(ours, expected, atol=TOLERANCE, rtol=0)
    model.set_whitening(model.whitening)      # another whitening is a fitted one, applied after the scales
    assert not model.whiten_each_scale


def tiny_checkpoint(path, **meta_changes) -> None:
    """Only the meta matters for the refusals: a checkpoint with an empty state dict."""
    meta = {"architecture": "resnet50", "pooling": "gem", "regional": False, "local_whitening": False,
            "whitening": False, "mean": MEAN, "std": STD, "outputdim": 2048, **meta_changes}
    torch.save({"meta": meta, "state_dict": collections.OrderedDict()}, path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("extra", [argparse.Namespace(lr=0.1), _Evil()])
def test_a_pickled_object_beyond_the_allowed_is_refused(tmp_path, extra):
    path = tmp_path / "evil.pth"
    tiny_checkpoint(path, extra=extra)
    with pytest.raises(RkitError, match="refusing to load .* beyond tensors"):
        load_model(path)


def test_what_cannot_be_mapped_is_refused(tmp_path):
    path = tmp_path / "net.pth"
    for change, message in [({"regional": True}, "regional pooling"), ({"local_whitening": True}, "local whitening"),
                            ({"architecture": "densenet121"}, "no retrievalkit backbone"),
                            ({"pooling": "rmac"}, "no retrievalkit equivalent")]:
        tiny_checkpoint(path, **change)
        with pytest.raises(RkitError, match=message):
            load_model(path)
    with pytest.raises(RkitError, match="options are :lw=ss"):
        PublishedSpec.parse("x.pth:lw=big")
    with pytest.raises(RkitError, match="did you mean retrievalSfM120k-resnet101-gem"):
        load_model("retrievalSfM120k-resnet101-gen")


def test_published_names_are_downloaded_once_and_verified(tmp_path, monkeypatch):
    """A published name goes through the downloader with the hash prefix of its file name."""
    import retrievalkit.published as published

    path = tmp_path / "src.pth"
    write_checkpoint(path, "resnet50", whiten=True, lw=False)
    data = path.read_bytes()
    name = f"gl18-tl-resnet50-gem-w-{hashlib.sha256(data).hexdigest()[:7]}.pth"
    www = tmp_path / "www"
    www.mkdir()
    (www / name).write_bytes(data)
    from _http_fixture import Server

    with Server(www) as server:
        monkeypatch.setitem(published.PUBLISHED, "gl18-tl-resnet50-gem-w", f"{server.base}/{name}")
        monkeypatch.setenv("RKIT_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("RKIT_ALLOW_HTTP", "1")
        model = load_model("gl18-tl-resnet50-gem-w")
        assert model.whitening is not None and (tmp_path / "cache" / "networks" / name).is_file()
        load_model("gl18-tl-resnet50-gem-w")
        assert sum(1 for m, *_ in server.log if m == "GET") == 1
        (www / name).write_bytes(data[:-10] + b"0123456789")          # a tampered copy is refused
        (tmp_path / "cache" / "networks" / name).unlink()
        with pytest.raises(RkitError, match="damaged or not the expected one"):
            load_model("gl18-tl-resnet50-gem-w")
    assert "retrievalSfM120k-resnet101-gem" in PUBLISHED
