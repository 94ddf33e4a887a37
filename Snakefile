# The function-induction grid: model x task x shots -> tables and plots.
# Run: snakemake --cores all   (see README.md)

import os

from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the default grid; `--configfile other.yaml` replaces it instead of extending it
# (several --configfile files still merge in order: `--configfile config.yaml extra.yaml`).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


# Jobs share few cores: OpenMP's default (active) waiting makes a 2-thread job spin on both cores
# while it waits, 4-7x slower when another job shares them (bench/bench_training.py); passive
# waiting costs a 2-thread job little alone. Set before any job process imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Hub model names are checked (local HF cache, or the hub) once, by the main snakemake process; the
# job processes a cluster starts do not repeat it (see fi.plan.hub.hub_check_mode).
if not workflow.is_main_process:
    os.environ.setdefault("FI_HUB_CHECK", "off")


# `snakemake --report report.html`: this page (with the resolved config) and every report() output
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/gguf.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/attribution.smk"
include: "workflow/rules/discovery.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/circuit.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/parity.smk"
include: "workflow/rules/dynamics.smk"
include: "workflow/rules/function_vectors.smk"


# Light jobs that read finished tables: on a cluster (profiles/slurm) they run in the main
# snakemake process instead of waiting in the queue.
localrules:
    all,
    aggregate,
    aggregate_attribution,
    aggregate_ablation,
    plot_accuracy,
    plot_heads,
    plot_ablation,
    aggregate_circuits,
    plot_circuits,
    aggregate_function_vectors,
    plot_function_vectors,
    summary,


rule all:
    default_target: True
    input:
        all_outputs() + dynamics_outputs(),
