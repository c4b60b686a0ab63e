"""Component specs and options: one syntax, validated, with clear errors."""

from __future__ import annotations

import pytest

from retrievalkit.components import Component, ComponentSpec, options_of
from retrievalkit.errors import ComponentOptionError


def make(center_prior: bool = True, p: float = 3.0, k: int = 5, mode: str = "mean", dim: int | None = None):
    return dict(center_prior=center_prior, p=p, k=k, mode=mode, dim=dim)


COMPONENT = Component("thing", make)


def test_parse_name_and_options():
    spec = ComponentSpec.parse(" SPOC:center_prior=false:p = 4 ")
    assert spec.name == "spoc"
    assert dict(spec.options) == {"center_prior": "false", "p": "4"}
    assert str(spec) == "spoc:center_prior=false:p=4"
    assert ComponentSpec.parse("mac").options == {}


@pytest.mark.parametrize("bad", ["", "gem:p", "gem:=3", "gem:p=3:x"])
def test_malformed_specs_are_clear_errors(bad):
    with pytest.raises(ComponentOptionError, match="OPTION=VALUE|empty"):
        ComponentSpec.parse(bad)


def test_options_typed_from_signature():
    opts = options_of(make)
    assert {n: o.type for n, o in opts.items()} == {"center_prior": bool, "p": float, "k": int, "mode": str, "dim": int}
    assert opts["p"].default == 3.0 and not opts["p"].required


def test_build_converts_values():
    built = COMPONENT.build(center_prior="no", p="2.5", k="7", dim="none")
    assert built == dict(center_prior=False, p=2.5, k=7, mode="mean", dim=None)
    assert COMPONENT.build(p=2)["p"] == 2.0


def test_unknown_option_lists_known_ones():
    with pytest.raises(ComponentOptionError) as info:
        COMPONENT.build(centre_prior="false")
    message = str(info.value)
    assert "centre_prior" in message and "center_prior=True (bool)" in message


@pytest.mark.parametrize("name,value", [("center_prior", "maybe"), ("k", "2.5"), ("p", "abc")])
def test_bad_values_are_clear_errors(name, value):
    with pytest.raises(ComponentOptionError, match=f"option '{name}'"):
        COMPONENT.build(**{name: value})


def test_required_option():
    def needs_path(path: str, scale: float = 1.0):
        return path

    with pytest.raises(ComponentOptionError, match="needs the option"):
        Component("x", needs_path).build()
    assert Component("x", needs_path).build(path="/a") == "/a"


def test_spec_with_options_keeps_explicit_values():
    spec = ComponentSpec.parse("resnet50:weights=/w.pth").with_options(weights="imagenet", other=1)
    assert spec.options == {"weights": "/w.pth", "other": "1"}
