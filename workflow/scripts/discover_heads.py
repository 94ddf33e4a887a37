from fi.stages import discover_heads, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, discover_heads, model=sm.params.model, output=sm.output[0], discovery=sm.params.discovery,
               explicit=sm.params.explicit, attribution=sm.input.get("attribution"),
               dataset=sm.input.dataset, min_ld_gap=sm.params.min_ld_gap, device=sm.resources.device, threads=sm.threads)
