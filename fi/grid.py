"""The grid: config -> models, cells and file paths. Imported by the Snakefile, so no torch here.

A *cell* is one (model, task, variant, shots) evaluation; every rule's wildcards come from here, and
every path a rule writes is built by the functions below so that tests and rules agree on the layout.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from fi.tasks import FAMILIES, get_family

RESULTS = "results"
# A model name is a HF / TransformerLens name ("org/model") or a plain label: letters, digits, '.',
# '_', '-', with at most one '/'. Paths use "--" for the '/', which is what HF's own cache does.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
MODEL_ID_RE = r"[A-Za-z0-9][A-Za-z0-9._-]*"
WILDCARDS = {"model": MODEL_ID_RE, "task": r"[a-z_]+", "variant": r"[A-Za-z0-9_-]+", "shots": r"\d+"}


class ConfigError(ValueError):
    """A config that cannot run; the message names the bad key and value."""


def model_id(name: str) -> str:
    """Path-safe folder name of a model name ('org/model' -> 'org--model')."""
    if not MODEL_NAME_RE.match(name) or ".." in name or "--" in name:
        raise ConfigError(f"models: {name!r} is not a valid model name (letters, digits, '.', '_', "
                          "'-', at most one '/', no '..' or '--')")
    return name.replace("/", "--")


def model_name(mid: str) -> str:
    return mid.replace("--", "/")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    id: str
    builtin: bool
    path: str | None  # local checkpoint folder (the built-in model's is under results/)
    cfg: dict

    @property
    def load_params(self) -> dict:
        """What the model's outputs depend on (a rule's params): not device or batch size."""
        return {"name": self.name, "path": self.path, "dtype": self.cfg["dtype"]}


def models(config: dict) -> list[ModelEntry]:
    out = []
    for name, cfg in config["models"].items():
        mid = model_id(name)
        if cfg.get("builtin"):
            path = builtin_model_dir(mid)
        else:
            path = cfg.get("path")
        out.append(ModelEntry(name, mid, bool(cfg.get("builtin")), path, cfg))
    return out


def model_entry(config: dict, mid: str) -> ModelEntry:
    for m in models(config):
        if m.id == mid:
            return m
    raise ConfigError(f"no model with id {mid!r} in config")


@dataclass(frozen=True)
class Cell:
    model: str  # model id
    task: str
    variant: str
    shots: int


def task_names(config: dict) -> list[str]:
    return [t for t in config["tasks"] if t in FAMILIES]


def variants(config: dict, task: str):
    return get_family(task).variants(config["tasks"][task])


def cells(config: dict) -> list[Cell]:
    return [Cell(m.id, t, v.name, s) for m in models(config) for t in task_names(config)
            for v in variants(config, t) for s in config["shots"]]


def _cell(m: str, c: dict) -> Cell:
    return Cell(m, c["task"], c["variant"], int(c["shots"]))


def attribution_cells(config: dict) -> list[Cell]:
    """The discovery cell (unless every model's heads are given) and attribution.cells, per model."""
    out = []
    for m in models(config):
        specs = list(config["attribution"]["cells"])
        if m.name not in config["discovery"]["heads"]:
            specs = [config["discovery"]["cell"]] + specs
        for c in specs:
            cell = _cell(m.id, c)
            if cell not in out:
                out.append(cell)
    return out


def discovery_cell(config: dict, mid: str) -> Cell:
    return _cell(mid, config["discovery"]["cell"])


def ablation_cells(config: dict) -> list[Cell]:
    ab = config["ablation"]
    out = []
    for m in models(config):
        for t in task_names(config):
            names = ab["variants"].get(t)
            vs = [v.name for v in variants(config, t)] if names is None else names
            out += [Cell(m.id, t, v, s) for v in vs for s in ab["shots"]]
    return out


# ---- paths -----------------------------------------------------------------------------------

def dataset_path(task: str, variant: str) -> str:
    return f"{RESULTS}/datasets/{task}/{variant}.jsonl"


def builtin_model_dir(mid: str) -> str:
    return f"{RESULTS}/models/{mid}"


def eval_path(cell: Cell) -> str:
    return f"{RESULTS}/eval/{cell.model}/{cell.task}/{cell.variant}/shots{cell.shots}.parquet"


def attribution_path(cell: Cell) -> str:
    return f"{RESULTS}/attribution/{cell.model}/{cell.task}/{cell.variant}/shots{cell.shots}.parquet"


def ablation_path(cell: Cell) -> str:
    return f"{RESULTS}/ablation/{cell.model}/{cell.task}/{cell.variant}/shots{cell.shots}.parquet"


def heads_path(mid: str) -> str:
    return f"{RESULTS}/heads/{mid}.json"


def head_types_path(mid: str) -> str:
    return f"{RESULTS}/head_types/{mid}.parquet"


# ---- checks before any job runs -------------------------------------------------------------

def check_config(config: dict) -> None:
    """Semantic checks the JSON schema cannot express; raises ConfigError naming the bad value."""
    errors: list[str] = []
    if not config["models"]:
        errors.append("models: at least one model is needed")
    seen = {}
    for name, cfg in config["models"].items():
        try:
            mid = model_id(name)
        except ConfigError as err:
            errors.append(str(err))
            continue
        if mid in seen:
            errors.append(f"models: {name!r} and {seen[mid]!r} map to the same folder {mid!r}")
        seen[mid] = name
        if cfg.get("builtin") and cfg.get("path"):
            errors.append(f"models.{name}: a built-in model is trained by the workflow; drop `path`")
        elif cfg.get("path"):
            errors += _check_local_model(name, cfg["path"])
        elif not cfg.get("builtin"):
            errors += _check_hub_model(name)
    if not task_names(config):
        errors.append(f"tasks: no task family configured; known: {sorted(FAMILIES)}")
    max_shots = max(config["shots"])
    for task in task_names(config):
        tcfg = config["tasks"][task]
        errors += get_family(task).check(tcfg)
        if "n_demos" in tcfg and tcfg["n_demos"] < max_shots:
            errors.append(f"tasks.{task}.n_demos = {tcfg['n_demos']} is smaller than the largest "
                          f"shot count {max_shots}")
        try:
            if not variants(config, task):
                errors.append(f"tasks.{task}: the settings given produce no dataset")
        except (ValueError, KeyError) as err:
            errors.append(f"tasks.{task}: {err}")
    names = set(config["models"])
    for name in config["discovery"]["heads"]:
        if name not in names:
            errors.append(f"discovery.heads: {name!r} is not a configured model")
    cells = [("discovery.cell", config["discovery"]["cell"])]
    cells += [(f"attribution.cells.{i}", c) for i, c in enumerate(config["attribution"]["cells"])]
    for where, c in cells:
        errors += _check_cell(config, where, c["task"], c["variant"], c["shots"])
    for task, names_ in config["ablation"]["variants"].items():
        for i, v in enumerate(names_):
            for s in config["ablation"]["shots"]:
                errors += _check_cell(config, f"ablation.variants.{task}.{i}", task, v, s)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))


def _check_cell(config: dict, where: str, task: str, variant: str, shots: int) -> list[str]:
    if task not in config["tasks"]:
        return [f"{where}: task {task!r} is not configured under tasks"]
    try:
        get_family(task).parse_variant(variant)
    except ValueError as err:
        return [f"{where}: {err}"]
    n_demos = config["tasks"][task].get("n_demos", 0)
    if shots > n_demos:
        return [f"{where}: {shots} shots but tasks.{task}.n_demos is {n_demos}"]
    return []


def _check_local_model(name: str, path: str) -> list[str]:
    from fi.models_check import check_local_checkpoint_files

    return check_local_checkpoint_files(path, name)


def _check_hub_model(name: str) -> list[str]:
    """A hub name must be in the local HF cache when offline; online it is checked at load time."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True", "yes"):
        return []
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return []
    found = try_to_load_from_cache(name, "config.json")
    if not isinstance(found, str):
        return [f"models: {name!r} is neither a local folder (give `path`) nor in the local HF cache, "
                "and HF_HUB_OFFLINE=1 forbids downloading it"]
    return []
