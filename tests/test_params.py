"""Typed parameters (fi.plan.params) built from validated configs, and the attribution-method
registry (fi.methods.attribution) that the config's method names select from."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from fi.plan.config import validate_config
from fi.plan.params import (
    AblationParams,
    AttributionParams,
    CircuitParams,
    DiscoveryParams,
    FunctionVectorParams,
    HeadTypeParams,
    PlotParams,
)
from tests.conftest import REPO

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
SECTIONS = {"attribution": AttributionParams, "discovery": DiscoveryParams, "ablation": AblationParams,
            "function_vectors": FunctionVectorParams, "head_types": HeadTypeParams, "plots": PlotParams,
            "circuit": CircuitParams}


def config_of(path: str) -> dict:
    config = yaml.safe_load((REPO / path).read_text())
    if "models" not in config:
        config["models"] = {"fi-toy": {"builtin": True}}
    return validate_config(config)


def test_the_classes_defaults_are_the_schemas():
    """A section left out of the config gives the class's own defaults: the two agree, so a stage run
    without Snakemake (with the class's defaults) computes what the workflow computes."""
    config = validate_config({"models": {"fi-toy": {"builtin": True}}})
    for section, kind in SECTIONS.items():
        assert kind.from_config(config[section]) == kind(), section


@pytest.mark.parametrize("path", ["config.yaml", "configs/real-lms.yaml", "configs/paper.yaml", "configs/organism.yaml"])
def test_every_shipped_config_builds_every_section(path, monkeypatch):
    # The models' sources are not what this test is about: the hub is offline and the GGUF packages
    # are an optional extra (`.[real]`) that the test environment does not install.
    monkeypatch.setenv("FI_HUB_CHECK", "off")
    monkeypatch.setattr("fi.plan.gguf_source.source_errors", lambda *args: [])
    config = config_of(path)
    for section, kind in SECTIONS.items():
        params = kind.from_config(config[section])
        for f in dataclasses.fields(params):  # sequences become tuples: the parameters are immutable
            assert not isinstance(getattr(params, f.name), (list, dict)), (section, f.name)
        hash(params)
    assert AttributionParams.from_config(config["attribution"]).methods == tuple(config["attribution"]["methods"])


def test_the_registry_is_what_the_config_may_name():
    from fi.methods.attribution import METHODS

    props = SCHEMA["properties"]
    assert props["attribution"]["properties"]["methods"]["items"]["enum"] == list(METHODS)
    assert props["discovery"]["properties"]["method"]["enum"] == list(METHODS)


def test_the_attribution_table_follows_the_registry(trained_toy):
    """Tables come in the registry's order whatever the config's, one per (method, receiver,
    positions), each scored by the method's own Patcher call; an unknown name is refused."""
    import torch

    from fi.engine.pairs import build_patching_data
    from fi.engine.patching import Patcher
    from fi.methods.attribution import attribution_table
    from fi.plan.tasks import get_family

    family = get_family("addition")
    v = family.parse_variant("setting1_nmax9_offset1")
    data = build_patching_data(trained_toy, family, v, family.generate(v, {"n_examples": 6, "n_demos": 8, "seed": 1}),
                               2, max_examples=4)
    patcher = Patcher(trained_toy, data, batch_size=4)
    params = AttributionParams(methods=("attribution", "path"), receivers=("output", "1.0.v"), position_groups=False)
    table = attribution_table(patcher, params)
    keys = list(dict.fromkeys(zip(table["method"], table["receiver"], table["positions"])))
    assert keys == [("path", "output", "all"), ("path", "1.0.v", "all"), ("attribution", "output", "all")]
    n = trained_toy.n_layers * trained_toy.n_heads
    assert len(table) == 3 * n
    path_out = torch.tensor(table["score"].values[:n]).reshape(trained_toy.n_layers, trained_toy.n_heads)
    assert torch.equal(path_out.double(), patcher.path_patching("output").double())
    with pytest.raises(ValueError, match=r"unknown attribution method\(s\) \['gradient'\]"):
        attribution_table(patcher, dataclasses.replace(params, methods=("path", "gradient")))
