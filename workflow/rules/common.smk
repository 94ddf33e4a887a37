# Shared by the stage files: the config's models and cells, the path patterns (fi.plan.grid.PATHS), the
# input functions, and one helper per concern: model_params (what a model job's outputs depend
# on), model_resources (what it asks the scheduler for), code_hash (the code it runs). Every rule
# runs its adapter (fi_workflow.jobs) with `run: run_job(rule, Job(...))` (fi_workflow.run), or,
# where a job wants a process of its own, the same adapter from workflow/scripts/own_process.py.
# What only one stage needs is in common/<stage>.smk, included at the end.
import re
from functools import lru_cache

import fi.plan.resources as fi_resources
from fi.plan.config import seeds_of, validate_config
from fi.plan.grid import (
    PATHS,
    WILDCARDS,
    ConfigError,
    ablation_cells,
    ablation_path,
    attribution_cells,
    attribution_path,
    cells,
    dataset_path,
    discovery_cell,
    evaluates_per_task,
    evaluation_outputs,
    function_vector_datasets,
    function_vectors_enabled,
    head_types_path,
    heads_path,
    models,
    task_cells,
    task_names,
)
from fi.plan.tasks import get_family
from fi_workflow.codehash import code_hash as _code_hash
from fi_workflow.run import Job
from fi_workflow.run import run_job as _run_job

# Bad config stops here, before any job, with a message naming the bad key and value; the schema
# (workflow/schemas/config.schema.yaml) also fills in every default.
try:
    validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))
except ConfigError as err:
    raise WorkflowError(str(err))


wildcard_constraints:
    **WILDCARDS,


MODELS = {m.id: m for m in models(config)}
# The circuit chain (attribute -> discover_heads, find_circuit -> evaluate_circuit) holds a model's
# longest jobs: started before the many short evaluate jobs, they do not end a run alone on one core.
CIRCUIT_CHAIN_PRIORITY = 1
TASKS = task_names(config)


# Tighter still: only configured models and tasks match, so no other name (nor a path with '..')
# can be asked for as a target; it matches no rule.
wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),
    task="|".join(re.escape(t) for t in TASKS),


# train_model's wildcard: only built-in models are trained ("(?!)" matches nothing).
BUILTIN_MODELS = "|".join(re.escape(m.id) for m in MODELS.values() if m.builtin) or "(?!)"
CELLS = cells(config)
ATTRIBUTION_CELLS = attribution_cells(config)
ABLATION_CELLS = ablation_cells(config)
PLOT_FORMAT = config["plots"]["format"]
# the options of the head and ablation plots (the reference curves are for accuracy plots only)
PLOT_DPI = {"dpi": config["plots"]["dpi"]}
# function vectors (workflow/rules/function_vectors.smk): the addition datasets of their offsets
FV_ENABLED = function_vectors_enabled(config)
FV_DATASETS = function_vector_datasets(config)


def all_outputs():
    out = [
        PATHS["accuracy_table"],
        PATHS["paper_table"],
        PATHS["predictions_table"],
        PATHS["head_attribution_table"],
    ]
    out += [PATHS["accuracy_plot"].format(task=t, ext=PLOT_FORMAT) for t in TASKS]
    out += [PATHS["heads_plot"].format(model=m, ext=PLOT_FORMAT) for m in MODELS]
    if ABLATION_CELLS:
        out += [PATHS["ablation_table"], PATHS["ablation_plot"].format(ext=PLOT_FORMAT)]
    if FV_ENABLED:
        out += [PATHS["function_vectors_table"], PATHS["function_vector_effects_table"]]
        out += [PATHS["function_vectors_plot"].format(model=m, ext=PLOT_FORMAT) for m in MODELS]
    return out + circuit_outputs() + [PATHS["summary"], PATHS["provenance"]]


def summary_inputs(wildcards):
    """The tables the summary states findings from (those this config makes)."""
    out = {
        "accuracy": PATHS["accuracy_table"],
        "heads": [heads_path(m) for m in MODELS],
        "tables": [PATHS["head_attribution_table"]],
    }
    if ABLATION_CELLS:
        out["ablation"] = PATHS["ablation_table"]
    if CIRCUIT_CELLS:
        out["circuit_heads"] = PATHS["circuit_heads_table"]
        out["circuit_evaluation"] = PATHS["circuit_evaluation_table"]
        out["circuit_overlap"] = PATHS["circuit_overlap_table"]
        out["circuit_evaluations"] = [PATHS["circuit_evaluation"].format(model=m) for m in MODELS]
    if FV_ENABLED:
        out["function_vector_effects"] = PATHS["function_vector_effects_table"]
    return out


