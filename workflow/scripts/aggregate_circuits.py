from fi.stages import aggregate_circuits, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, aggregate_circuits, circuits=list(sm.input.circuits), evaluations=list(sm.input.evaluations),
               overlaps=list(sm.input.overlaps), heads_table=sm.output.heads, evaluation_table=sm.output.evaluation,
               overlap_table=sm.output.overlap)
