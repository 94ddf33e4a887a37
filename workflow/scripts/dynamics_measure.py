from fi.dynamics import measure_checkpoint
from fi.stages import from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, measure_checkpoint, run_dir=sm.input.run, step=int(sm.wildcards.step), train=sm.params.train,
               cells=sm.params.cells, datasets=list(sm.input.datasets), head_types=sm.params.head_types,
               params=sm.params.dynamics, keys={"model": sm.wildcards.model, "run": sm.wildcards.run,
                                                "seed": int(sm.wildcards.seed)},
               output=sm.output[0], threads=sm.threads)
