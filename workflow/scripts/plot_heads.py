from fi.stages import from_snakemake, plot_heads

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, plot_heads, table=sm.input[0], model_name=sm.params.model_name, output=sm.output[0],
               plots=sm.params.plots)
