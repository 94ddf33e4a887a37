"""Real models in the config: the paper's grid (configs/paper.yaml), model-name checks before any
job, the reference overlay, per-model job resources and the OOM retry with a halved batch."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import fi.plan.config as config_checks
import fi.plan.grid as grid
import fi.plan.hub as hub
import fi.plan.resources as resources
from fi.plan.config import validate_config
from fi.plan.grid import ConfigError
from fi.plan.params import PlotParams
from tests.conftest import REFERENCE, REPO
from tests.workflow_helpers import TINY_CONFIG, scheduled_jobs, snakemake, write_config

PAPER = REPO / "configs" / "paper.yaml"
PAPER_MODELS = ["meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-v0.1", "google/gemma-2-9b", "Qwen/Qwen2.5-7B",
                "meta-llama/Meta-Llama-3-8B", "microsoft/phi-4", "EleutherAI/pythia-6.9b-deduped",
                "EleutherAI/pythia-12b-deduped"]
REFERENCE_CSV = REFERENCE / "paper_results_aggregated.csv"


def paper_config(monkeypatch) -> dict:
    monkeypatch.setenv("FI_HUB_CHECK", "off")
    return validate_config(yaml.safe_load(PAPER.read_text()))


# ---- the paper's grid -----------------------------------------------------------------------------

def test_paper_config_has_the_papers_models_tasks_and_shots(monkeypatch):
    c = paper_config(monkeypatch)
    assert list(c["models"]) == PAPER_MODELS
    fp16 = {n for n, m in c["models"].items() if m["dtype"] == "float16"}
    assert fp16 == {"microsoft/phi-4", "EleutherAI/pythia-12b-deduped"}
    assert all(m["dtype"] in ("float16", "float32") for m in c["models"].values())
    assert all(m["device"] == "cuda" and m["resources"]["gpus"] == 1 for m in c["models"].values())
    assert c["shots"] == [2, 4, 8, 16, 32]
    assert c["discovery"]["heads"] == {"google/gemma-2-9b": [[39, 12], [39, 7], [36, 7], [32, 6], [32, 1], [25, 13]]}
    assert "mmlu" not in c["tasks"]  # needs a local path: commented out with instructions
    per_task = {t: len(grid.variants(c, t)) for t in grid.task_names(c)}
    # addition: 3 settings x (5 offsets at nmax 9 + 21 at nmax 99 + 21 at nmax 999); cipher: 2 lengths x
    # 25 offsets (-12..13 but 0); base-k: 4 settings x 2 digit counts x 4 bases
    assert per_task == {"addition": 141, "cipher": 50, "base_addition": 32}
    assert len(grid.cells(c)) == 8 * 223 * 5
    # discovery runs for the 7 models without explicit heads
    discovered = {grid.model_id(n) for n in PAPER_MODELS if n != "google/gemma-2-9b"}
    assert {cell.model for cell in grid.attribution_cells(c)} == discovered


def test_paper_grid_loads_each_model_once_per_task_family(monkeypatch):
    """The paper grid's evaluation on a cluster: a job (one load of its model) per model and task
    family, hundreds of cells each, where a job per cell would load a model 1,115 times."""
    c = paper_config(monkeypatch)
    assert all(grid.evaluates_per_task(m) for m in grid.models(c))
    cells_per_job = {}
    for cell in grid.cells(c):
        cells_per_job[cell.model, cell.task] = cells_per_job.get((cell.model, cell.task), 0) + 1
    assert len(cells_per_job) == 8 * 3
    assert sorted(set(cells_per_job.values())) == [160, 250, 705]  # base-k, cipher, addition
    assert grid.evaluation_outputs(c) == [grid.PATHS["eval_task"].format(model=m, task=t) for m, t in cells_per_job]


def test_paper_addition_cells_are_the_papers(monkeypatch):
    if not REFERENCE_CSV.exists():
        pytest.skip(f"paper table not found at {REFERENCE_CSV} (set FI_REFERENCE_DIR)")
    c = paper_config(monkeypatch)
    ref = pd.read_csv(REFERENCE_CSV, index_col=0)
    ours = {(cell.variant, cell.shots) for cell in grid.cells(c)
            if cell.task == "addition" and cell.model == grid.model_id("google/gemma-2-9b")}
    theirs = {(f"{r.setting}_nmax{r.nmax}_offset{r.offset}", r.n_icl_example)
              for r in ref[ref["model_name"] == "google/gemma-2-9b"].itertuples()}
    assert ours == theirs and len(ours) == 705


@pytest.mark.slow
def test_configfile_replaces_config_yaml(tmp_path, tiny_gpt2_dir):
    # config.yaml in the working folder names the built-in model; --configfile other.yaml must not
    # merge it in (no training job, no fi-toy cells)
    write_config(tmp_path, TINY_CONFIG)
    other = {"models": {"local-gpt2": {"path": str(tiny_gpt2_dir)}},
             "tasks": {"addition": {"settings": ["setting1"], "nmax": [9], "offsets": [1], "n_examples": 4}},
             "shots": [2], "discovery": {"heads": {"local-gpt2": [[0, 1]]}}}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    jobs = scheduled_jobs(tmp_path, "--configfile", str(tmp_path / "other.yaml"))
    assert "train_model" not in jobs and jobs["evaluate"] == 1
    assert scheduled_jobs(tmp_path)["train_model"] == 1  # without --configfile: config.yaml


@pytest.mark.slow
def test_paper_dag_builds_offline_with_only_the_papers_models(tmp_path):
    proc = snakemake(tmp_path, "-n", "--quiet", "rules", "--configfile", str(PAPER), env={"FI_HUB_CHECK": "off"})
    text = proc.stdout + proc.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", text, flags=re.M))
    # one evaluation job (one model load) per model and task family, none per cell
    assert int(counts["evaluate_task"]) == 8 * 3 and "evaluate" not in counts and int(counts["dataset"]) == 223
    assert "train_model" not in counts and int(counts["attribute"]) == 7 and int(counts["head_types"]) == 8
    assert not (tmp_path / "results").exists()


# ---- model names: a clear error before any job ------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hub", "folder", "no_weights"])
def test_bad_model_stops_snakemake_before_any_job(tmp_path, kind):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    name, entry = {"hub": ("no-such-org/no-such-model", {}),
                   "folder": ("mine", {"path": str(tmp_path / "missing")}),
                   "no_weights": ("mine", {"path": str(empty)})}[kind]
    work = tmp_path / "work"
    write_config(work, {**TINY_CONFIG, "models": {name: entry}})
    proc = snakemake(work, "-n", check=False)  # with HF_HUB_OFFLINE=1, as the helper runs it
    assert proc.returncode != 0
    assert f"model {name!r}" in proc.stdout + proc.stderr or f"models: {name!r}" in proc.stdout + proc.stderr
    assert not (work / "results").exists()


def _not_found(cls):
    err = cls.__new__(cls)  # these errors want an HTTP response; the check only looks at the type
    err.args = ("404",)
    return err


def test_hub_check_modes(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # nothing cached
    asked = []

    def model_info(name, timeout=None):
        asked.append(name)
        if name == "gated/model":
            raise _not_found(GatedRepoError)
        if name == "no/model":
            raise _not_found(RepositoryNotFoundError)
        if name == "unreachable/model":
            raise ConnectionError("no network")
    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    names = ["gated/model", "no/model", "unreachable/model", "real/model", "gpt2-small"]

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FI_HUB_CHECK", raising=False)
    assert hub.hub_check_mode() == "online"
    errors = hub.check_hub_models(names)
    assert errors == ["models: 'no/model' is not a model on the Hugging Face hub (and has no `path` to a local folder)"]
    assert "gpt2" in asked  # a TransformerLens alias is looked up by its HF name

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_check_mode() == "cache"
    errors = hub.check_hub_models(names)
    assert len(errors) == 5 and all("nor in the local HF cache" in e for e in errors)
    assert "'real/model'" in errors[3] and "FI_HUB_CHECK=off" in errors[3]

    monkeypatch.setenv("FI_HUB_CHECK", "off")
    assert hub.check_hub_models(names) == []
    monkeypatch.setenv("FI_HUB_CHECK", "sometimes")
    assert hub.check_hub_models(names) == ["FI_HUB_CHECK='sometimes': expected one of cache, online, off"]


def test_alias_table_is_transformer_lens_public_one():
    """fi.plan.hub reads TransformerLens' alias data file to keep torch out of DAG planning; it must give
    what TransformerLens' public table (transformer_lens.supported_models.MODEL_ALIASES) gives."""
    from transformer_lens.supported_models import MODEL_ALIASES

    public = {alias: official for official, aliases in MODEL_ALIASES.items() for alias in aliases}
    assert public and hub._alias_table() == public
    assert hub.official_name("gpt2-small") == "gpt2"


