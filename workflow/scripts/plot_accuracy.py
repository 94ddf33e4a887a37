from fi.stages import from_snakemake, plot_accuracy

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, plot_accuracy, table=sm.input[0], task=sm.wildcards.task, output=sm.output[0],
               plots=sm.params.plots)
