from fi.dynamics import train_run
from fi.stages import from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, train_run, train=sm.params.train, clamps=sm.params.clamps, output=sm.output[0],
               baseline=sm.input.get("baseline"), fi_heads=sm.input.get("fi_heads"), fi_measures=sm.input.get("fi_measures"),
               discovery=sm.params.discovery, threads=sm.threads)
