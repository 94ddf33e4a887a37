from fi.dynamics import aggregate_dynamics
from fi.stages import from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, aggregate_dynamics, measures=list(sm.input), threshold=sm.params.threshold, min_gap=sm.params.min_gap,
               table=sm.output.table, formation=sm.output.formation, summary=sm.output.summary)
