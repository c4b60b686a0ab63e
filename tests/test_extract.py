"""Image loading, batching, multi-scale combination, failures, resume and the ``rkit extract`` CLI.

Most tests use a stand-in backbone that returns the image itself (3 channels, no normalisation),
so descriptors of solid-colour images can be computed by hand: with MAC the descriptor of a
pure red image is (1, 0, 0).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from retrievalkit.cli import main
from retrievalkit.descriptors import DescriptorSet
from retrievalkit.errors import RkitError
from retrievalkit.extract import combine_scales, extract_descriptors, group_batches, list_images
from retrievalkit.images import ImageLoadError, image_size, load_rgb, resized_shape
from retrievalkit.model import ModelConfig, RetrievalModel, build_model

torch.set_num_threads(1)


class PixelBackbone(nn.Module):
    """Returns the [0, 1] image as a 3-channel feature map; counts the images it sees."""

    out_channels = 3
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.interrupt_after: int | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.interrupt_after is not None and self.seen >= self.interrupt_after:
            raise KeyboardInterrupt
        self.seen += images.shape[0]
        return images


class MaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(-2, -1))


def pixel_model() -> RetrievalModel:
    return RetrievalModel(PixelBackbone(), MaxPool(), ModelConfig("pixels", "max", "none"))


def solid(path, colour, size=(80, 60), mode="RGB") -> str:
    Image.new(mode, size, colour).save(path)
    return path.name


# -- listing -----------------------------------------------------------------------------------
def test_list_images_folder_tree_is_recursive_sorted_and_filtered(tmp_path) -> None:
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    for rel in ["b/deep/z.JPG", "b/y.png", "a/x.jpeg", ".hidden/h.jpg", "a/notes.txt", "a/.dot.jpg"]:
        (tmp_path / rel).write_bytes(b"")
    root, paths = list_images(tmp_path)
    assert root == tmp_path and paths == ["a/x.jpeg", "b/deep/z.JPG", "b/y.png"]


def test_list_images_from_a_list_file_or_single_image(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "list.txt"
    listing.write_text("# queries\nq2.jpg\n\n  imgs/q1.jpg  \n")
    assert list_images(listing) == (tmp_path / "sub", ["q2.jpg", "imgs/q1.jpg"])
    (tmp_path / "one.png").write_bytes(b"")
    assert list_images(tmp_path / "one.png") == (tmp_path, ["one.png"])


def test_list_images_errors_say_what_to_do(tmp_path) -> None:
    with pytest.raises(RkitError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RkitError, match="no images under"):
        list_images(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("\n# nothing\n")
    with pytest.raises(RkitError, match="names no images"):
        list_images(tmp_path / "blank.txt")


# -- image loading -------------------------------------------------------------------------------
def test_colour_modes_are_converted_to_rgb(tmp_path) -> None:
    Image.new("L", (20, 20), 100).save(tmp_path / "grey.png")
    assert load_rgb(tmp_path / "grey.png").getpixel((0, 0)) == (100, 100, 100)
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in CMYK
    r, g, b = load_rgb(tmp_path / "cmyk.jpg").getpixel((10, 10))
    assert r > 240 and g < 15 and b < 15
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent -> white background
    rgba.save(tmp_path / "alpha.png")
    picture = load_rgb(tmp_path / "alpha.png")
    assert picture.mode == "RGB" and picture.getpixel((0, 0)) == (255, 255, 255)
    assert picture.getpixel((5, 5)) == (0, 0, 255)
    Image.new("I;16", (20, 20), 65535).save(tmp_path / "deep.png")
    assert load_rgb(tmp_path / "deep.png").getpixel((3, 3)) == (255, 255, 255)
    Image.new("P", (20, 20), 0).save(tmp_path / "palette.gif")
    assert load_rgb(tmp_path / "palette.gif").mode == "RGB"


def test_exif_orientation_is_applied(tmp_path) -> None:
    picture = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = picture.getexif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees to view
    picture.save(tmp_path / "rot.jpg", exif=exif)
    assert image_size(tmp_path / "rot.jpg") == (20, 40)
    assert load_rgb(tmp_path / "rot.jpg").size == (20, 40)


def test_bad_files_raise_image_load_error_with_a_reason(tmp_path) -> None:
    Image.new("RGB", (10, 30)).save(tmp_path / "tiny.png")
    with pytest.raises(ImageLoadError, match="too small"):
        image_size(tmp_path / "tiny.png")
    Image.new("RGB", (300, 200), (10, 20, 30)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_rgb(tmp_path / "cut.jpg")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        image_size(tmp_path / "text.jpg")
    with pytest.raises(ImageLoadError, match="file not found"):
        image_size(tmp_path / "missing.jpg")


def test_resized_shape_keeps_aspect_and_a_minimum_side() -> None:
    assert resized_shape(1024, 768, 448) == (336, 448)
    assert resized_shape(768, 1024, 448) == (448, 336)
    assert resized_shape(1000, 333, 500) == (166, 500)  # 166.5 rounds to even
    assert resized_shape(2000, 50, 256) == (64, 256)  # short side raised to MIN_INPUT_SIDE


def test_group_batches_only_stacks_identical_shapes() -> None:
    shapes = [(3, 4), (4, 3), (3, 4), (3, 4), (5, 5), (3, 4)]
    assert group_batches(shapes, 2) == [[0, 2], [1], [3, 5], [4]]
    assert group_batches(shapes, 16) == [[0, 2, 3, 5], [1], [4]]


def test_combine_scales_by_hand() -> None:
    per_scale = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # two scales of one image
    mean = np.array([0.8, 0.4]) / math.hypot(0.8, 0.4)
    assert combine_scales(per_scale, None).tolist() == pytest.approx(mean.tolist(), rel=1e-6)
    g = np.array([(1.216 / 2) ** (1 / 3), (0.512 / 2) ** (1 / 3)])
    assert combine_scales(per_scale, 3.0).tolist() == pytest.approx((g / np.linalg.norm(g)).tolist(), rel=1e-5)
    assert combine_scales(per_scale[:1], 3.0).tolist() == [1.0, 0.0]


# -- extraction ----------------------------------------------------------------------------------
def test_descriptors_by_hand_with_failures_listed_in_order(tmp_path) -> None:
    names = [solid(tmp_path / "red.png", (255, 0, 0)), "missing.jpg",
             solid(tmp_path / "grey.jpg", 128, mode="L", size=(60, 80)),
             solid(tmp_path / "tiny.png", (0, 0, 255), size=(8, 8))]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    names.append("broken.jpg")
    names.append(solid(tmp_path / "teal.png", (0, 255, 255), size=(90, 60)))
    result = extract_descriptors(pixel_model(), names, root=tmp_path, image_size=64, device="cpu",
                                 num_workers=0, progress=False)
    assert result.paths == ["red.png", "grey.jpg", "teal.png"]
    np.testing.assert_allclose(result.descriptors, [[1, 0, 0], [1 / math.sqrt(3)] * 3,
                                                    [0, 1 / math.sqrt(2), 1 / math.sqrt(2)]], atol=1e-6)
    assert result.descriptors.dtype == np.float32
    assert [p for p, _ in result.failed] == ["missing.jpg", "tiny.png", "broken.jpg"]
    assert "file not found" in result.failed[0][1] and "too small" in result.failed[1][1]
    assert result.seconds > 0


def test_batching_and_workers_do_not_change_descriptors(tmp_path) -> None:
    rng = np.random.default_rng(0)
    names = []
    for i, size in enumerate([(96, 64), (64, 96), (96, 64), (80, 80), (96, 64)]):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        names.append(f"{i}.png")
    model = build_model(ModelConfig("efficientnet-lite0", "spoc", "none"))
    one = extract_descriptors(model, names, root=tmp_path, image_size=96, batch_size=1, device="cpu",
                              num_workers=0, progress=False)
    many = extract_descriptors(model, names, root=tmp_path, image_size=96, batch_size=8, device="cpu",
                               num_workers=2, progress=False)
    assert one.paths == many.paths == names
    np.testing.assert_allclose(one.descriptors, many.descriptors, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(many.descriptors, axis=1), 1.0, atol=1e-5)


def test_crops_select_a_box_in_original_pixels(tmp_path) -> None:
    picture = Image.new("RGB", (100, 80), (255, 0, 0))
    picture.paste((0, 0, 255), (50, 0, 100, 80))  # right half blue
    picture.save(tmp_path / "two.png")
    result = extract_descriptors(pixel_model(), ["two.png", "two.png"], root=tmp_path, image_size=64,
                                 device="cpu", num_workers=0, progress=False,
                                 crops=[(50.2, 10, 99.6, 70), None])
    np.testing.assert_allclose(result.descriptors[0], [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(result.descriptors[1], [1 / math.sqrt(2), 0, 1 / math.sqrt(2)], atol=1e-6)
    empty = extract_descriptors(pixel_model(), ["two.png"], root=tmp_path, image_size=64, device="cpu",
                                num_workers=0, progress=False, crops=[(200, 0, 300, 10)])
    assert empty.paths == [] and "empty" in empty.failed[0][1]


def test_multiscale_and_model_whitening(tmp_path) -> None:
    # left half red, right half green: at 2 scales the MAC descriptor is (1, 1, 0) / sqrt 2 at both
    picture = Image.new("RGB", (128, 64), (255, 0, 0))
    picture.paste((0, 255, 0), (64, 0, 128, 64))
    picture.save(tmp_path / "rg.png")
    model = pixel_model()
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
        layer.bias.copy_(torch.tensor([0.0, 0.5]))
    model.set_whitening(layer)
    result = extract_descriptors(model, ["rg.png"], root=tmp_path, image_size=128, scales=(1.0, 0.5),
                                 device="cpu", num_workers=0, progress=False)
    # whitening of (1, 1, 0)/sqrt 2: (1/sqrt 2, 0.5) -> L2
    expected = np.array([1 / math.sqrt(2), 0.5])
    np.testing.assert_allclose(result.descriptors[0], expected / np.linalg.norm(expected), atol=1e-6)
    assert model.backbone.seen == 2  # one pass per scale


def test_interrupted_extraction_resumes_from_its_checkpoint(tmp_path) -> None:
    names = [solid(tmp_path / f"{i}.png", (40 * i, 0, 0), size=(64 + 16 * i, 64)) for i in range(5)]
    checkpoint = tmp_path / "out.partial.npz"
    model = pixel_model()
    model.backbone.interrupt_after = 2  # two batches (one image each: all shapes differ), then Ctrl-C
    with pytest.raises(KeyboardInterrupt):
        extract_descriptors(model, names, root=tmp_path, image_size=128, device="cpu", num_workers=0,
                            progress=False, checkpoint=checkpoint)
    assert checkpoint.is_file()
    model.backbone.interrupt_after, model.backbone.seen = None, 0
    resumed = extract_descriptors(model, names, root=tmp_path, image_size=128, device="cpu", num_workers=0,
                                  progress=False, checkpoint=checkpoint)
    assert model.backbone.seen == 3 and not checkpoint.exists()
    fresh = extract_descriptors(pixel_model(), names, root=tmp_path, image_size=128, device="cpu",
                                num_workers=0, progress=False)
    assert resumed.paths == fresh.paths == names
    np.testing.assert_allclose(resumed.descriptors, fresh.descriptors)


def test_checkpoint_of_another_extraction_is_refused(tmp_path) -> None:
    names = [solid(tmp_path / "a.png", (255, 0, 0)), solid(tmp_path / "b.png", (0, 255, 0), size=(64, 90))]
    checkpoint = tmp_path / "x.partial.npz"
    model = pixel_model()
    model.backbone.interrupt_after = 1
    with pytest.raises(KeyboardInterrupt):
        extract_descriptors(model, names, root=tmp_path, image_size=128, device="cpu", num_workers=0,
                            progress=False, checkpoint=checkpoint)
    with pytest.raises(RkitError, match="belongs to another extraction"):
        extract_descriptors(pixel_model(), names, root=tmp_path, image_size=160, device="cpu", num_workers=0,
                            progress=False, checkpoint=checkpoint)


def test_model_mode_is_restored(tmp_path) -> None:
    model = pixel_model().train()
    extract_descriptors(model, [solid(tmp_path / "a.png", (1, 2, 3))], root=tmp_path, image_size=64,
                        device="cpu", num_workers=0, progress=False)
    assert model.training


# -- the command line --------------------------------------------------------------------------------
def run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_rkit_extract_writes_descriptors_meta_and_summary(tmp_path, capsys) -> None:
    (tmp_path / "imgs" / "x").mkdir(parents=True)
    solid(tmp_path / "imgs" / "x" / "a.png", (255, 0, 0))
    solid(tmp_path / "imgs" / "x" / "b.jpg", 50, mode="L", size=(64, 96))
    Image.new("RGBA", (70, 70), (0, 0, 255, 128)).save(tmp_path / "imgs" / "c.png")
    (tmp_path / "imgs" / "d.jpg").write_bytes(b"corrupt")
    out = tmp_path / "d.npz"
    code = run_cli(["extract", str(tmp_path / "imgs"), "--backbone", "efficientnet-lite0", "--weights", "none",
                    "--pooling", "gem:p=4", "--image-size", "64", "--scales", "1,0.5", "--workers", "0",
                    "--device", "cpu", "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = DescriptorSet.load(out)
    assert data.paths == ["c.png", "x/a.png", "x/b.jpg"] and data.descriptors.shape == (3, 1280)
    assert data.meta["model"] == {"backbone": "efficientnet-lite0", "pooling": "gem:p=4", "weights": "none"}
    assert data.meta["image_size"] == 64 and data.meta["scales"] == [1.0, 0.5] and data.meta["pooling_p"] == 4.0
    assert [p for p, _ in data.meta["failed"]] == ["d.jpg"]
    assert "extracted 3 of 4 images -> 1280-D" in captured.out and "images/s" in captured.out
    assert "d.jpg: not a readable image" in captured.out
    assert not list(tmp_path.glob("*.partial.npz"))


def test_rkit_extract_with_saved_model_and_whitening_file(tmp_path, capsys) -> None:
    from retrievalkit.whitening import FittedWhitening

    solid(tmp_path / "a.png", (255, 0, 0))
    model = build_model(ModelConfig("alexnet", "mac", "none"))
    model.save(tmp_path / "model")
    projection = np.zeros((2, 256))
    projection[0, 0] = projection[1, 1] = 1.0
    FittedWhitening(np.zeros(256), projection, "test").save(tmp_path / "w.npz")
    out = tmp_path / "o.npz"
    code = run_cli(["extract", str(tmp_path / "a.png"), "--model", str(tmp_path / "model"), "--whiten",
                    str(tmp_path / "w.npz"), "--image-size", "64", "--workers", "0", "--no-progress",
                    "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = DescriptorSet.load(out)
    assert data.descriptors.shape == (1, 2) and data.meta["whitening"]["method"] == "test"
    unwhitened = extract_descriptors(model, ["a.png"], root=tmp_path, image_size=64, device="cpu",
                                     num_workers=0, progress=False).descriptors[0]
    expected = unwhitened[:2] / np.linalg.norm(unwhitened[:2])
    np.testing.assert_allclose(data.descriptors[0], expected, atol=1e-5)
    assert json.loads(json.dumps(data.meta))["model_dir"] == str(tmp_path / "model")


@pytest.mark.parametrize("args, message", [
    (["--scales", "1,zero"], "--scales '1,zero'"),
    (["--pooling", "gem:q=2"], "'gem' has no option 'q'"),
    (["--pooling", "gme"], "Did you mean 'gem'"),
    (["--backbone", "alexnet", "--weights", "nothere.pth"], "nothere.pth does not exist"),
])
def test_rkit_extract_user_errors_exit_2_with_a_message(tmp_path, capsys, args, message) -> None:
    (tmp_path / "imgs").mkdir()  # the output may not lie inside the input folder
    solid(tmp_path / "imgs" / "a.png", (255, 0, 0))
    code = run_cli(["extract", str(tmp_path / "imgs"), "--out", str(tmp_path / "o.npz"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.landmarks
def test_pretrained_descriptors_match_photos_of_the_same_landmark(landmarks_dir) -> None:
    picks = {"lund": ["01.jpg", "02.jpg"], "sceaux_castle": None, "herzjesu_P8": None}
    paths = []
    for folder, names in picks.items():
        names = names or sorted(p.name for p in (landmarks_dir / folder).iterdir())[:2]
        paths += [f"{folder}/{name}" for name in names]
    model = build_model(ModelConfig("efficientnet-lite0", "gem", "imagenet"))
    result = extract_descriptors(model, paths, root=landmarks_dir, image_size=224, device="cpu",
                                 num_workers=0, progress=False)
    assert result.paths == paths and not result.failed
    similarity = result.descriptors @ result.descriptors.T
    np.fill_diagonal(similarity, -1)
    nearest = similarity.argmax(axis=1)
    assert [paths[j].split("/")[0] for j in nearest] == [p.split("/")[0] for p in paths]


# -- listing through symbolic links ---------------------------------------------------------------
def test_list_images_follows_symlinked_folders_and_cuts_loops(tmp_path) -> None:
    store = tmp_path / "store"
    (store / "a").mkdir(parents=True)
    (store / "b").mkdir()
    solid(store / "a" / "1.png", (255, 0, 0))
    solid(store / "b" / "2.png", (0, 255, 0))
    collection = tmp_path / "collection"
    collection.mkdir()
    (collection / "first").symlink_to(store / "a", target_is_directory=True)
    (collection / "second").symlink_to(store / "b", target_is_directory=True)
    (collection / "again").symlink_to(store / "a", target_is_directory=True)   # same folder twice
    (store / "a" / "loop").symlink_to(collection, target_is_directory=True)   # a cycle back up
    (collection / "dangling").symlink_to(tmp_path / "nowhere")
    (collection / "one.png").symlink_to(store / "b" / "2.png")
    root, paths = list_images(collection)
    assert root == collection
    assert paths == ["again/1.png", "one.png", "second/2.png"]


def test_sfm_lists_images_through_the_same_walk(tmp_path) -> None:
    from retrievalkit.sfm import find_images

    (tmp_path / "real").mkdir()
    solid(tmp_path / "real" / "x.jpg", (1, 2, 3))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    assert find_images(tmp_path / "photos") == list_images(tmp_path / "photos")[1] == ["linked/x.jpg"]


# -- batches by pixel budget -------------------------------------------------------------------------
def test_large_images_go_in_small_batches() -> None:
    shapes = [(768, 1024)] * 5 + [(336, 448)] * 20
    batches = group_batches(shapes, batch_size=16, max_pixels=2**21)
    assert [len(b) for b in batches if b[0] < 5] == [2, 2, 1]
    assert [len(b) for b in batches if b[0] >= 5] == [13, 7]
    assert group_batches([(4000, 4000)], batch_size=16, max_pixels=2**21) == [[0]]


# -- non-finite descriptors are refused where they are made ---------------------------------------------
def test_gem_with_a_huge_exponent_stays_finite(tmp_path, capsys) -> None:
    (tmp_path / "imgs").mkdir()
    solid(tmp_path / "imgs" / "a.png", (255, 0, 0))
    solid(tmp_path / "imgs" / "b.png", (0, 90, 200), size=(64, 90))
    out = tmp_path / "o.npz"
    code = run_cli(["extract", str(tmp_path / "imgs"), "--backbone", "efficientnet-lite0", "--weights", "none",
                    "--pooling", "gem:p=1000", "--image-size", "64", "--scales", "1,0.5", "--workers", "0",
                    "--device", "cpu", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = DescriptorSet.load(out)
    assert np.isfinite(data.descriptors).all()
    np.testing.assert_allclose(np.linalg.norm(data.descriptors, axis=1), 1.0, atol=1e-5)


class Overflowing(PixelBackbone):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = super().forward(images).clone()
        out[:, 0] = float("inf")
        return out


def test_a_non_finite_network_output_is_refused_and_finished_work_is_kept(tmp_path) -> None:
    names = [solid(tmp_path / "a.png", (255, 0, 0))]
    checkpoint = tmp_path / "o.partial.npz"
    model = RetrievalModel(Overflowing(), MaxPool(), ModelConfig("pixels", "max", "none"))
    with pytest.raises(RkitError, match=r"non-finite \(NaN or infinite\) descriptors for 1 image\(s\) \(a.png\)"):
        extract_descriptors(model, names, root=tmp_path, image_size=64, device="cpu", num_workers=0,
                            progress=False, checkpoint=checkpoint)
    assert checkpoint.is_file()  # the (empty) progress is saved; nothing non-finite in it


def test_checkpoint_every_is_a_flag(tmp_path, monkeypatch) -> None:
    import retrievalkit.extract as extract_module

    saves = []
    real = extract_module.save_pooled
    monkeypatch.setattr(extract_module, "save_pooled", lambda *a, **k: (saves.append(1), real(*a, **k)))
    (tmp_path / "imgs").mkdir()
    names = [solid(tmp_path / "imgs" / f"{i}.png", (40 * i, 0, 0), size=(64 + 16 * i, 64)) for i in range(3)]
    (tmp_path / "out").mkdir()
    assert run_cli(["extract", str(tmp_path / "imgs"), "--backbone", "alexnet", "--weights", "none", "--pooling", "mac",
                    "--image-size", "128", "--workers", "0", "--device", "cpu", "--no-progress",
                    "--checkpoint-every", "0.000001", "--out", str(tmp_path / "out" / "o.npz")]) == 0
    assert len(saves) >= 2 and len(names) == 3  # a save after (nearly) every batch
    assert run_cli(["extract", str(tmp_path / "imgs"), "--checkpoint-every", "0", "--out", str(tmp_path / "x.npz")]) == 2


# -- whitening files: one code path with the model's whitening layer ----------------------------------
def test_whitening_file_and_model_layer_give_identical_descriptors(tmp_path) -> None:
    from retrievalkit.whitening import FittedWhitening

    rng = np.random.default_rng(1)
    names = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        names.append(f"{i}.png")
    fitted = FittedWhitening(rng.normal(size=3) * 0.1, rng.normal(size=(2, 3)), "test")
    by_file = extract_descriptors(pixel_model(), names, root=tmp_path, image_size=64, device="cpu",
                                  num_workers=0, progress=False, whitening=fitted)
    carried = pixel_model()
    carried.set_whitening(fitted.to_linear())
    by_layer = extract_descriptors(carried, names, root=tmp_path, image_size=64, device="cpu",
                                   num_workers=0, progress=False)
    plain = extract_descriptors(pixel_model(), names, root=tmp_path, image_size=64, device="cpu",
                                num_workers=0, progress=False)
    np.testing.assert_array_equal(by_file.descriptors, by_layer.descriptors)
    np.testing.assert_array_equal(by_file.descriptors, fitted.apply(plain.descriptors))
    with pytest.raises(RkitError, match="whitens 4-D descriptors but this model gives 3-D"):
        extract_descriptors(pixel_model(), names, root=tmp_path, whitening=FittedWhitening(np.zeros(4), np.eye(4), "x"))


def test_reuse_freed_memory_nests_and_restores() -> None:
    import platform

    import retrievalkit.memory as memory

    with memory.reuse_freed_memory() as outer:
        with memory.reuse_freed_memory() as inner:
            assert outer == inner == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
            assert memory._depth == (2 if outer else 0)
        torch.ones(4096, 4096).sum()  # a 64 MB block, freed and reused inside the block
    assert memory._depth == 0
