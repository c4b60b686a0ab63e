"""Whitening: hand-computed fits, whitening of a known covariance, dims, persistence, layer form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from retrievalkit.errors import RkitError, UnknownComponentError
from retrievalkit.model import RetrievalModel
from retrievalkit.plugins import get_host
from retrievalkit.whitening import (FittedWhitening, WhiteningData, fit_whitening, inverse_sqrt_psd,
                                    pair_scatter, pairs_from_labels, read_pairs_file)

# -- a 2-D example small enough to fit by hand ---------------------------------------------
# x0=(0,0) x1=(2,0) x2=(0,3) x3=(0,4); S = {(0,1), (2,3)}, D = {(0,2)}
#   C_S = ((2,0)(2,0)^T + (0,1)(0,1)^T) / 2 = diag(2, 0.5);  C_S^(-1/2) = diag(1/sqrt2, sqrt2)
#   C_D = (0,3)(0,3)^T = [[0,0],[0,9]];  C_S^(-1/2) C_D C_S^(-1/2) = [[0,0],[0,18]]
#   -> one meaningful direction, eigenvalue 18, P = (0,1) C_S^(-1/2) = (0, sqrt2)
#   m = (0.5, 1.75), psi(x) = L2(sqrt2 (y - 1.75)) = sign(y - 1.75)
HAND_X = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 4.0]])
HAND_S = np.array([[0, 1], [2, 3]])
HAND_D = np.array([[0, 2]])


def test_learned_whitening_matches_hand_computation():
    data = WhiteningData(HAND_X, HAND_S, HAND_D)
    np.testing.assert_allclose(pair_scatter(HAND_X, HAND_S), np.diag([2.0, 0.5]))
    np.testing.assert_allclose(pair_scatter(HAND_X, HAND_D), [[0.0, 0.0], [0.0, 9.0]])
    fitted = fit_whitening("learned:ridge=0", data, dim=1)
    np.testing.assert_allclose(fitted.mean, [0.5, 1.75])
    np.testing.assert_allclose(fitted.projection, [[0.0, np.sqrt(2.0)]], atol=1e-12)
    np.testing.assert_allclose(fitted.meta["eigenvalues"], [18.0])
    assert fitted.meta["rank"] == 1
    np.testing.assert_allclose(fitted.apply(HAND_X).ravel(), [-1.0, -1.0, 1.0, 1.0], atol=1e-7)
    assert fitted.method == "learned:rotation=negatives:ridge=0"


def test_learned_whitening_refuses_more_dims_than_the_pairs_give():
    with pytest.raises(RkitError, match=r"at most 1 meaningful dimensions.*dim=2.*--dim 1"):
        fit_whitening("learned:ridge=0", WhiteningData(HAND_X, HAND_S, HAND_D), dim=2)
    # dim=None keeps every meaningful direction
    assert fit_whitening("learned:ridge=0", WhiteningData(HAND_X, HAND_S, HAND_D)).out_dim == 1


def test_inverse_sqrt_with_and_without_ridge():
    c = np.array([[4.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(inverse_sqrt_psd(c), np.diag([0.5, 1.0]))
    # relative ridge: + 0.2 * trace / D = + 0.5 on the diagonal
    np.testing.assert_allclose(inverse_sqrt_psd(c, ridge=0.2), np.diag([1 / np.sqrt(4.5), 1 / np.sqrt(1.5)]))
    with pytest.raises(RkitError, match="singular.*ridge"):
        inverse_sqrt_psd(np.diag([1.0, 0.0]))
    np.testing.assert_allclose(inverse_sqrt_psd(np.diag([1.0, 0.0]), ridge=0.02), np.diag([1 / np.sqrt(1.01), 10.0]))


# -- a known covariance ------------------------------------------------------------------------

def _clustered(rng, n_classes, per_class, within_cov, between_scale=3.0):
    d = within_cov.shape[0]
    chol = np.linalg.cholesky(within_cov)
    centres = rng.normal(scale=between_scale, size=(n_classes, d))
    labels = np.repeat(np.arange(n_classes), per_class)
    x = centres[labels] + rng.normal(size=(len(labels), d)) @ chol.T
    return x, labels


def _known_within_cov(d: int) -> np.ndarray:
    a = np.random.default_rng(42).normal(size=(d, d))
    q, _ = np.linalg.qr(a)
    return q @ np.diag(np.linspace(0.05, 2.0, d)) @ q.T  # strongly anisotropic, not diagonal


def test_learned_projection_whitens_the_matching_pair_covariance():
    d = 6
    rng = np.random.default_rng(0)
    within = _known_within_cov(d)
    x, labels = _clustered(rng, n_classes=200, per_class=10, within_cov=within)
    data = WhiteningData.from_labels(x, labels)
    fitted = fit_whitening("learned:ridge=0", data)
    p = fitted.projection
    c_s = pair_scatter(x, data.positive_pairs)
    # exactly whitens C_S on the training pairs, and orders the C_D directions decreasingly
    np.testing.assert_allclose(p @ c_s @ p.T, np.eye(d), atol=1e-9)
    rotated = p @ pair_scatter(x, data.negative_pairs) @ p.T
    np.testing.assert_allclose(rotated, np.diag(fitted.meta["eigenvalues"]), atol=1e-8)
    assert np.all(np.diff(fitted.meta["eigenvalues"]) <= 0)
    # C_S estimates 2 * the within-class covariance, so the fit whitens fresh matching pairs too
    np.testing.assert_allclose(c_s, 2 * within, atol=0.2)
    fresh, fresh_labels = _clustered(np.random.default_rng(1), 200, 10, within)
    fresh_pairs, _ = pairs_from_labels(fresh_labels)
    np.testing.assert_allclose(p @ pair_scatter(fresh, fresh_pairs) @ p.T, np.eye(d), atol=0.1)
    # with a ridge it whitens the regularised C_S + 0.001 * trace(C_S) / D * I exactly
    ridged = fit_whitening("learned:ridge=0.001", data).projection
    regularised = c_s + 0.001 * np.trace(c_s) / d * np.eye(d)
    np.testing.assert_allclose(ridged @ regularised @ ridged.T, np.eye(d), atol=1e-9)
    assert not np.allclose(ridged @ c_s @ ridged.T, np.eye(d), atol=1e-3)


def test_learned_rotation_all_diagonalises_the_whitened_descriptor_covariance():
    d = 5
    x, labels = _clustered(np.random.default_rng(3), 30, 6, _known_within_cov(d))
    positives, _ = pairs_from_labels(labels)
    fitted = fit_whitening("learned:rotation=all:ridge=0", WhiteningData(x, positives, None))
    p = fitted.projection
    np.testing.assert_allclose(p @ pair_scatter(x, positives) @ p.T, np.eye(d), atol=1e-9)
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(p @ (centred.T @ centred / len(x)) @ p.T, np.diag(fitted.meta["eigenvalues"]),
                               atol=1e-8)
    assert fitted.meta["n_negative_pairs"] == 0


def test_pca_whitening_gives_unit_variance_on_the_training_set():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12)) + 3.0
    fitted = fit_whitening("pca", WhiteningData(x), dim=7)
    z = (x - fitted.mean) @ fitted.projection.T
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(z.T @ z / len(x), np.eye(7), atol=1e-9)
    assert fitted.out_dim == 7 and fitted.in_dim == 12
    # the first 7 components of the full fit are the 7-D fit (nested by decreasing eigenvalue)
    full = fit_whitening("pca", WhiteningData(x))
    np.testing.assert_allclose(full.projection[:7], fitted.projection, atol=1e-9)
    np.testing.assert_allclose(full.truncated(7).apply(x), fitted.apply(x), atol=1e-6)


def test_pca_matches_hand_computation_and_plain_pca_option():
    # mean 0; covariance = diag(9+9, 1+1)/4 = diag(4.5, 0.5); axes x then y
    x = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    fitted = fit_whitening("pca", WhiteningData(x))
    np.testing.assert_allclose(fitted.projection, np.diag([1 / np.sqrt(4.5), 1 / np.sqrt(0.5)]), atol=1e-12)
    np.testing.assert_allclose(fitted.meta["eigenvalues"], [4.5, 0.5])
    plain = fit_whitening("pca:whiten=false", WhiteningData(x), dim=1)
    np.testing.assert_allclose(plain.projection, [[1.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(plain.apply(np.array([[2.0, 5.0], [-0.5, 1.0]])).ravel(), [1.0, -1.0])


def test_pca_dim_beyond_rank_is_a_clear_error():
    x = np.random.default_rng(0).normal(size=(10, 20))  # 10 descriptors span 9 directions
    with pytest.raises(RkitError, match=r"at most 9 meaningful.*dim=10.*10 descriptors span at most 9"):
        fit_whitening("pca", WhiteningData(x), dim=10)
    assert fit_whitening("pca", WhiteningData(x)).out_dim == 9
    assert fit_whitening("pca", WhiteningData(x), dim=9).out_dim == 9


def test_none_is_the_identity_and_cannot_reduce():
    x = np.array([[3.0, 4.0], [0.0, -2.0]])
    fitted = fit_whitening("none", WhiteningData(x))
    np.testing.assert_allclose(fitted.apply(x), [[0.6, 0.8], [0.0, -1.0]])
    with pytest.raises(RkitError, match="cannot give dim=1"):
        fit_whitening("none", WhiteningData(x), dim=1)


# -- supervision ---------------------------------------------------------------------------

def test_pairs_from_labels_all_and_sampled():
    positives, negatives = pairs_from_labels(["a", "a", "b", "a"])
    assert positives.tolist() == [[0, 1], [0, 3], [1, 3]]
    assert negatives.tolist() == [[0, 2], [1, 2], [2, 3]]
    labels = np.repeat(np.arange(5), 4)  # 5 * C(4,2) = 30 positives, 190 - 30 = 160 negatives
    positives, negatives = pairs_from_labels(labels, max_pairs=25, seed=1)
    assert len(positives) == 25 and len(negatives) == 25
    assert np.all(labels[positives[:, 0]] == labels[positives[:, 1]])
    assert np.all(labels[negatives[:, 0]] != labels[negatives[:, 1]])
    again = pairs_from_labels(labels, max_pairs=25, seed=1)
    assert again[0].tolist() == positives.tolist()


def test_pairs_from_labels_samples_large_collections_without_listing_all(monkeypatch):
    import retrievalkit.whitening as whitening

    labels = np.concatenate([np.repeat(np.arange(6), 5), [10, 11]])  # 6 * C(5,2) = 60 positives
    all_pos, all_neg = pairs_from_labels(labels, max_pairs=None)
    assert (len(all_pos), len(all_neg)) == (60, 32 * 31 // 2 - 60)
    monkeypatch.setattr(whitening, "ENUMERATE_LIMIT", 10)  # force the sampling path
    # at most max_pairs of a kind: every pair, listed class by class, same order as enumeration
    pos, neg = pairs_from_labels(labels, max_pairs=1000)
    assert pos.tolist() == all_pos.tolist() and neg.tolist() == all_neg.tolist()
    pos, neg = pairs_from_labels(labels, max_pairs=40, seed=2)
    assert len(pos) == 40 and len(neg) == 40
    assert len(np.unique(pos, axis=0)) == 40 and len(np.unique(neg, axis=0)) == 40
    assert np.all(pos[:, 0] < pos[:, 1]) and np.all(neg[:, 0] < neg[:, 1])
    assert np.all(labels[pos[:, 0]] == labels[pos[:, 1]])
    assert np.all(labels[neg[:, 0]] != labels[neg[:, 1]])
    with pytest.raises(RkitError, match="--max-pairs"):
        pairs_from_labels(labels, max_pairs=None)


def test_learned_needs_pairs_and_gets_them_from_labels():
    x = np.random.default_rng(0).normal(size=(8, 3))
    with pytest.raises(RkitError, match="needs matching and non-matching pairs.*--labels"):
        fit_whitening("learned", WhiteningData(x))
    with_labels = WhiteningData(x, labels=["a", "a", "b", "b", "c", "c", "d", "d"])
    assert fit_whitening("learned", with_labels, dim=3).out_dim == 3
    with pytest.raises(RkitError, match="needs non-matching pairs"):
        fit_whitening("learned", WhiteningData(x, [[0, 1]], np.zeros((0, 2), int)))
    with pytest.raises(RkitError, match="needs matching pairs"):
        fit_whitening("learned", WhiteningData(x, np.zeros((0, 2), int), [[0, 1]]))


def test_bad_inputs_are_clear_errors():
    x = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.raises(RkitError, match="only 4 descriptors"):
        WhiteningData(x, [[0, 4]], [[0, 1]])
    with pytest.raises(RkitError, match=r"\(P, 2\)"):
        WhiteningData(x, [0, 1, 2], None)
    with pytest.raises(RkitError, match="NaN"):
        WhiteningData(np.full((2, 2), np.nan))
    with pytest.raises(RkitError, match="rotation must be one of negatives, all"):
        fit_whitening("learned:rotation=random", WhiteningData(x, [[0, 1]], [[0, 2]]))
    with pytest.raises(UnknownComponentError, match="Did you mean 'pca'"):
        fit_whitening("pcaa", WhiteningData(x))
    with pytest.raises(RkitError, match="two output dimensions"):
        fit_whitening("pca:dim=2", WhiteningData(x), dim=3)
    fitted = fit_whitening("pca", WhiteningData(x), dim=2)
    with pytest.raises(RkitError, match="expects 3-D descriptors but got shape"):
        fitted.apply(np.ones((2, 5)))


def test_read_pairs_file_paths_and_indices(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("# query\tother\tmatch\na/1.jpg\ta/2.jpg\t1\n0 2 0\n\nb/3.jpg\t1\t0\n")
    positives, negatives = read_pairs_file(pairs, ["a/1.jpg", "a/2.jpg", "b/3.jpg"])
    assert positives.tolist() == [[0, 1]]
    assert negatives.tolist() == [[0, 2], [2, 1]]
    pairs.write_text("a/1.jpg\tc/9.jpg\t1\n")
    with pytest.raises(RkitError, match=r"pairs.tsv:1: 'c/9.jpg' is neither a row index nor a path"):
        read_pairs_file(pairs, ["a/1.jpg"])
    pairs.write_text("0\t1\tyes\n")
    with pytest.raises(RkitError, match=r"expected A<TAB>B<TAB>1\|0"):
        read_pairs_file(pairs, ["a", "b"])
    with pytest.raises(RkitError, match="does not exist"):
        read_pairs_file(tmp_path / "missing.tsv", [])


# -- persistence and the linear-layer form --------------------------------------------------

def _fitted_learned(dim: int = 4) -> tuple[FittedWhitening, np.ndarray]:
    x, labels = _clustered(np.random.default_rng(7), 12, 5, _known_within_cov(8))
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return fit_whitening("learned", WhiteningData.from_labels(x, labels), dim=dim), x


def test_save_load_round_trip(tmp_path):
    fitted, x = _fitted_learned()
    fitted.meta["source"] = "train.npz"
    path = fitted.save(tmp_path / "lw.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lw.npz"]  # no temporary file left
    loaded = FittedWhitening.load(path)
    assert loaded.method == fitted.method and (loaded.in_dim, loaded.out_dim) == (8, 4)
    np.testing.assert_array_equal(loaded.projection, fitted.projection)
    np.testing.assert_array_equal(loaded.mean, fitted.mean)
    np.testing.assert_array_equal(loaded.apply(x), fitted.apply(x))
    assert loaded.meta["source"] == "train.npz" and loaded.meta["n_positive_pairs"] == 12 * 10
    assert loaded.describe("lw.npz") == {"method": fitted.method, "in_dim": 8, "out_dim": 4,
                                         "source": "train.npz", "file": "lw.npz"}
    with pytest.raises(RkitError, match="does not exist.*rkit whiten fit"):
        FittedWhitening.load(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(RkitError, match="is not a whitening file"):
        FittedWhitening.load(tmp_path / "bad.npz")


def test_apply_output_is_unit_norm_float32():
    fitted, x = _fitted_learned()
    out = fitted.apply(x.astype(np.float32))
    assert out.dtype == np.float32 and out.shape == (len(x), 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(fitted.apply(x[0]), out[0], atol=1e-7)


class _TinyBackbone(nn.Module):
    """A fixed random 1x1 convolution standing in for a CNN (8 channels)."""

    out_channels = 8
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_linear_layer_form_gives_the_same_output_as_apply():
    fitted, x = _fitted_learned()
    layer = fitted.to_linear()
    assert (layer.in_features, layer.out_features) == (8, 4)
    np.testing.assert_allclose(layer.bias.detach().numpy(), -fitted.projection @ fitted.mean, rtol=1e-6)
    model = RetrievalModel(_TinyBackbone(), get_host().build("pooling", "mac"))
    model.set_whitening(layer)
    assert model.out_dim == 4
    with torch.no_grad():
        whitened = model.whiten(torch.from_numpy(x).float()).numpy()
        np.testing.assert_allclose(whitened, fitted.apply(x), atol=1e-5)
        # end to end: images -> model equals apply() on the model's pooled descriptors
        images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        pooled = model.pooled(images).numpy()
        np.testing.assert_allclose(model(images).numpy(), fitted.apply(pooled), atol=1e-5)


def test_too_little_training_data_is_a_clear_error():
    one = np.ones((1, 4))
    with pytest.raises(RkitError, match="no meaningful direction.*1 descriptors span at most 0"):
        fit_whitening("pca", WhiteningData(one))
    # one matching and one non-matching pair in 4-D: C_S is singular (the ridge copes), but the
    # non-matching pair spans a single direction, so only 1 output dimension is meaningful
    x = np.random.default_rng(0).normal(size=(3, 4))
    data = WhiteningData(x, [[0, 1]], [[0, 2]])
    assert fit_whitening("learned", data).out_dim == 1
    with pytest.raises(RkitError, match="at most 1 meaningful dimensions"):
        fit_whitening("learned", data, dim=2)
    with pytest.raises(RkitError, match="singular.*ridge"):
        fit_whitening("learned:ridge=0", data, dim=1)


# -- one code path: the model's layer and apply() agree exactly -------------------------------------
def test_model_layer_and_apply_are_one_code_path(tmp_path):
    fitted, x = _fitted_learned()
    model = RetrievalModel(_TinyBackbone(), get_host().build("pooling", "mac"))
    model.set_whitening(fitted.to_linear())
    with torch.no_grad():
        np.testing.assert_array_equal(model.whiten(torch.from_numpy(x)).numpy(), fitted.apply(x))
        images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        np.testing.assert_array_equal(model(images).numpy(), fitted.apply(model.pooled(images).numpy()))
    # the float64 weights survive a save / load, and an nn.Linear whitening is taken over
    model.save(tmp_path / "m")
    assert model.whitening.weight.dtype == torch.float64
    layer = nn.Linear(8, 4)
    model.set_whitening(layer)
    np.testing.assert_array_equal(model.whitening.weight.numpy(), layer.weight.detach().double().numpy())
    with pytest.raises(RkitError, match="fitted, not trained"):
        model.whiten(torch.ones(2, 8, requires_grad=True))


def test_non_finite_input_or_output_of_a_whitening_is_refused():
    fitted, x = _fitted_learned()
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(RkitError, match="1 of 60 descriptors hold NaN"):
        fitted.apply(bad)
    huge = FittedWhitening(np.zeros(2), np.array([[1e308, 1e308]]), "huge")
    with pytest.raises(RkitError, match="NaN or infinite"):
        huge.apply(np.array([[1e10, 1e10]]))


# -- fits in the span of the data equal the dense D x D fits ------------------------------------------
@pytest.mark.parametrize("spec", ["pca", "pca:whiten=false", "learned", "learned:rotation=all",
                                  "learned:ridge=0.5"])
def test_fit_in_the_span_of_the_data_equals_the_dense_fit(spec):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(14, 60)) + rng.normal(size=60)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    data = WhiteningData.from_labels(x, [i % 4 for i in range(14)]).with_pairs_from_labels()
    method = get_host().build("whitening", spec)
    span, dense = method.fit(data), method.fit(data, in_span=False)
    assert span.out_dim == dense.out_dim == 13 and span.meta["rank"] == dense.meta["rank"]
    np.testing.assert_allclose(span.mean, dense.mean, rtol=0, atol=1e-15)
    scale = np.abs(dense.projection).max()
    np.testing.assert_allclose(span.projection, dense.projection, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(span.meta["eigenvalues"], dense.meta["eigenvalues"], rtol=1e-9)
    np.testing.assert_allclose(span.apply(x), dense.apply(x), atol=1e-6)


def test_fit_without_ridge_in_few_dimensions_still_refuses_a_singular_scatter():
    rng = np.random.default_rng(4)
    data = WhiteningData.from_labels(rng.normal(size=(6, 20)), [0, 0, 1, 1, 2, 2])
    with pytest.raises(RkitError, match="singular"):
        fit_whitening("learned:ridge=0", data)
