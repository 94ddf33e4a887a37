from fi.parity import parity_table
from fi.stages import from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, parity_table, models=sm.params.models, output=sm.output[0])
