from fi.stages import aggregate, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, aggregate, cells=list(sm.input), table=sm.output.table, paper=sm.output.paper,
               predictions=sm.output.predictions)
