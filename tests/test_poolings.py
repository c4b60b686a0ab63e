"""MAC, SPoC and GeM against hand-computed values (SPEC section 1)."""

from __future__ import annotations

import math

import pytest
import torch

from retrievalkit.errors import ComponentOptionError
from retrievalkit.functional import generalized_mean
from retrievalkit.plugins import get_host
from retrievalkit_builtins.poolings.spoc import centre_prior


def build(spec: str) -> torch.nn.Module:
    return get_host().build("pooling", spec)


def test_mac_is_max_of_rectified_channels() -> None:
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]], [[-1.0, -4.0], [-0.5, -3.0]]]])  # (1, 2, 2, 2)
    assert build("mac")(x).tolist() == [[3.0, 0.0]]


def test_spoc_prior_on_3x3_map_by_hand() -> None:
    # centre (1.5, 1.5); cell centres at 0.5, 1.5, 2.5; s = min(3, 3) / 6 = 0.5, so 2 s^2 = 0.5
    prior = centre_prior(3, 3)
    edge, corner = math.exp(-1.0 / 0.5), math.exp(-2.0 / 0.5)
    expected = torch.tensor([[corner, edge, corner], [edge, 1.0, edge], [corner, edge, corner]])
    torch.testing.assert_close(prior, expected)


def test_spoc_prior_on_2x4_map_uses_the_closest_border() -> None:
    # H = 2, W = 4: centre (x, y) = (2, 1); s = min(4, 2) / 6 = 1/3, so 2 s^2 = 2/9.
    prior = centre_prior(2, 4)
    # cell (row 0, col 0) sits at (0.5, 0.5): squared distance 1.5^2 + 0.5^2 = 2.5
    assert prior[0, 0].item() == pytest.approx(math.exp(-2.5 / (2 / 9)))
    # cell (row 1, col 2) sits at (2.5, 1.5): squared distance 0.25 + 0.25 = 0.5
    assert prior[1, 2].item() == pytest.approx(math.exp(-0.5 / (2 / 9)))
    torch.testing.assert_close(prior, prior.flip(0).flip(1))  # symmetric about the centre


def test_spoc_sums_with_and_without_prior() -> None:
    x = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)  # 0..8
    edge, corner = math.exp(-2.0), math.exp(-4.0)
    weighted = 4 * 1.0 + edge * (1 + 3 + 5 + 7) + corner * (0 + 2 + 6 + 8)
    assert build("spoc")(x).item() == pytest.approx(weighted, rel=1e-6)
    assert build("spoc:center_prior=false")(x).item() == pytest.approx(36.0)


def test_gem_by_hand_and_its_limits() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    assert build("gem")(x).item() == pytest.approx(((1 + 8 + 27 + 64) / 4) ** (1 / 3), rel=1e-6)
    assert build("gem:p=1")(x).item() == pytest.approx(2.5, rel=1e-6)
    assert build("gem:p=50")(x).item() == pytest.approx(4.0 * (1 / 4) ** (1 / 50), rel=1e-3)  # -> max
    # negative activations are clamped to eps before the power
    neg = torch.tensor([-5.0, 2.0, -1.0, 2.0]).view(1, 1, 2, 2)
    assert build("gem:p=2:eps=0.001")(neg).item() == pytest.approx(math.sqrt((2 * 1e-6 + 8) / 4), rel=1e-5)


def test_gem_p_is_a_parameter_that_learns_unless_frozen() -> None:
    gem = build("gem:p=4")
    assert isinstance(gem.p, torch.nn.Parameter) and gem.p.requires_grad and gem.p.item() == 4.0
    x = torch.rand(2, 3, 4, 4) + 0.1
    gem(x).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs().item() > 0
    frozen = build("gem:learn_p=false")
    assert not frozen.p.requires_grad and "p" in dict(frozen.named_parameters())


def test_generalized_mean_over_a_given_dim() -> None:
    v = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    out = generalized_mean(v, 3.0, dim=0)
    assert out.tolist() == pytest.approx([(1.216 / 2) ** (1 / 3), (0.512 / 2) ** (1 / 3)], rel=1e-5)


@pytest.mark.parametrize("spec", ["gem:p=0", "gem:p=-1", "gem:eps=0"])
def test_gem_rejects_bad_values(spec: str) -> None:
    with pytest.raises(ComponentOptionError, match="gem needs"):
        build(spec)


def test_unknown_or_mistyped_option_is_a_clear_error() -> None:
    with pytest.raises(ComponentOptionError, match="has no option 'centre_prior'.*center_prior"):
        build("spoc:centre_prior=false")
    with pytest.raises(ComponentOptionError, match="must be true or false"):
        build("spoc:center_prior=maybe")


def test_poolings_are_registered_with_references() -> None:
    host = get_host()
    for name in ("mac", "spoc", "gem"):
        component = host.get("pooling", name).component
        assert component.reference and component.summary
    assert set(host.get("pooling", "gem").component.options()) == {"p", "learn_p", "eps"}
    assert host.get("pooling", "spoc").component.options()["center_prior"].default is True


def test_generalized_mean_is_stable_for_huge_exponents_and_keeps_its_gradient() -> None:
    x = torch.rand(2, 4, 5, 5, generator=torch.Generator().manual_seed(0)) * 50
    big = generalized_mean(x, 1000.0, dim=(-2, -1))
    assert torch.isfinite(big).all()
    top = x.amax(dim=(-2, -1))
    assert torch.all(big <= top) and torch.all(big >= top * 25 ** (-1 / 1000))  # within the mean's bounds
    # the rescaling changes nothing at ordinary p, values and gradients (w.r.t. x and p) included
    p = torch.tensor([3.0], requires_grad=True)
    xs = x.clone().requires_grad_(True)
    generalized_mean(xs, p, dim=(-2, -1)).sum().backward()
    p_ref = torch.tensor([3.0], requires_grad=True)
    x_ref = x.clone().requires_grad_(True)
    naive = x_ref.clamp(min=1e-6).pow(p_ref).mean(dim=(-2, -1)).pow(1.0 / p_ref)
    naive.sum().backward()
    torch.testing.assert_close(generalized_mean(x, 3.0, dim=(-2, -1)), naive.detach())
    torch.testing.assert_close(xs.grad, x_ref.grad)
    torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=0)  # a sum over 200 terms in float32
