"""Bad config stops before any job, with a message naming the bad key or value."""

from __future__ import annotations

import copy

import pytest
import yaml

from fi.plan.config import validate_config
from fi.plan.grid import ConfigError, cells, model_id, model_name, models
from tests.conftest import REPO

DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


def cfg(**changes):
    c = copy.deepcopy(DEFAULT)
    c.update(changes)
    return c


def test_default_config_is_valid_and_gets_defaults():
    c = validate_config(cfg())
    assert c["models"]["fi-toy"]["dtype"] == "float32"
    # trained on addition and shifted letters, the families it is evaluated on
    assert c["models"]["fi-toy"]["train"]["mix"] == {"addition": 0.5, "letter_shift": 0.5, "repeated_tokens": 0.0}
    # the default grid: (3 addition settings + 1 cipher length) x 5 offsets x 4 shot counts, one model
    assert len(cells(c)) == 80


@pytest.mark.parametrize("changes,needle", [
    ({"shots": [2, "four"]}, "shots.1: 'four' is not of type 'integer'"),
    ({"shotz": [2]}, "'shotz' was unexpected"),
    ({"tasks": {"addition": {"settings": ["setting9"]}}}, "tasks.addition.settings.0: 'setting9' is not one of"),
    ({"tasks": {"addition": {"offsets": [11]}}}, "tasks.addition.offsets.0: 11 is greater than the maximum"),
    ({"models": {"m": {"dtype": "float8"}}}, "models.m.dtype: 'float8' is not one of"),
    ({"models": {"m": {"builtin": True, "train": {"stepz": 3}}}}, "models.m.train: Additional properties"),
])
def test_schema_errors_name_the_key(changes, needle):
    with pytest.raises(ConfigError) as err:
        validate_config(cfg(**changes))
    assert needle in str(err.value)


def test_missing_checkpoint_folder_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"model 'mine': checkpoint folder .*nope.* does not exist"):
        validate_config(cfg(models={"mine": {"path": str(tmp_path / "nope")}}))


def test_folder_without_weights_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="model 'mine': .* has no weights"):
        validate_config(cfg(models={"mine": {"path": str(tmp_path)}}))


def test_unknown_hub_model_offline_is_named(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="'no-such-org/no-such-model' is neither a local folder"):
        validate_config(cfg(models={"no-such-org/no-such-model": {}}))


@pytest.mark.parametrize("name", ["../evil", "a/b/c", "/abs", "a..b", "x--y", "sp ace", ""])
def test_model_names_cannot_escape_results(name):
    with pytest.raises(ConfigError, match="not a valid model name"):
        model_id(name)


def test_model_names_map_to_folders_and_back():
    assert model_id("meta-llama/Llama-2-7b-hf") == "meta-llama--Llama-2-7b-hf"
    assert model_name("meta-llama--Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"


def test_too_few_demos_for_the_shots():
    with pytest.raises(ConfigError, match="tasks.addition.n_demos = 8 is smaller than the largest shot count 16"):
        validate_config(cfg(tasks={"addition": {"n_demos": 8}}))


@pytest.mark.parametrize("repeat_len,needle", [
    ([16, 4], "models.m.train.repeat_len: [16, 4] is not a range [lo, hi] with lo <= hi"),
    ([4], "models.m.train.repeat_len: [4] is not valid"),
    (1, "models.m.train.repeat_len: 1 is not valid"),
])
def test_a_bad_repeat_length_is_named(repeat_len, needle):
    with pytest.raises(ConfigError) as err:
        validate_config(cfg(models={"m": {"builtin": True, "train": {"repeat_len": repeat_len}}}))
    assert needle in str(err.value)


def test_builtin_model_path_is_under_results():
    c = validate_config(cfg())
    (m,) = models(c)
    assert m.builtin and m.path == "results/models/fi-toy"
