from fi.stages import from_snakemake, make_dataset

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, make_dataset, task=sm.wildcards.task, variant=sm.wildcards.variant,
               generation=sm.params.generation, output=sm.output[0])
