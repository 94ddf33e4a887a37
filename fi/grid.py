"""The grid: config -> models, cells and file paths. Imported by the Snakefile, so no torch here.

A *cell* is one (model, task, variant, shots) evaluation; every rule's wildcards come from here, and
every path a rule writes is built by the functions below so that tests and rules agree on the layout.
"""

from __future__ import annotations

import functools
import os
import re
import sys
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
    def gguf(self) -> bool:
        """Converted from a GGUF file by the workflow (fi/gguf.py) into results/models/<id>/."""
        return bool(self.cfg.get("gguf"))

    @property
    def load_params(self) -> dict:
        """What the model's outputs depend on (a rule's params): not device or batch size."""
        return {"name": self.name, "path": self.path, "dtype": self.cfg["dtype"]}


def models(config: dict) -> list[ModelEntry]:
    out = []
    for name, cfg in config["models"].items():
        mid = model_id(name)
        if cfg.get("builtin") or cfg.get("gguf"):  # a folder the workflow writes
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


def _cell_path(stage: str, cell: Cell) -> str:
    return f"{RESULTS}/{stage}/{cell.model}/{cell.task}/{cell.variant}/shots{cell.shots}.parquet"


def eval_path(cell: Cell) -> str:
    return _cell_path("eval", cell)


def attribution_path(cell: Cell) -> str:
    return _cell_path("attribution", cell)


def ablation_path(cell: Cell) -> str:
    return _cell_path("ablation", cell)


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
    hub_names: list[str] = []
    for name, cfg in config["models"].items():
        try:
            mid = model_id(name)
        except ConfigError as err:
            errors.append(str(err))
            continue
        if mid in seen:
            errors.append(f"models: {name!r} and {seen[mid]!r} map to the same folder {mid!r}")
        seen[mid] = name
        if cfg.get("gguf"):
            if cfg.get("builtin") or cfg.get("path"):
                errors.append(f"models.{name}: a gguf model is converted by the workflow into "
                              f"{builtin_model_dir(mid)}/; drop `builtin` / `path`")
            else:
                errors += _check_gguf_model(name, cfg, mid)
        elif cfg.get("builtin") and cfg.get("path"):
            errors.append(f"models.{name}: a built-in model is trained by the workflow; drop `path`")
        elif cfg.get("path"):
            errors += _check_local_model(name, cfg["path"])
        elif not cfg.get("builtin"):
            hub_names.append(name)
    errors += _check_hub_models(hub_names)
    errors += _check_reference((config.get("plots") or {}).get("reference"))
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


def _check_gguf_model(name: str, cfg: dict, mid: str) -> list[str]:
    from fi.gguf import source_errors

    return source_errors(name, cfg, mid)


# ---- hub names and the reference table ---------------------------------------------------------

HUB_CHECK_ENV = "FI_HUB_CHECK"
HUB_CHECK_MODES = ("cache", "online", "off")
HUB_TIMEOUT_S = 10.0
# The paper's CSV columns (= fi.tables.PAPER_COLUMNS; repeated here to keep this module light).
REFERENCE_COLUMNS = ["model_name", "setting", "nmax", "offset", "n_icl_example", "cf_acc", "orig_acc"]


def hub_check_mode() -> str:
    """How hub model names are checked before any job runs, from $FI_HUB_CHECK:
      cache   the name must be in the local HF cache (default when HF_HUB_OFFLINE=1)
      online  in the local HF cache, or else it must exist on the hub (default otherwise; when the
              hub cannot be reached, names are left to the jobs, which fail naming the model)
      off     not checked (to plan a DAG on a machine without the weights: `snakemake -n`)"""
    mode = os.environ.get(HUB_CHECK_ENV, "").strip().lower()
    if mode:
        return mode
    offline = os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")
    return "cache" if offline else "online"


def official_name(name: str) -> str:
    """A TransformerLens alias ('gpt2-small') as its HF name; any other name as it is. Reads
    TransformerLens' alias table without importing the package (which imports torch)."""
    return _aliases().get(name, name)


