from fi.dynamics import plot_model_dynamics
from fi.stages import from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, plot_model_dynamics, table=sm.input.table, formation=sm.input.formation,
               model=sm.wildcards.model, output=sm.output[0], dpi=sm.params.dpi)
