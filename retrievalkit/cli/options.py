"""Click options shared by the commands that describe images with a model.

``rkit eval IMAGES_DIR`` and ``rkit search DB.npz IMAGE...`` take the same model and extraction
options as ``rkit extract`` (same names, defaults and meaning), declared once here::

    @click.command()
    @model_options
    def command(model_options: ModelOptions, ...):
        extractor = Extractor.open(model_options.settings())   # retrievalkit.extractor
        result = extractor.extract(paths, root=root)

:func:`model_options` adds ``--backbone --weights --pooling --model --whitening --image-size
--scales --batch-size --device --workers`` and hands the command one :class:`ModelOptions`.

Names mean the same in every command: ``--whiten METHOD`` names a whitening method to *fit*
(``rkit train``, ``rkit ablate``, ``rkit whiten fit``); ``--whitening FILE`` names a *fitted*
whitening file to apply (``rkit extract``, ``eval``, ``search``, ``whiten apply``). Old
spellings (``--whiten FILE``, ``whiten fit --method``) still work, hidden, with a deprecation
warning: :func:`renamed_option`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from ..errors import RkitError
from .common import _META_RENAMED, echo_warnings, renamed_option  # noqa: F401 (echo_warnings re-exported)
from ..settings import ModelConfig

if TYPE_CHECKING:
    from ..extractor import ExtractionSettings
    from ..model import RetrievalModel
    from ..whitening import FittedWhitening

#: the defaults of ``rkit extract``: the model's own (:class:`retrievalkit.model.ModelConfig`)
DEFAULT_BACKBONE = ModelConfig.backbone
DEFAULT_POOLING = ModelConfig.pooling
DEFAULT_WEIGHTS = ModelConfig.weights
DEFAULT_IMAGE_SIZE = 1024


@dataclasses.dataclass
class ModelOptions:
    """The model and extraction options as the user gave them.

    ``typed`` names the options the user set (on the command line or in a ``--config`` file),
    so a command can tell "the user asked for this" from "this is the default";
    ``command_line`` those typed on the command line itself.
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str = DEFAULT_WEIGHTS
    pooling: str = DEFAULT_POOLING
    model_dir: Path | None = None
    whitening_file: Path | None = None
    image_size: int = DEFAULT_IMAGE_SIZE
    scales: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    batch_size: int = 16
    device: str = "auto"
    workers: int = 2
    typed: frozenset[str] = frozenset()
    command_line: frozenset[str] = frozenset()

    @property
    def whiten_file(self) -> Path | None:
        """The old name of :attr:`whitening_file` (``--whitening FILE``, formerly ``--whiten FILE``)."""
        return self.whitening_file

    def settings(self) -> ExtractionSettings:
        """The library's extraction settings for these options (checks option clashes)."""
        from ..extractor import ExtractionSettings

        if self.model_dir is not None:
            clash = sorted({"backbone", "pooling", "weights"} & self.typed)
            if clash:
                raise RkitError(f"--model {self.model_dir} already fixes the backbone, pooling and weights: "
                                f"drop {', '.join('--' + c for c in clash)}")
        return ExtractionSettings(backbone=self.backbone, pooling=self.pooling, weights=self.weights,
                                  model_dir=self.model_dir, whitening_file=self.whitening_file,
                                  image_size=self.image_size, scales=list(self.scales),
                                  batch_size=self.batch_size, device=self.device, workers=self.workers)

    def build(self) -> tuple[RetrievalModel, FittedWhitening | None]:
        """The model (built from components, or loaded from ``--model``) and the whitening file."""
        from ..extractor import Extractor

        extractor = Extractor.open(self.settings())
        return extractor.model, extractor.whitening

    @classmethod
    def from_descriptor_meta(cls, meta: dict[str, Any], *, base: ModelOptions | None = None) -> ModelOptions:
        """Options that reproduce the model of a descriptors file (``rkit extract`` meta).

        Options typed on the command line (in ``base.typed``) win over the file's values.
        """
        base = base or cls()
        model = meta.get("model") or {}
        whitening = meta.get("whitening") or None
        values = dataclasses.asdict(base)
        from_file = {
            "backbone": model.get("backbone"), "pooling": model.get("pooling"), "weights": model.get("weights"),
            "model_dir": Path(meta["model_dir"]) if meta.get("model_dir") else None,
            "image_size": meta.get("image_size"), "scales": meta.get("scales"),
        }
        if whitening is not None:
            if not whitening.get("file"):
                raise RkitError("the database descriptors are whitened but their file does not say with which "
                                "whitening file: give it with --whitening FILE")
            from_file["whitening_file"] = Path(whitening["file"])
        for name, value in from_file.items():
            if value is not None and name not in base.typed:
                values[name] = value
        if "model" in base.typed:
            values["model_dir"] = base.model_dir
        if "whitening" in base.typed:
            values["whitening_file"] = base.whitening_file
        values["typed"] = base.typed
        values["command_line"] = base.command_line
        return cls(**values)


