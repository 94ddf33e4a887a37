from fi.stages import aggregate_function_vectors, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, aggregate_function_vectors, tables=list(sm.input), output=sm.output.table,
               effects_output=sm.output.effects)
