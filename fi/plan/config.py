"""Is a config runnable? JSON-schema errors named by their key path, snakemake's defaults filled in,
then the semantic checks the schema cannot express (cells that exist, checkpoint folders with
weights, hub names, the reference table). The Snakefile runs this before any job; no torch here."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from fi.plan.grid import ConfigError, builtin_model_dir, model_id, task_names, variants
from fi.plan.hub import check_hub_models
from fi.plan.models_check import check_local_checkpoint_files
from fi.plan.tasks import FAMILIES, get_family

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
# The paper's CSV columns (= fi.report.tables.PAPER_COLUMNS, a test checks; repeated here to keep this
# module free of pandas).
REFERENCE_COLUMNS = ["model_name", "setting", "nmax", "offset", "n_icl_example", "cf_acc", "orig_acc"]


def schema_errors(config: dict, schema_path: str | Path = SCHEMA) -> list[str]:
    """Every schema violation as `key.path: message` (jsonschema's own words)."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<top level>'}: {e.message}" for e in errors]


def validate_config(config: dict, schema_path: str | Path = SCHEMA) -> dict:
    """Validate `config` in place: fill the schema's defaults (snakemake's `validate`), then run the
    semantic checks. Raises ConfigError listing every problem by key."""
    errors = schema_errors(config, schema_path)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))
    from snakemake.utils import validate

    validate(config, str(schema_path), set_default=True)
    check_config(config)
    return config


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
                from fi.plan.gguf_source import source_errors

                errors += source_errors(name, cfg, mid)
        elif cfg.get("builtin") and cfg.get("path"):
            errors.append(f"models.{name}: a built-in model is trained by the workflow; drop `path`")
        elif cfg.get("path"):
            errors += check_local_checkpoint_files(cfg["path"], name)
        elif not cfg.get("builtin"):
            hub_names.append(name)
        if isinstance(repeat := (cfg.get("train") or {}).get("repeat_len"), list) and repeat[0] > repeat[1]:
            errors.append(f"models.{name}.train.repeat_len: {repeat} is not a range [lo, hi] with lo <= hi")
    errors += check_hub_models(hub_names)
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


def _check_reference(path: str | None) -> list[str]:
    """plots.reference must be a CSV with the paper's columns."""
    if not path:
        return []
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


def seeds_of(config: dict) -> dict:
    """Every seed of the config that a number depends on."""
    out = {"datasets": {t: c.get("seed") for t, c in config.get("tasks", {}).items()}}
    out["training"] = {m: c["train"]["seed"] for m, c in config.get("models", {}).items() if c.get("builtin")}
    for key in ("ablation", "head_types"):
        out[key] = config.get(key, {}).get("seed")
    out["completeness"] = config.get("circuit", {}).get("completeness", {}).get("seed")
    out["dynamics"] = config.get("dynamics", {}).get("seeds")
    return out
