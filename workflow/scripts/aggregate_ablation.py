from fi.stages import aggregate_ablation, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, aggregate_ablation, cells=list(sm.input), output=sm.output[0])
