from fi.stages import from_snakemake, head_types

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, head_types, model=sm.params.model, output=sm.output[0], params=sm.params.head_types,
               device=sm.resources.device, threads=sm.threads)