@functools.lru_cache(maxsize=1)
def _aliases() -> dict:
    import importlib.util
    import json

    try:
        spec = importlib.util.find_spec("transformer_lens")
        root = Path(next(iter(spec.submodule_search_locations)))
        table = json.loads((root / "tools" / "model_registry" / "data" / "model_aliases.json").read_text())
        table = table.get("aliases", table)
        return {alias: official for official, aliases in table.items() if isinstance(aliases, list)
                for alias in aliases}
    except Exception:  # pragma: no cover - no TransformerLens or another layout: no aliases
        return {}


def _check_hub_models(names: list[str]) -> list[str]:
    """Hub names (no `path`) that cannot be loaded, one error each, naming the model."""
    mode = hub_check_mode()
    if mode not in HUB_CHECK_MODES:
        return [f"{HUB_CHECK_ENV}={mode!r}: expected one of {', '.join(HUB_CHECK_MODES)}"]
    if mode == "off" or not names:
        return []
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return []
    missing = [n for n in names if not isinstance(try_to_load_from_cache(official_name(n), "config.json"), str)]
    if mode == "cache":
        return [f"models: {n!r} is neither a local folder (give `path`) nor in the local HF cache, and "
                f"HF_HUB_OFFLINE=1 forbids downloading it (download it first; {HUB_CHECK_ENV}=off skips "
                "this check, e.g. to plan the DAG with `snakemake -n`)" for n in missing]
    if not missing:
        return []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
        found = list(pool.map(_on_hub, missing))
    if None in found:
        sys.stderr.write(f"fi: could not reach the Hugging Face hub to check {missing}; each is checked "
                         "when its jobs load it\n")
    return [f"models: {n!r} is not a model on the Hugging Face hub (and has no `path` to a local folder)"
            for n, ok in zip(missing, found) if ok is False]


def _on_hub(name: str) -> bool | None:
    """True / False: the hub has / has not this model; None: the hub did not answer."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(official_name(name), timeout=HUB_TIMEOUT_S)
    except GatedRepoError:  # exists; the download needs a token (checked at load time)
        return True
    except RepositoryNotFoundError:
        return False
    except Exception:  # no network, proxy, rate limit: cannot tell
        return None
    return True


def _check_reference(path: str | None) -> list[str]:
    """plots.reference must be a CSV with the paper's columns."""
    if not path:
        return []
    import csv

    file = Path(path).expanduser()
    if not file.is_file():
        return [f"plots.reference: {str(path)!r} does not exist (expected a CSV in the paper's format with "
                f"columns {', '.join(REFERENCE_COLUMNS)})"]
    try:
        with open(file, newline="") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return [f"plots.reference: cannot read {str(path)!r}: {err}"]
    missing = [c for c in REFERENCE_COLUMNS if c not in header]
    if missing:
        return [f"plots.reference: {str(path)!r} is not in the paper's format: missing columns "
                f"{', '.join(missing)} (has {', '.join(header) or 'no header'})"]
    return []


# ---- per-model job resources (SLURM and local scheduling) ----------------------------------------

MODEL_RESOURCE_DEFAULTS = {"gpus": 0, "mem_mb": 4000, "runtime": 30}
# A model's `resources.mem_mb` / `runtime` are those of one evaluate job; other rules take multiples
# (memory, runtime): attribution keeps two runs' activations and does L x H patched passes; ablation
# evaluates the cell once per head set.
RULE_RESOURCE_SCALE = {"evaluate": (1, 1), "head_types": (1, 1), "discover_heads": (1, 1), "ablate": (1, 2),
                       "attribute": (2, 4), "parity": (1, 1)}


def job_resources(entry: ModelEntry, rule: str, attempt: int = 1) -> dict:
    """mem_mb, runtime (minutes, growing with the attempt: a retried job runs with a halved batch)
    and gpu (the count that snakemake's SLURM executor turns into --gpus) of one job of `rule`."""
    r = {**MODEL_RESOURCE_DEFAULTS, **(entry.cfg.get("resources") or {})}
    mem_x, time_x = RULE_RESOURCE_SCALE[rule]
    return {"mem_mb": int(r["mem_mb"] * mem_x), "runtime": int(r["runtime"] * time_x * max(1, attempt)),
            "gpu": int(r["gpus"])}