# ---- input functions --------------------------------------------------------------------------


def model_input(m):
    """The file a model's jobs depend on: the built-in or GGUF-converted model's folder (a job
    output) or a local checkpoint's config.json (tracked); None for a hub name."""
    if m.builtin or m.gguf:
        return m.path
    if m.path:
        return f"{m.path}/config.json"
    return None


def model_inputs(wildcards):
    path = model_input(MODELS[wildcards.model])
    return {"model": path} if path else {}


def models_evaluated_per(kind):
    """A {model} constraint: the ids of the models whose evaluation jobs are per `kind` (cell or
    task, the model's `evaluate_jobs`); one that matches nothing when there are none."""
    ids = [re.escape(m.id) for m in MODELS.values() if evaluates_per_task(m) == (kind == "task")]
    return "|".join(ids) or "(?!)"


def evaluate_task_inputs(wildcards):
    return {
        **model_inputs(wildcards),
        "datasets": sorted({d for _, _, d in task_cells_params(wildcards)}),
    }


def task_cells_params(wildcards):
    """[variant, shots, dataset] of each cell of an evaluate_task job, in grid order."""
    return [
        [c.variant, c.shots, dataset_path(c.task, c.variant)]
        for c in task_cells(config, wildcards.model, wildcards.task)
    ]


def discovery_inputs(wildcards):
    """Explicit heads need only the model (to check them); discovered ones the discovery cell too."""
    m = MODELS[wildcards.model]
    cell = discovery_cell(config, m.id)
    inputs = {
        **model_inputs(wildcards),
        "dataset": dataset_path(cell.task, cell.variant),
    }
    if m.name not in config["discovery"]["heads"]:
        inputs["attribution"] = attribution_path(cell)
    return inputs


def parity_inputs(wildcards):
    """Every model's input (parity compares them all)."""
    return [path for path in map(model_input, MODELS.values()) if path]


# ---- params: what a job's outputs depend on ---------------------------------------------------


def model_params(wildcards):
    """The model's name, path and dtype; not its device or batch size (those change no number)."""
    return MODELS[wildcards.model].load_params


def config_slice(section, *leave_out):
    """A config section as a rule's params, without the keys that only pick cells (those reach the
    rule through its wildcards and inputs, so adding a cell reruns no other)."""
    return {k: v for k, v in config[section].items() if k not in leave_out}


def dataset_params(wildcards):
    """Only what one dataset file depends on: adding an offset does not touch the other files."""
    return get_family(wildcards.task).generation_params(config["tasks"][wildcards.task])


def train_params(wildcards):
    return MODELS[wildcards.model].cfg["train"]


def explicit_heads(wildcards):
    """The model's FI heads when given in config (discovery.heads), else None."""
    return config["discovery"]["heads"].get(MODELS[wildcards.model].name)


def model_name(wildcards):
    return MODELS[wildcards.model].name


# every model as parity loads it (device included: parity reports per device)
PARITY_MODELS = [{**m.load_params, "device": m.cfg["device"]} for m in MODELS.values()]


@lru_cache(maxsize=None)
def code_hash(rule):
    """The version of the code a rule's jobs run: the content hash of the rule's adapter in
    fi_workflow/jobs.py and of every fi function and module it reaches (fi_workflow.codehash), kept
    in the rule's params so that editing that code reruns the rule's jobs. Snakemake's own code
    trigger judges a `script:` rule by its script's mtime, which a `git clone` resets (see
    profiles/default/config.yaml)."""
    return _code_hash(rule)


def run_job(rule, job):
    """`run: run_job(rule, Job(...))`: the rule's adapter on the job (fi_workflow.run), told whether
    jobs are threads of one process (force-use-threads: the first imports the model libraries)."""
    _run_job(rule, job, share_process=workflow.use_threads)


# ---- resources: what a job asks the scheduler for (fi.plan.resources) ------------------------------


def model_resources(rule, batched=False):
    """`resources: **model_resources("evaluate", batched=True)`: memory, runtime (growing with each
    retry) and GPUs from the model's config entry, its device, and (batched) its batch size, halved
    on each retry (fi.plan.resources.model_resources)."""
    return fi_resources.model_resources(MODELS, rule, batched)


def parity_resources():
    """The parity job's resources (it compares every model, one after the other)."""
    return fi_resources.parity_resources(MODELS)


include: "common/gguf.smk"
include: "common/dynamics.smk"
include: "common/circuit.smk"
