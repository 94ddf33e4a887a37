from fi.stages import from_snakemake, train_model

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, train_model, train=sm.params.train, output=sm.output[0], threads=sm.threads)
