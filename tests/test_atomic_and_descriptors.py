"""Atomic output and the descriptors file format."""

from __future__ import annotations

import numpy as np
import pytest

from retrievalkit.atomic import atomic_path, write_text_atomic
from retrievalkit.descriptors import DescriptorSet
from retrievalkit.errors import RkitError


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_output_gets_ordinary_permissions(tmp_path):
    import os

    target = tmp_path / "shared.txt"
    write_text_atomic(target, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_descriptor_set_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, 4)).astype(np.float64)
    original = DescriptorSet(vectors, ["a/1.jpg", "a/2.jpg", "b/ü.jpg"], {"image_size": 448})
    path = original.save(tmp_path / "d.npz")
    loaded = DescriptorSet.load(path)
    assert loaded.descriptors.dtype == np.float32
    np.testing.assert_array_equal(loaded.descriptors, vectors.astype(np.float32))
    assert loaded.paths == original.paths
    assert loaded.meta["image_size"] == 448 and loaded.meta["format_version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def test_descriptor_set_shape_checked():
    with pytest.raises(ValueError):
        DescriptorSet(np.zeros((2, 3)), ["only-one"])


def test_loading_missing_or_foreign_file_is_clear(tmp_path):
    with pytest.raises(RkitError, match="rkit extract"):
        DescriptorSet.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(RkitError, match="not a descriptors file"):
        DescriptorSet.load(tmp_path / "other.npz")


def test_descriptors_file_from_a_newer_format_is_refused(tmp_path):
    from retrievalkit.npzfile import save_npz

    save_npz(tmp_path / "new.npz", {}, 99, descriptors=np.zeros((1, 2), np.float32),
             paths=np.asarray(["a.jpg"]))
    with pytest.raises(RkitError, match="newer retrievalkit"):
        DescriptorSet.load(tmp_path / "new.npz")
