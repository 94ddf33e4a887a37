"""The grid: config -> models, cells and file paths. Imported by the Snakefile, so no torch here.

A *cell* is one (model, task, variant, shots) evaluation. Every file a rule writes has its pattern in
`PATHS`, once: the rules use the patterns as their outputs (`output: PATHS["eval"]`) and the path
functions below fill them in (`eval_path(cell)`), so the rules, the input functions and the tests
agree on the layout by construction.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from fi.plan.tasks import FAMILIES, get_family

# Every output of the workflow, as the pattern its rule writes. Wildcards: {model} is a model id
# (`model_id`), {task} a task family, {variant} one of its variants, {shots} the shot count and
# {ext} a plot format.
PATHS = {
    "dataset": "results/datasets/{task}/{variant}.jsonl",
    "model": "results/models/{model}",
    "eval": "results/eval/{model}/{task}/{variant}/shots{shots}.parquet",
    # a model with `evaluate_jobs: task`: all its cells of one task family, evaluated by one job
    "eval_task": "results/eval_by_task/{model}/{task}.parquet",
    "attribution": "results/attribution/{model}/{task}/{variant}/shots{shots}.parquet",
    "head_types": "results/head_types/{model}.parquet",
    "heads": "results/heads/{model}.json",
    "ablation": "results/ablation/{model}/{task}/{variant}/shots{shots}.parquet",
    "circuit": "results/circuits/{model}/{task}/{variant}/shots{shots}.json",
    "circuit_diagram": "results/plots/circuit_{model}_{task}_{variant}_shots{shots}.{ext}",
    "circuit_attention_plot": "results/plots/circuit_attention_{model}_{task}_{variant}_shots{shots}.{ext}",
    "circuit_attention_html": "results/circuits/{model}/{task}/{variant}/shots{shots}_attention.html",
    "circuit_evaluation": "results/circuits/{model}_evaluation.json",
    "circuit_completeness": "results/circuits/{model}_completeness_greedy_search.json",
    "circuit_overlap": "results/circuits/{model}_overlap.parquet",
    "circuit_heads_table": "results/tables/circuit_heads.parquet",
    "circuit_evaluation_table": "results/tables/circuit_evaluation.parquet",
    "circuit_overlap_table": "results/tables/circuit_overlap.parquet",
    "circuit_evaluation_plot": "results/plots/circuit_evaluation.{ext}",
    "circuit_overlap_plot": "results/plots/circuit_overlap.{ext}",
    "accuracy_table": "results/tables/accuracy.parquet",
    "paper_table": "results/tables/accuracy_paper_format.csv",
    "predictions_table": "results/tables/predictions.parquet",
    "head_attribution_table": "results/tables/head_attribution.parquet",
    "ablation_table": "results/tables/ablation.parquet",
    "function_vectors": "results/function_vectors/{model}.parquet",
    "function_vectors_table": "results/tables/function_vectors.parquet",
    "function_vector_effects_table": "results/tables/function_vector_effects.parquet",
    "parity_table": "results/tables/parity.csv",
    "accuracy_plot": "results/plots/accuracy_{task}.{ext}",
    "heads_plot": "results/plots/heads_{model}.{ext}",
    "ablation_plot": "results/plots/task_generalization.{ext}",
    "function_vectors_plot": "results/plots/function_vectors_{model}.{ext}",
    "summary": "results/summary.md",
    "provenance": "results/provenance.json",
    # a GGUF package's parts joined into one file (workflow/rules/gguf.smk)
    "assembled_gguf": "results/gguf/{model}.gguf",
    # training dynamics (workflow/rules/dynamics.smk, fi.plan.dynamics_runs)
    "dynamics_run": "results/dynamics/{model}/runs/{run}/seed{seed}",
    "dynamics_measures": "results/dynamics/{model}/measures/{run}/seed{seed}/step{step}.parquet",
    "dynamics_table": "results/tables/dynamics.parquet",
    "dynamics_formation_table": "results/tables/dynamics_formation.parquet",
    "dynamics_summary_table": "results/tables/dynamics_summary.parquet",
    "dynamics_plot": "results/plots/dynamics_{model}.{ext}",
}

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
        raise ConfigError(
            f"models: {name!r} is not a valid model name (letters, digits, '.', '_', "
            "'-', at most one '/', no '..' or '--')"
        )
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
        """Converted from a GGUF file by the workflow (fi/build/gguf.py) into results/models/<id>/."""
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
    return [
        Cell(m.id, t, v.name, s)
        for m in models(config)
        for t in task_names(config)
        for v in variants(config, t)
        for s in config["shots"]
    ]


def evaluates_per_task(entry: ModelEntry) -> bool:
    """The model's evaluation cells run one job per task family (`evaluate_jobs: task`): one model
    load for all of them, where a job per cell loads the model once per cell."""
    return entry.cfg.get("evaluate_jobs", "cell") == "task"


def task_cells(config: dict, mid: str, task: str) -> list[Cell]:
    """The cells of one model and task family, in grid order (one `evaluate_task` job's cells)."""
    return [c for c in cells(config) if c.model == mid and c.task == task]


def evaluation_outputs(config: dict) -> list[str]:
    """Every evaluation file the accuracy tables read, in grid order: one per cell, or one per task
    family for a model that evaluates per task (its rows in the same order)."""
    per_task = {m.id for m in models(config) if evaluates_per_task(m)}
    out: list[str] = []
    for c in cells(config):
        path = PATHS["eval_task"].format(model=c.model, task=c.task) if c.model in per_task else eval_path(c)
        if path not in out:
            out.append(path)
    return out


def _cell(m: str, c: dict) -> Cell:
    return Cell(m, c["task"], c["variant"], int(c["shots"]))


def attribution_cells(config: dict) -> list[Cell]:
    """The discovery cell (unless every model's heads are given) and attribution.cells, per model."""
    out = []
    for m in models(config):
        specs = list(config["attribution"]["cells"])
        if m.name not in config["discovery"]["heads"]:
            specs = [config["discovery"]["cell"], *specs]
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


# ---- paths: PATHS filled in -------------------------------------------------------------------


def dataset_path(task: str, variant: str) -> str:
    return PATHS["dataset"].format(task=task, variant=variant)


def builtin_model_dir(mid: str) -> str:
    return PATHS["model"].format(model=mid)


def eval_path(cell: Cell) -> str:
    return PATHS["eval"].format(**dataclasses.asdict(cell))


def attribution_path(cell: Cell) -> str:
    return PATHS["attribution"].format(**dataclasses.asdict(cell))


def ablation_path(cell: Cell) -> str:
    return PATHS["ablation"].format(**dataclasses.asdict(cell))


def heads_path(mid: str) -> str:
    return PATHS["heads"].format(model=mid)


def head_types_path(mid: str) -> str:
    return PATHS["head_types"].format(model=mid)


def function_vector_datasets(config: dict) -> list[str]:
    """The addition datasets whose contrast prompts give the function vectors, in the order of
    function_vectors.offsets."""
    fv = config["function_vectors"]
    return [dataset_path("addition", f"{fv['setting']}_nmax{fv['nmax']}_offset{k}") for k in fv["offsets"]]


def function_vectors_enabled(config: dict) -> bool:
    """Function vectors are in the default target when enabled and addition is a configured task
    (its datasets are made by the dataset rule only then)."""
    return bool(config["function_vectors"]["enabled"]) and "addition" in task_names(config)
