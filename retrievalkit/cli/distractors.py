"""``rkit eval --distractors NAME``: the CLI side of :mod:`retrievalkit.distractors` (R1M protocol).

Describes the distractors with the options that described the dataset (those of the database
descriptors file when one was given, typed options winning, as for the queries), once per model:
later runs read them from the cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..descriptors import DescriptorSet
from ..distractors import distractor_descriptors, model_settings
from .options import ModelOptions, extract_with_options


def describe_distractors(name: str, data_root: Path, options: ModelOptions, database_meta: dict[str, Any],
                         progress: bool) -> DescriptorSet:
    """The distractor set ``name`` described like the dataset's database."""
    if database_meta.get("model"):
        options = ModelOptions.from_descriptor_meta(database_meta, base=options)
    settings = model_settings(options.backbone, options.pooling, options.weights, options.model_dir,
                              options.whitening_file, options.image_size, options.scales)

    def extract(paths: list[str], root: Path, checkpoint: Path) -> DescriptorSet:
        result, meta = extract_with_options(options, paths, root=root, checkpoint=checkpoint, progress=progress,
                                            what="distractor images")
        return DescriptorSet(result.descriptors, result.paths, meta)

    described = distractor_descriptors(data_root, name, settings, extract, log=lambda m: click.echo(m, err=True))
    click.echo(f"searching the dataset images + {len(described)} distractors ({name})", err=True)
    return described
