"""How long planning the paper's grid takes, and where a job's time goes.

1. DAG: times `snakemake -n --configfile configs/paper.yaml` (the whole paper grid: 8 models, every
   task family, 5 shot counts) in an empty working folder and prints the job counts. Target: <= 15 s.
   Model names are not checked against the hub (FI_HUB_CHECK=off): planning needs no weights.
2. Default grid (config.yaml, the built-in model, CPU): the share of an evaluate job spent importing
   torch + transformer_lens and loading the model, against scoring the cell. Measured: the imports in
   a fresh process, the built-in model's load, and every cell's scoring time (from the evaluate logs
   of the last `snakemake` run when they exist, else by scoring the cells here).
3. Paper grid: the same split, estimated. Assumptions are printed with the numbers.

    python -m bench.bench_dag [--repeats 3] [--skip-default]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Parameter counts (model cards / config.json) of the paper's models.
PARAMS = {
    "meta-llama/Llama-2-7b-hf": 6.74e9, "mistralai/Mistral-7B-v0.1": 7.24e9, "google/gemma-2-9b": 9.24e9,
    "Qwen/Qwen2.5-7B": 7.62e9, "meta-llama/Meta-Llama-3-8B": 8.03e9, "microsoft/phi-4": 14.7e9,
    "EleutherAI/pythia-6.9b-deduped": 6.86e9, "EleutherAI/pythia-12b-deduped": 11.8e9,
}
# A100 80GB dense peak (NVIDIA datasheet): float32 without TF32 (PyTorch's default for matmuls) and
# 16-bit tensor cores; the share of it a batched forward pass reaches.
PEAK_FLOPS = {"float32": 19.5e12, "float16": 312e12, "bfloat16": 312e12}
UTILISATION = 0.4
LOAD_S = (30.0, 60.0)  # loading a 7-14B checkpoint from local disk to the GPU


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - t0, proc


def job_counts(text: str) -> dict[str, int]:
    counts, in_table = {}, False
    for line in text.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
        elif in_table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
        elif in_table and parts and not set(parts[0]) <= {"-"}:
            in_table = False
    return counts


def time_dag(configfile: str | None, repeats: int) -> tuple[list[float], dict[str, int]]:
    times, counts = [], {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as work:
            cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--cores", "1"]
            if configfile:
                cmd += ["--configfile", str(REPO / configfile)]
            else:  # the default grid: config.yaml, found in the working folder
                Path(work, "config.yaml").write_text((REPO / "config.yaml").read_text())
            seconds, proc = run(cmd, Path(work), {"FI_HUB_CHECK": "off"})
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            times.append(seconds)
            counts = job_counts(proc.stdout + proc.stderr)
    return times, counts


def print_dag(label: str, times: list[float], counts: dict[str, int], target: float | None = None) -> None:
    total = counts.pop("total", sum(counts.values()))
    flag = "" if target is None else (f"  (target <= {target:.0f} s: {'met' if min(times) <= target else 'MISSED'})")
    print(f"{label}: {min(times):.1f} s best, {statistics.median(times):.1f} s median of {len(times)}{flag}")
    print(f"  {total} jobs: " + ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda x: -x[1])))


# ---- default grid: where an evaluate job's time goes --------------------------------------------

def import_seconds(repeats: int) -> float:
    code = "import time; t=time.perf_counter(); import torch, transformer_lens; print(time.perf_counter()-t)"
    out = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out.append(float(proc.stdout.strip().splitlines()[-1]))
    return min(out)


def default_model_dir() -> tuple[Path, str]:
    trained = REPO / "results" / "models" / "fi-toy"
    if (trained / "config.json").exists():
        return trained, "the trained built-in model (results/models/fi-toy)"
    import torch
    import yaml

    from fi.build.training import build_model, build_tokenizer
    from tests.conftest import tiny_train_cfg

    cfg = tiny_train_cfg(**yaml.safe_load((REPO / "config.yaml").read_text())["models"]["fi-toy"]["train"])
    cfg.update(d_mlp=256, max_len=512)  # the schema's defaults for what config.yaml leaves out
    path = Path(tempfile.mkdtemp()) / "fi-toy"
    torch.manual_seed(0)
    tok = build_tokenizer()
    build_model(cfg, len(tok), tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path, "a random-initialised model of the built-in model's size (results/models/fi-toy absent)"


def logged_eval_seconds() -> list[float]:
    pat = re.compile(r"\(eval ([\d.]+)s\)")
    out = []
    for f in glob.glob(str(REPO / "logs" / "evaluate" / "fi-toy" / "**" / "*.log"), recursive=True):
        m = pat.search(Path(f).read_text())
        if m:
            out.append(float(m.group(1)))
    return out


def measured_eval_seconds(model) -> list[float]:
    import yaml

    from fi.methods.evaluation import evaluate_task
    from fi.plan.config import validate_config
    from fi.plan.grid import cells
    from fi.plan.tasks import get_family

    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    config["models"] = {"fi-toy": config["models"]["fi-toy"]}
    out, records = [], {}
    for cell in cells(config):
        family = get_family(cell.task)
        v = family.parse_variant(cell.variant)
        if cell.variant not in records:
            records[cell.variant] = family.generate(v, family.generation_params(config["tasks"][cell.task]))
        t0 = time.perf_counter()
        evaluate_task(model, family, v, records[cell.variant], cell.shots, batch_size=64)
        out.append(time.perf_counter() - t0)
    return out


def default_grid(repeats: int, imports: float) -> None:
    import torch

    from fi.engine.models import load_model

    torch.set_num_threads(1)  # what an evaluate job gets (threads: 1)
    path, what = default_model_dir()
    load_model("fi-toy", path=str(path), device="cpu")  # warm the file cache and lazy imports
    loads = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = load_model("fi-toy", path=str(path), device="cpu")
        loads.append(time.perf_counter() - t0)
    load = min(loads)
    evals = logged_eval_seconds()
    source = f"the evaluate logs of the last run ({len(evals)} cells)"
    if not evals:
        evals = measured_eval_seconds(model)
        source = f"scored here ({len(evals)} cells, 1 thread)"
    per_cell = statistics.mean(evals)
    job = imports + load + per_cell
    print(f"\nDefault grid (config.yaml, {len(evals)} evaluate jobs, CPU), per evaluate job:")
    print(f"  import torch + transformer_lens (fresh process, best of {repeats}): {imports:.2f} s")
    print(f"  load {what}: {load:.2f} s")
    print(f"  score one cell, mean over {source}: {per_cell:.2f} s (min {min(evals):.2f}, max {max(evals):.2f})")
    print(f"  => importing + loading {100 * (imports + load) / job:.0f}% of a job's {job:.2f} s, computing "
          f"{100 * per_cell / job:.0f}% (python start-up and snakemake's job overhead come on top)")


# ---- paper grid: an estimate ---------------------------------------------------------------------

def paper_estimate(imports: float) -> None:
    import yaml

    from fi.plan.config import validate_config
    from fi.plan.grid import cells, evaluates_per_task, models

    os.environ["FI_HUB_CHECK"] = "off"
    config = validate_config(yaml.safe_load((REPO / "configs" / "paper.yaml").read_text()))
    all_cells = cells(config)
    # tokens one cell runs: per example, the normal and contrast prompts with each answer's tokens but
    # the last appended (2 to 4 distinct sequences); 1 token per character (single-digit tokenizers;
    # an upper bound for the others) plus BOS
    tokens_per_cell: dict[tuple, int] = {}
    from fi.plan.tasks import get_family

    for c in {(c.task, c.variant, c.shots) for c in all_cells}:
        family = get_family(c[0])
        v = family.parse_variant(c[1])
        recs = family.generate(v, family.generation_params(config["tasks"][c[0]]))
        n = 0
        for ex in family.examples(recs, v, c[2]):
            for prompt in (ex.normal_prompt, ex.contrast_prompt):
                seqs = {prompt + ans[:-1] for ans in (ex.normal_answer, ex.contrast_answer)}
                n += sum(len(s) + 1 for s in seqs)
        tokens_per_cell[c] = n
    print("\nPaper grid (configs/paper.yaml), evaluate jobs, estimated:")
    print(f"  assumptions: loading a 7-14B checkpoint from local disk {LOAD_S[0]:.0f}-{LOAD_S[1]:.0f} s; "
          f"imports {imports:.1f} s (measured here); compute = 2 x parameters x tokens at {UTILISATION:.0%} of an "
          f"A100's dense peak ({PEAK_FLOPS['float32'] / 1e12:.1f} TFLOP/s float32 without TF32, "
          f"{PEAK_FLOPS['float16'] / 1e12:.0f} TFLOP/s float16); 1 token per character of every scored sequence")
    total_load = [0.0, 0.0]
    total_compute = 0.0
    for m in models(config):
        mine = [c for c in all_cells if c.model == m.id]
        toks = sum(tokens_per_cell[(c.task, c.variant, c.shots)] for c in mine)
        rate = PEAK_FLOPS[m.cfg["dtype"]] * UTILISATION
        compute = 2 * PARAMS[m.name] * toks / rate
        # a job per cell loads the model per cell; `evaluate_jobs: task` once per task family
        jobs = len({c.task for c in mine}) if evaluates_per_task(m) else len(mine)
        load = [jobs * (imports + x) for x in LOAD_S]
        total_compute += compute
        total_load = [a + b for a, b in zip(total_load, load)]
        print(f"  {m.name:32s} {m.cfg['dtype']:8s} {len(mine):5d} cells in {jobs:4d} jobs, {toks / 1e6:6.1f} M tokens: compute "
              f"{compute / 3600:5.1f} GPU-h ({compute / len(mine):5.1f} s a cell), import + load "
              f"{load[0] / 3600:5.1f}-{load[1] / 3600:5.1f} GPU-h")
    lo = total_load[0] / (total_load[0] + total_compute)
    hi = total_load[1] / (total_load[1] + total_compute)
    print(f"  total: compute {total_compute / 3600:.0f} GPU-h, import + load {total_load[0] / 3600:.0f}-"
          f"{total_load[1] / 3600:.0f} GPU-h => loading is {100 * lo:.0f}-{100 * hi:.0f}% of the evaluation "
          "jobs' GPU time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-default", action="store_true", help="skip the default grid's job-time split")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    times, counts = time_dag("configs/paper.yaml", args.repeats)
    print_dag("snakemake -n --configfile configs/paper.yaml", times, counts, target=15)
    times, counts = time_dag(None, args.repeats)
    print_dag("snakemake -n (default grid, config.yaml)", times, counts)
    imports = import_seconds(args.repeats)
    if not args.skip_default:
        default_grid(args.repeats, imports)
    paper_estimate(imports)


if __name__ == "__main__":
    main()
