"""Components and their options.

A *component* is one interchangeable piece of the pipeline (a backbone, a pooling, a miner, a
loss, a whitening). A plugin describes each component it offers with a :class:`Component`: a
name, a factory, a one-line summary and the paper it implements. The factory's keyword
parameters *are* the component's options; their annotations give the types and their defaults
the defaults, so a plugin never writes option-parsing code.

On the command line a component is chosen with one consistent syntax, a :class:`ComponentSpec`::

    NAME[:OPTION=VALUE[:OPTION=VALUE...]]

for example ``spoc:center_prior=false`` or ``gem:p=4:learn_p=false``. Options are separated by
``:`` (not ``,``) so that comma-separated lists of specs (``--grid pooling=mac,gem:p=4``) stay
unambiguous.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ComponentOptionError

#: The kinds of component, each with its plural. Everything else is derived from this table: the
#: hook of a kind is ``rkit_<plural>`` (one specification each in :mod:`retrievalkit.hookspecs`),
#: ``rkit plugins`` lists the kinds in this order, the listing cache stores them by kind. Adding a
#: kind is one line here plus its documented hook specification.
PLURAL: dict[str, str] = {
    "backbone": "backbones",
    "pooling": "poolings",
    "whitening": "whitenings",
    "miner": "miners",
    "loss": "losses",
    "reranker": "rerankers",
}
KINDS: tuple[str, ...] = tuple(PLURAL)


@dataclasses.dataclass(frozen=True)
class Component:
    """One component offered by a plugin.

    Attributes:
        name: what the user types (``mac``, ``resnet50``); lower case, no ``:`` or ``,``.
        factory: a callable taking the component's options as keyword arguments and returning
            the component object (for a pooling a ``torch.nn.Module``; see the hook
            specifications for what each kind must return).
        summary: one line for ``rkit plugins``.
        reference: the paper (and equation) it implements, if any.
    """

    name: str
    factory: Callable[..., Any]
    summary: str = ""
    reference: str = ""

    def options(self) -> dict[str, Option]:
        """The options the factory accepts, from its signature."""
        return options_of(self.factory)

    def build(self, **options: Any) -> Any:
        """Call the factory with ``options`` after validating and converting them."""
        return self.factory(**validate_options(self.name, self.options(), options))


@dataclasses.dataclass(frozen=True)
class Option:
    """One keyword option of a component factory."""

    name: str
    type: type
    default: Any
    required: bool

    def describe(self) -> str:
        tname = getattr(self.type, "__name__", str(self.type))
        return f"{self.name} ({tname}, required)" if self.required else f"{self.name}={self.default!r} ({tname})"


_SCALARS = (bool, int, float, str)


def _option_type(annotation: Any, default: Any) -> type:
    if annotation is inspect.Parameter.empty:
        return type(default) if default is not None and type(default) in _SCALARS else str
    if isinstance(annotation, str):  # postponed annotations: "int", "float | None" ...
        for scalar in _SCALARS:
            if annotation.split("|")[0].strip() == scalar.__name__:
                return scalar
        return str
    origin = typing.get_origin(annotation)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if args else str
    return annotation if annotation in _SCALARS else str


def options_of(factory: Callable[..., Any]) -> dict[str, Option]:
    """The keyword options of ``factory`` (a class or a function), by name."""
    target = factory.__init__ if inspect.isclass(factory) else factory  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        hints = {}
    result: dict[str, Option] = {}
    for param in inspect.signature(target).parameters.values():
        if param.name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, param.annotation)
        default = None if param.default is param.empty else param.default
        result[param.name] = Option(
            name=param.name,
            type=_option_type(annotation, default),
            default=default,
            required=param.default is param.empty,
        )
    return result


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def convert_value(component: str, option: Option, value: Any) -> Any:
    """Convert ``value`` (often a string from the command line) to the option's type."""
    if not isinstance(value, str):
        if option.type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if value is None or isinstance(value, option.type):
            return value
        value = str(value)
    try:
        if option.type is bool:
            low = value.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(value)
        if option.type is str:
            return value
        if value.strip().lower() == "none" and not option.required and option.default is None:
            return None
        return option.type(value)
    except ValueError:
        expected = "true or false" if option.type is bool else f"a value of type {option.type.__name__}"
        raise ComponentOptionError(
            f"option {option.name!r} of {component!r} must be {expected}, got {value!r}"
        ) from None


def validate_options(component: str, known: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``given`` against ``known``: unknown names and bad values are clear errors."""
    converted: dict[str, Any] = {}
    for key, value in given.items():
        if key not in known:
            listing = ", ".join(o.describe() for o in known.values()) or "none"
            raise ComponentOptionError(
                f"{component!r} has no option {key!r}; its options are: {listing}"
            )
        converted[key] = convert_value(component, known[key], value)
    missing = [o.name for o in known.values() if o.required and o.name not in converted]
    if missing:
        raise ComponentOptionError(
            f"{component!r} needs the option(s) {', '.join(missing)}: "
            f"write {component}:{missing[0]}=VALUE"
        )
    return converted


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """A component chosen by name with options, as written ``NAME[:KEY=VALUE...]``."""

    name: str
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> ComponentSpec:
        """Parse ``gem:p=4:learn_p=false`` into a spec; a malformed option is an error."""
        text = text.strip()
        if not text:
            raise ComponentOptionError("empty component name: write NAME or NAME:OPTION=VALUE")
        name, *parts = text.split(":")
        options: dict[str, str] = {}
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ComponentOptionError(
                    f"cannot read option {part!r} in {text!r}: write {name}:OPTION=VALUE[:OPTION=VALUE]"
                )
            options[key.strip()] = value.strip()
        return cls(name.strip().lower(), options)

    def __str__(self) -> str:
        return ":".join([self.name, *(f"{k}={v}" for k, v in self.options.items())])

    def with_options(self, **extra: Any) -> ComponentSpec:
        """A copy with ``extra`` options added (explicit options in the spec win)."""
        merged = {k: str(v) for k, v in extra.items()}
        merged.update(self.options)
        return ComponentSpec(self.name, merged)
