# Input functions and wildcard constraints shared by every stage.
import hashlib
import re
from functools import lru_cache
from pathlib import Path

import fi.grid as grid
from fi.config import validate_config
from fi.tasks import get_family

# Bad config stops here, before any job, with a message naming the bad key and value; the schema
# (workflow/schemas/config.schema.yaml) also fills in every default.
try:
    validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))
except grid.ConfigError as err:
    raise WorkflowError(str(err))


wildcard_constraints:
    **grid.WILDCARDS,


MODELS = {m.id: m for m in grid.models(config)}


# Tighter still: only configured models and tasks match, so no other name (nor a path with '..')
# can be asked for as a target; it matches no rule.
wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),
    task="|".join(re.escape(t) for t in grid.task_names(config)),


# train_model's wildcard: only built-in models are trained ("(?!)" matches nothing).
BUILTIN_MODELS = "|".join(re.escape(m.id) for m in MODELS.values() if m.builtin) or "(?!)"
CELLS = grid.cells(config)
ATTRIBUTION_CELLS = grid.attribution_cells(config)
ABLATION_CELLS = grid.ablation_cells(config)


def all_outputs():
    fmt = config["plots"]["format"]
    out = [
        "results/tables/accuracy.parquet",
        "results/tables/accuracy_paper_format.csv",
        "results/tables/predictions.parquet",
        "results/tables/head_attribution.parquet",
    ] + accuracy_plots()
    out += [f"results/plots/heads_{m}.{fmt}" for m in MODELS]
    if ABLATION_CELLS:
        out += ["results/tables/ablation.parquet", f"results/plots/task_generalization.{fmt}"]
    return out


def accuracy_plots():
    fmt = config["plots"]["format"]
    return [f"results/plots/accuracy_{task}.{fmt}" for task in grid.task_names(config)]


def model_inputs(wildcards):
    """The built-in or GGUF-converted model's folder is a job output; a local checkpoint's
    config.json is tracked."""
    m = MODELS[wildcards.model]
    if m.builtin or m.gguf:
        return {"model": m.path}
    if m.path:
        return {"model": f"{m.path}/config.json"}
    return {}


def discovery_inputs(wildcards):
    """Explicit heads need only the model (to check them); discovered ones the discovery cell too."""
    m = MODELS[wildcards.model]
    cell = grid.discovery_cell(config, m.id)
    inputs = {**model_inputs(wildcards), "dataset": grid.dataset_path(cell.task, cell.variant)}
    if m.name not in config["discovery"]["heads"]:
        inputs["attribution"] = grid.attribution_path(cell)
    return inputs


@lru_cache(maxsize=None)
def script_code(name):
    """The code version of a rule: the content hash of its workflow/scripts/<name>.py, kept in the
    rule's params. Snakemake's own code trigger compares the script's mtime with the outputs', which
    a `git clone` resets; this compares content (see profiles/default/config.yaml)."""
    script = Path(workflow.basedir) / "workflow" / "scripts" / f"{name}.py"
    return "sha256:" + hashlib.sha256(script.read_bytes()).hexdigest()[:16]


def task_cfg(task):
    return config["tasks"][task]
