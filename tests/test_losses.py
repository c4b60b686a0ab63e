"""Contrastive and triplet losses against hand-computed values (SPEC section 3)."""

from __future__ import annotations

import math

import pytest
import torch

from retrievalkit.plugins import get_host
from retrievalkit.tuples import tuple_squared_distances

# q = e0; p at squared distance 0.8 from q; n1 at distance sqrt(2); n2 identical to q
EMBEDDINGS = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
ONE_TUPLE = torch.tensor([[0, 1, 2, 3]])


def loss(spec: str):
    return get_host().build("loss", spec)


def test_tuple_distances():
    positive, negative = tuple_squared_distances(EMBEDDINGS, ONE_TUPLE)
    assert positive.tolist() == pytest.approx([0.8])
    assert negative.tolist() == [pytest.approx([2.0, 0.0])]


def test_contrastive_matches_the_formula():
    # 1/2 * 0.8 + 1/2 * max(0, 0.7 - sqrt 2)^2 + 1/2 * (0.7 - 0)^2 = 0.4 + 0 + 0.245
    assert float(loss("contrastive")(EMBEDDINGS, ONE_TUPLE)) == pytest.approx(0.645, abs=1e-6)
    # margin 1.5: the far negative now counts, 1/2 (1.5 - sqrt 2)^2
    expected = 0.4 + 0.5 * (1.5 - math.sqrt(2)) ** 2 + 0.5 * 1.5 ** 2
    # (a coinciding pair counts as distance 1e-6, DISTANCE_EPS ** 0.5, hence the 1e-5 tolerance)
    assert float(loss("contrastive:margin=1.5")(EMBEDDINGS, ONE_TUPLE)) == pytest.approx(expected, abs=1e-5)


def test_losses_sum_over_tuples():
    two = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    for spec in ("contrastive", "triplet"):
        assert float(loss(spec)(EMBEDDINGS, two)) == pytest.approx(2 * float(loss(spec)(EMBEDDINGS, ONE_TUPLE)))


def test_triplet_matches_the_formula():
    # max(0, 0.8 - 2 + 0.1) + max(0, 0.8 - 0 + 0.1) = 0 + 0.9
    assert float(loss("triplet")(EMBEDDINGS, ONE_TUPLE)) == pytest.approx(0.9, abs=1e-6)
    # margin 1.5: (0.8 - 2 + 1.5) + (0.8 + 1.5) = 0.3 + 2.3
    assert float(loss("triplet:margin=1.5")(EMBEDDINGS, ONE_TUPLE)) == pytest.approx(2.6, abs=1e-6)


def test_gradients_stay_finite_when_descriptors_coincide():
    embeddings = EMBEDDINGS.clone().requires_grad_(True)
    for spec in ("contrastive", "triplet"):
        embeddings.grad = None
        loss(spec)(embeddings, ONE_TUPLE).backward()
        assert torch.isfinite(embeddings.grad).all(), spec


def test_contrastive_gradient_pulls_the_positive_and_pushes_the_near_negative():
    embeddings = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]], requires_grad=True)
    loss("contrastive")(embeddings, torch.tensor([[0, 1, 2]])).backward()
    # d/dp of 1/2 ||q - p||^2 = p - q: descent moves p towards q
    assert embeddings.grad[1].tolist() == pytest.approx([0.6 - 1.0, 0.8])
    # the negative at distance sqrt(0.4) < 0.7: gradient -(0.7 - d) * (n - q) / d, pushing away
    d = math.sqrt(0.4)
    assert embeddings.grad[2].tolist() == pytest.approx([-(0.7 - d) * (-0.2) / d, -(0.7 - d) * 0.6 / d], abs=1e-5)


def test_bad_tuples_and_margins_are_refused():
    with pytest.raises(ValueError, match="index"):
        loss("contrastive")(EMBEDDINGS, torch.tensor([[0, 1, 7]]))
    with pytest.raises(Exception, match="margin"):
        loss("contrastive:margin=0")
