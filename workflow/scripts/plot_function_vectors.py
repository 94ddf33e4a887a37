from fi.stages import from_snakemake, plot_function_vectors

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, plot_function_vectors, table=sm.input[0], output=sm.output[0], plots=sm.params.plots)
