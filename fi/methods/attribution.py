"""The head-attribution methods of the `attribute` stage, by the names the config uses
(`attribution.methods`): a registry, so that a method is added in one place and the stage has no
chain of cases. Each method reads one `fi.engine.patching.Patcher` (the prompts, their cached runs
and the metric) and yields its score tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pandas as pd
import torch

from fi.engine.pairs import POSITION_GROUPS
from fi.engine.patching import Patcher
from fi.plan.params import AttributionParams

# (receiver, positions, [layers, heads] normalised scores)
Scores = tuple[str, str, torch.Tensor]


def path(patcher: Patcher, params: AttributionParams) -> Iterator[Scores]:
    """Path patching from every head to each configured receiver (the output, or a head's q / k / v)."""
    for receiver in params.receivers:
        yield receiver, "all", patcher.path_patching(receiver)


def activation(patcher: Patcher, params: AttributionParams) -> Iterator[Scores]:
    """Activation patching of each head's output, at every position and, when configured, at each
    position group's positions only."""
    yield "output", "all", patcher.activation_patching()
    if params.position_groups:
        for group in POSITION_GROUPS:
            yield "output", group, patcher.activation_patching(group)


def attribution(patcher: Patcher, params: AttributionParams) -> Iterator[Scores]:
    """Attribution patching: the first-order estimate of activation patching, one backward pass."""
    yield "output", "all", patcher.attribution_patching()


# name -> method, in the order their tables are written (whatever the config's order)
METHODS: dict[str, Callable[[Patcher, AttributionParams], Iterator[Scores]]] = {
    "path": path, "activation": activation, "attribution": attribution}


def attribution_table(patcher: Patcher, params: AttributionParams) -> pd.DataFrame:
    """Every configured method's scores as one long table: method, receiver, positions, layer, head,
    score."""
    unknown = sorted(set(params.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown attribution method(s) {unknown}; expected some of {list(METHODS)}")
    tables = []
    for name, method in METHODS.items():
        if name not in params.methods:
            continue
        for receiver, positions, scores in method(patcher, params):
            df = pd.DataFrame([(layer, head, float(scores[layer, head])) for layer in range(scores.shape[0])
                               for head in range(scores.shape[1])], columns=["layer", "head", "score"])
            df.insert(0, "method", name)
            df.insert(1, "receiver", receiver)
            df.insert(2, "positions", positions)
            tables.append(df)
    return pd.concat(tables, ignore_index=True)
