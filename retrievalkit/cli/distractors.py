"""``rkit eval --distractors NAME``: the CLI side of :mod:`retrievalkit.distractors` (R1M protocol).

Describes the distractors with the options that described the dataset (those of the database
descriptors file when one was given, typed options winning, as for the queries) and evaluates
on the combined database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from ..datasets import RevisitedDataset
from ..descriptors import DescriptorSet
from ..distractors import distractor_descriptors, evaluate_with_distractors, model_settings
from ..evaluate import EvaluationResult
from .options import ModelOptions, extract_with_options


def evaluate_with_distractor_set(dataset: RevisitedDataset, queries: np.ndarray, database: np.ndarray,
                                 query_ids: np.ndarray, database_ids: np.ndarray, ks: list[int],
                                 distractors: tuple[str, str], data_root: Path, options: ModelOptions,
                                 database_meta: dict[str, Any], progress: bool) -> dict[str, EvaluationResult]:
    """Results per setting on ``dataset.images + distractors`` (``distractors`` = (name, index spec))."""
    name, index = distractors
    if database_meta.get("model"):
        options = ModelOptions.from_descriptor_meta(database_meta, base=options)
    settings = model_settings(options.backbone, options.pooling, options.weights, options.model_dir,
                              options.whiten_file, options.image_size, options.scales)

    def extract(paths: list[str], root: Path, checkpoint: Path) -> DescriptorSet:
        result, meta = extract_with_options(options, paths, root=root, checkpoint=checkpoint, progress=progress,
                                            what="distractor images")
        return DescriptorSet(result.descriptors, result.paths, meta)

    described = distractor_descriptors(data_root, name, settings, extract, log=lambda m: click.echo(m, err=True))
    click.echo(f"searching {len(database)} images + {len(described)} distractors ({name}, index {index})", err=True)
    return evaluate_with_distractors(dataset, queries, database, described.descriptors, query_ids=query_ids,
                                     database_ids=database_ids, ks=ks, index=index)
