from fi.stages import aggregate_attribution, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, aggregate_attribution, cells=list(sm.input.cells), head_types_files=list(sm.input.head_types),
               heads_files=list(sm.input.heads), output=sm.output[0], min_ld_gap=sm.params.min_ld_gap)