def test_cached_hub_model_passes_offline(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("FI_HUB_CHECK", raising=False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, filename, **k: str(tmp_path / "config.json") if repo == "org/cached" else None)
    assert hub.check_hub_models(["org/cached"]) == []
    assert len(hub.check_hub_models(["org/cached", "org/other"])) == 1


# ---- the reference overlay ------------------------------------------------------------------------

def test_reference_columns_are_the_papers():
    from fi.report.tables import PAPER_COLUMNS

    assert config_checks.REFERENCE_COLUMNS == list(PAPER_COLUMNS)


def test_configured_reference_must_exist_and_have_the_papers_columns(tmp_path):
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    missing = tmp_path / "nope.csv"
    with pytest.raises(ConfigError, match=rf"plots.reference: '{re.escape(str(missing))}' does not exist"):
        validate_config({**copy.deepcopy(base), "plots": {"reference": str(missing)}})
    bad = tmp_path / "bad.csv"
    bad.write_text("model,setting,accuracy\nm,setting1,0.5\n")
    with pytest.raises(ConfigError, match=r"bad.csv' is not in the paper's format: missing columns model_name, nmax"):
        validate_config({**copy.deepcopy(base), "plots": {"reference": str(bad)}})
    good = tmp_path / "good.csv"
    good.write_text("," + ",".join(config_checks.REFERENCE_COLUMNS) + "\n0,m,setting1,9,1,2,0.5,0.5\n")
    validate_config({**copy.deepcopy(base), "plots": {"reference": str(good)}})


def test_plot_stage_overlays_the_papers_reference(tmp_path):
    if not REFERENCE_CSV.exists():
        pytest.skip(f"paper table not found at {REFERENCE_CSV} (set FI_REFERENCE_DIR)")
    from fi.report.tables import from_paper_format
    from fi.stages import plot_accuracy

    validate_config({**yaml.safe_load((REPO / "config.yaml").read_text()), "plots": {"reference": str(REFERENCE_CSV)}})
    # our table: the paper's own Gemma-2 rows at nmax 9 (so the overlay has matching panels), shifted
    paper = from_paper_format(pd.read_csv(REFERENCE_CSV, index_col=0))
    ours = paper[(paper["model"] == "google/gemma-2-9b") & (paper["nmax"] == 9)].copy()
    ours["cf_acc"] = (ours["cf_acc"] * 0.5).round(3)
    ours["n"] = 100
    table = tmp_path / "accuracy.parquet"
    ours.to_parquet(table)
    out = tmp_path / "accuracy_addition.png"
    plot_accuracy(str(table), "addition", str(out), PlotParams(dpi=60, reference=str(REFERENCE_CSV)))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


# ---- per-model resources and the OOM retry ---------------------------------------------------------

def test_model_resources_scale_per_rule_and_attempt(monkeypatch):
    c = paper_config(monkeypatch)
    gemma = grid.model_entry(c, grid.model_id("google/gemma-2-9b"))
    assert resources.job_resources(gemma, "evaluate") == {"mem_mb": 64000, "runtime": 90, "gpu": 1}
    assert resources.job_resources(gemma, "attribute", attempt=2) == {"mem_mb": 128000, "runtime": 720, "gpu": 1}
    # defaults: what the rules asked for before models had resources
    default = grid.ModelEntry("m", "m", False, None, {"batch_size": 64})
    assert [resources.job_resources(default, r)["mem_mb"] for r in ("evaluate", "attribute", "ablate")] == [4000, 8000, 4000]
    assert [resources.job_resources(default, r)["runtime"] for r in ("evaluate", "attribute", "ablate")] == [30, 120, 60]
    assert resources.job_resources(default, "evaluate")["gpu"] == 0
    # a job per task family: its own time limit, or 8 evaluate jobs' (and more on a retry)
    assert resources.job_resources(gemma, "evaluate_task", attempt=2) == {"mem_mb": 64000, "runtime": 1440, "gpu": 1}
    assert resources.job_resources(default, "evaluate_task")["runtime"] == 240


def profile_retries(path: Path) -> int:
    return int(yaml.safe_load(path.read_text()).get("retries", 0))


def test_profiles_retry_often_enough_to_halve_the_batch_twice():
    assert profile_retries(REPO / "profiles" / "default" / "config.yaml") >= 2
    assert profile_retries(REPO / "profiles" / "slurm" / "config.yaml") >= 2


OOM_SCRIPT = '''
bs = snakemake.resources.batch_size
with open(f"attempts_{snakemake.rule}.txt", "a") as f:
    f.write(f"{bs}\\n")
if bs > 16:  # what torch raises when a batch does not fit on the GPU
    import torch
    raise torch.cuda.OutOfMemoryError(f"CUDA out of memory at batch size {bs}")
open(snakemake.output[0], "w").write(str(bs))
'''


@pytest.mark.slow
def test_cuda_oom_is_retried_with_a_halved_batch(tmp_path):
    """A job that runs out of GPU memory at batch size > 16 succeeds on its third attempt (64, 32,
    16) under the default profile's retries, with the batch_size resource line of the real rules."""
    rules = ""
    for rule, smk in (("evaluate", "evaluate.smk"), ("ablate", "ablation.smk")):
        text = (REPO / "workflow" / "rules" / smk).read_text().split(f"rule {rule}:\n", 1)[1]
        line = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("**model_resources("))
        rules += (f"rule {rule}:\n    output: '{rule}_{{model}}.txt'\n    resources:\n        {line}\n"
                  "    script: 'oom.py'\n\n")
    (tmp_path / "oom.py").write_text(OOM_SCRIPT)
    # the rules' resources exactly as the workflow builds them (common.smk's model_resources)
    (tmp_path / "Snakefile").write_text(
        "import fi.plan.resources as fi_resources\nfrom fi.plan.grid import ModelEntry\n\n"
        "MODELS = {'m': ModelEntry('m', 'm', False, None, {'batch_size': 64, 'device': 'cpu'})}\n\n\n"
        "def model_resources(rule, batched=False):\n    return fi_resources.model_resources(MODELS, rule, batched)\n\n\n"
        + rules)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(tmp_path / "Snakefile"), "--directory", str(tmp_path),
           "--workflow-profile", str(REPO / "profiles" / "default"), "--cores", "2", "evaluate_m.txt", "ablate_m.txt"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rule in ("evaluate", "ablate"):
        assert (tmp_path / f"attempts_{rule}.txt").read_text().split() == ["64", "32", "16"]
        assert (tmp_path / f"{rule}_m.txt").read_text() == "16"
    assert "OutOfMemoryError" in proc.stderr
