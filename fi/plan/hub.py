"""Hub model names checked before any job runs (the Snakefile, through fi.plan.config.check_config).

`$FI_HUB_CHECK` says how (`hub_check_mode`). No torch here: the check runs in the main snakemake
process, so TransformerLens (which imports torch, 5 s) is not imported either; see `_alias_table`
for the one place that reads a TransformerLens data file instead.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

HUB_CHECK_ENV = "FI_HUB_CHECK"
HUB_CHECK_MODES = ("cache", "online", "off")
HUB_TIMEOUT_S = 10.0


def hub_check_mode() -> str:
    """How hub model names are checked before any job runs, from $FI_HUB_CHECK:
      cache   the name must be in the local HF cache (default when HF_HUB_OFFLINE=1)
      online  in the local HF cache, or else it must exist on the hub (default otherwise; when the
              hub cannot be reached, names are left to the jobs, which fail naming the model)
      off     not checked (to plan a DAG on a machine without the weights: `snakemake -n`)"""
    mode = os.environ.get(HUB_CHECK_ENV, "").strip().lower()
    if mode:
        return mode
    offline = os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")
    return "cache" if offline else "online"


def official_name(name: str) -> str:
    """A TransformerLens alias ('gpt2-small') as its HF name; any other name as it is."""
    return _alias_table().get(name, name)


@functools.lru_cache(maxsize=1)
def _alias_table() -> dict[str, str]:
    """alias -> HF name. TransformerLens' public table is `transformer_lens.supported_models.
    MODEL_ALIASES`, but importing it imports torch (5 s on every DAG plan), so this reads the data
    file that table is loaded from (`tools/model_registry/data/model_aliases.json`, TransformerLens
    4.x), located without importing the package. tests/test_paper_grid.py checks that the two agree;
    with no TransformerLens or another layout there are no aliases (names are checked as given)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("transformer_lens")
        root = Path(next(iter(spec.submodule_search_locations)))
        table = json.loads((root / "tools" / "model_registry" / "data" / "model_aliases.json").read_text())
        table = table.get("aliases", table)
        return {alias: official for official, aliases in table.items() if isinstance(aliases, list)
                for alias in aliases}
    except (AttributeError, StopIteration, TypeError, OSError, ValueError):
        return {}


def check_hub_models(names: list[str]) -> list[str]:
    """Hub names (models without `path`) that cannot be loaded, one error each, naming the model."""
    mode = hub_check_mode()
    if mode not in HUB_CHECK_MODES:
        return [f"{HUB_CHECK_ENV}={mode!r}: expected one of {', '.join(HUB_CHECK_MODES)}"]
    if mode == "off" or not names:
        return []
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return []
    missing = [n for n in names if not isinstance(try_to_load_from_cache(official_name(n), "config.json"), str)]
    if mode == "cache":
        return [f"models: {n!r} is neither a local folder (give `path`) nor in the local HF cache, and "
                f"HF_HUB_OFFLINE=1 forbids downloading it (download it first; {HUB_CHECK_ENV}=off skips "
                "this check, e.g. to plan the DAG with `snakemake -n`)" for n in missing]
    if not missing:
        return []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
        found = list(pool.map(_on_hub, missing))
    if None in found:
        sys.stderr.write(f"fi: could not reach the Hugging Face hub to check {missing}; each is checked "
                         "when its jobs load it\n")
    return [f"models: {n!r} is not a model on the Hugging Face hub (and has no `path` to a local folder)"
            for n, ok in zip(missing, found) if ok is False]


def _on_hub(name: str) -> bool | None:
    """True / False: the hub has / has not this model; None: the hub did not answer."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(official_name(name), timeout=HUB_TIMEOUT_S)
    except GatedRepoError:  # exists; the download needs a token (checked at load time)
        return True
    except RepositoryNotFoundError:
        return False
    except Exception:  # no network, proxy, rate limit: cannot tell
        return None
    return True
