# The function-induction grid: model x task x shots -> tables and plots.
# Run: snakemake --cores all   (see README.md)

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"



include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/attribution.smk"
include: "workflow/rules/discovery.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/plots.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