def component_callback(kind: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback checking a ``NAME[:OPTION=VALUE...]`` value of a component ``kind``.

    The name and the options are checked against the plugin listing (no plugin, no torch is
    imported while the listing cache is valid), so a typo is a usage error before any work
    starts. Values left at their default are not checked (``--model`` makes them irrelevant),
    but the plugin host starts here either way, while the arguments are parsed, so that the
    timings a command reports measure its work and not the host's start-up.
    """

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or ctx.resilient_parsing or param.name is None:
            return value
        from ..errors import ComponentOptionError, UnknownComponentError
        from ..plugins import get_host

        host = get_host()
        if ctx.get_parameter_source(param.name) in (ParameterSource.DEFAULT, None):
            return value
        try:
            host.check(kind, value)
        except (UnknownComponentError, ComponentOptionError) as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        return value

    return callback


_OPTIONS: Sequence[Callable[[Callable[..., Any]], Callable[..., Any]]] = (
    click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True, callback=component_callback("backbone"),
                 help="Backbone component and options (`rkit plugins` lists them): alexnet, vgg16, resnet50, "
                      "resnet101, efficientnet-lite0 ..."),
    click.option("--weights", default=DEFAULT_WEIGHTS, show_default=True,
                 help="Backbone weights: imagenet, none, or a local state-dict file (.pth)."),
    click.option("--pooling", default=DEFAULT_POOLING, show_default=True, callback=component_callback("pooling"),
                 help="Pooling component and options: mac, spoc, spoc:center_prior=false, gem, gem:p=4 ... "
                      "Default gem: the best off-the-shelf pooling (docs/definitions.md); `rkit train` "
                      "defaults to mac, the pooling the paper fine-tunes, and a trained --model keeps its own."),
    click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
                 help="A saved model directory (from `rkit train`), a published network by name "
                      "(retrievalSfM120k-resnet101-gem, rSfM120k-tl-resnet101-gem-w, gl18-tl-resnet101-gem-w ...; "
                      "downloaded once) or its .pth file [:lw=ss|ms|none]; replaces --backbone/--pooling/--weights."),
    click.option("--whitening", "whitening_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="A fitted whitening file (from `rkit whiten fit`), applied to the descriptors."),
    click.option("--image-size", type=click.IntRange(min=1), default=DEFAULT_IMAGE_SIZE, show_default=True,
                 help="Longest image side in pixels (at scale 1)."),
    click.option("--scales", default="1", show_default=True,
                 help="Comma-separated scales, combined per image, e.g. 1,0.707,0.5."),
    click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                 help="Most images of one shape per forward pass."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."),
    click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
                 help="Image-decoding worker processes (0: decode in the main process)."),
)
_PARAMS = ("backbone", "weights", "pooling", "model_dir", "whitening_file", "image_size", "scales",
           "batch_size", "device", "workers")
#: parameter name -> the name ``ModelOptions.typed`` uses
_TYPED_NAMES = {"model_dir": "model", "whitening_file": "whitening"}
def model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the model/extraction options; the command receives them as ``model_options``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        values = {name: kwargs.pop(name) for name in _PARAMS}
        renamed = set(ctx.meta.get(_META_RENAMED, {})) & set(_PARAMS)     # given by an old spelling
        typed = frozenset(
            _TYPED_NAMES.get(name, name) for name in _PARAMS
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None) or name in renamed
        )
        command_line = frozenset(
            _TYPED_NAMES.get(name, name) for name in _PARAMS
            if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE or name in renamed
        )
        from ..extract import parse_scales  # imports torch: only once the command runs

        values["scales"] = list(parse_scales(values["scales"], what="--scales"))
        kwargs["model_options"] = ModelOptions(**values, typed=typed, command_line=command_line)
        return func(*args, **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return renamed_option("--whiten", "whitening_file", "--whitening", key="whiten_file",
                          type=click.Path(dir_okay=False, path_type=Path))(wrapper)


_SHOWN_FAILURES = 10


def extract_with_options(options: ModelOptions, paths: Sequence[str], *, root: Path | None,
                         crops: Sequence[Any] | None = None, checkpoint: Path | None = None,
                         progress: bool = True, what: str = "images"):
    """Extract ``paths`` with the options' model and ``--whitening`` file; report timing and failures.

    Returns ``(ExtractionResult, meta)``: the result's descriptors are whitened when a whitening
    file was given, and ``meta`` is the descriptors-file meta for them.
    """
    from ..extractor import Extractor, failure_lines, require_some

    extractor = Extractor.open(options.settings())
    result = extractor.extract(paths, root=root, crops=crops, checkpoint=checkpoint, progress=progress)
    click.echo(f"described {extractor.summary(result, len(paths), what)}", err=True)
    if result.failed:
        click.echo(f"{len(result.failed)} of the {what} could not be read and were skipped:", err=True)
        for line in failure_lines(result.failed, _SHOWN_FAILURES):
            click.echo(line, err=True)
    require_some(result, len(paths), what, hint="check the paths")
    return result, extractor.meta(result, root=root)
