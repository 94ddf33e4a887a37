"""What a model job asks the scheduler for (SLURM or local): memory, runtime, GPUs and batch size,
per model (`resources:` in its config entry) and rule, growing with each retry. Resources, not
params: none of them changes a number in the results, so changing them reruns nothing."""

from __future__ import annotations

from fi.plan.grid import ModelEntry

MODEL_RESOURCE_DEFAULTS = {"gpus": 0, "mem_mb": 4000, "runtime": 30}
# A model's `resources.mem_mb` / `runtime` are those of one evaluate job; other rules take multiples
# (memory, runtime): attribution keeps two runs' activations and does L x H patched passes; ablation
# evaluates the cell once per head set; a job of all a model's cells of one task family
# (evaluate_task) gets 8x the runtime unless the model's `resources.task_runtime` says how long.
RULE_RESOURCE_SCALE = {"evaluate": (1, 1), "evaluate_task": (1, 8), "head_types": (1, 1), "discover_heads": (1, 1),
                       "ablate": (1, 2), "attribute": (2, 4), "parity": (1, 1), "find_circuit": (2, 4), "draw_circuit": (1, 1),
                       "evaluate_circuit": (2, 4), "circuit_overlap": (1, 2), "function_vectors": (1, 1)}


def job_resources(entry: ModelEntry, rule: str, attempt: int = 1) -> dict:
    """mem_mb, runtime (minutes, growing with the attempt: a retried job runs with a halved batch)
    and gpu (the count that snakemake's SLURM executor turns into --gpus) of one job of `rule`."""
    r = {**MODEL_RESOURCE_DEFAULTS, **(entry.cfg.get("resources") or {})}
    mem_x, time_x = RULE_RESOURCE_SCALE[rule]
    runtime = r["runtime"] * time_x
    if rule == "evaluate_task" and r.get("task_runtime"):
        runtime = r["task_runtime"]
    return {"mem_mb": int(r["mem_mb"] * mem_x), "runtime": int(runtime * max(1, attempt)), "gpu": int(r["gpus"])}


def batch_size(entry: ModelEntry, attempt: int = 1) -> int:
    """The model's batch size, halved on each retry (a retry most often follows a GPU out-of-memory
    error): batch, batch/2, batch/4 with the profiles' `retries: 2`."""
    return max(1, entry.cfg["batch_size"] // 2 ** (attempt - 1))


def model_resources(models: dict[str, ModelEntry], rule: str, batched: bool = False) -> dict:
    """The `resources:` of a model rule as snakemake callables on the job's wildcards (and attempt):
    mem_mb, runtime and gpu (`job_resources`), batch_size when `batched` (`batch_size`), and the
    model's device. `models` maps the {model} wildcard to its entry. In a rule:
    `resources: **model_resources("evaluate", batched=True)` (common.smk binds `models`)."""
    res = {
        "mem_mb": lambda wc: job_resources(models[wc.model], rule)["mem_mb"],
        "runtime": lambda wc, attempt: job_resources(models[wc.model], rule, attempt)["runtime"],
        "gpu": lambda wc: job_resources(models[wc.model], rule)["gpu"],
    }
    if batched:
        res["batch_size"] = lambda wc, attempt: batch_size(models[wc.model], attempt)
    res["device"] = lambda wc: models[wc.model].cfg["device"]
    return res


def parity_resources(models: dict[str, ModelEntry]) -> dict:
    """The parity job compares every model, one after the other: the largest one's memory and GPUs,
    all their runtimes added up."""

    def per_model(key: str, attempt: int = 1) -> list[int]:
        return [job_resources(m, "parity", attempt)[key] for m in models.values()]

    return {
        "mem_mb": lambda wc: max(per_model("mem_mb")),
        "runtime": lambda wc, attempt: sum(per_model("runtime", attempt)),
        "gpu": lambda wc: max(per_model("gpu")),
    }
