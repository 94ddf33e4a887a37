"""Real-model shapes, offline: tiny GPT-2, Llama (GQA) and Gemma-2 checkpoints with single-digit,
multi-digit and GPT-2 BPE tokenizers (tests/tiny_checkpoints.py), loaded from local folders through
fi.engine.models.load_model, then evaluated, attributed and ablated on addition and the cipher."""

from __future__ import annotations

import math

import pytest
import torch

from fi.engine.answers import AnswerTokenizationError, answer_token_ids, answer_vocabulary
from fi.engine.models import load_model
from fi.engine.pairs import build_patching_data
from fi.engine.patching import Patcher
from fi.engine.reference import reference_activation_patching, reference_path_patching
from fi.methods.ablation import ablated_scores
from fi.methods.evaluation import evaluate_task
from fi.plan.tasks import get_family
from tests.tiny_checkpoints import ARCHITECTURES, TOKENIZER_STYLES, boundary_merging_tokenizer, save_checkpoint

ADDITION, CIPHER = get_family("addition"), get_family("cipher")
PARAMS = {"n_examples": 6, "n_demos": 32, "seed": 42}
COMBOS = [(a, s) for a in ARCHITECTURES for s in TOKENIZER_STYLES]
IDS = [f"{a}-{s}" for a, s in COMBOS]
# (family, variant, shots): 3-digit sums (one token, or two, or three, by tokenizer) and 4-letter words
CELLS = [(ADDITION, "setting1_nmax999_offset3", 2), (CIPHER, "maxlen4_offset1", 2)]
# attribution needs answers whose first tokens differ: single digits
ATTRIBUTION_CELLS = [(ADDITION, "setting1_nmax9_offset1", 2), (CIPHER, "maxlen4_offset1", 2)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory):
    return tmp_path_factory.mktemp("real_models")


_LOADED: dict = {}


def loaded(root, arch: str, style: str):
    key = (arch, style)
    if key not in _LOADED:
        path = save_checkpoint(root / f"{arch}-{style}", arch, style)
        _LOADED[key] = load_model(f"tiny-{arch}-{style}", path=str(path), dtype="float32", device="cpu")
    return _LOADED[key]


@pytest.fixture(scope="module", params=COMBOS, ids=IDS)
def model(request, checkpoint_root):
    return loaded(checkpoint_root, *request.param)


def tok_ids(model, tokens: list[str]) -> list[int]:
    ids = model.tokenizer.convert_tokens_to_ids(tokens)
    assert model.tokenizer.unk_token_id is None or model.tokenizer.unk_token_id not in ids, tokens
    return ids


def vocab_tokens(model, vocab: torch.Tensor) -> set[str]:
    return set(model.tokenizer.convert_ids_to_tokens(vocab.tolist()))


# ---- answer tokens, per tokenizer style ----------------------------------------------------------

@pytest.mark.parametrize("style", TOKENIZER_STYLES)
def test_answer_tokens_are_what_the_tokenizer_says(checkpoint_root, style):
    m = loaded(checkpoint_root, "llama", style)
    cipher_prompt = " a b c -> b c d\n x y ->"
    if style == "single_digit":  # one token per digit, "▁x" letter pieces, "▁" on the text's start
        assert m.tokenizer.convert_ids_to_tokens(m.encode("12+3=")[1:]) == ["▁", "1", "2", "+", "3", "="]
        assert answer_token_ids(m, "12+3=", "123") == tok_ids(m, ["1", "2", "3"])
        assert answer_token_ids(m, cipher_prompt, " y z") == tok_ids(m, ["▁y", "▁z"])
    elif style == "multi_digit":  # digits in groups of up to three: "123" is one token
        assert answer_token_ids(m, "12+3=", "123") == tok_ids(m, ["123"])
        assert answer_token_ids(m, "12+3=", "4567") == tok_ids(m, ["456", "7"])
        assert answer_token_ids(m, cipher_prompt, " y z") == tok_ids(m, ["Ġy", "Ġz"])
    else:  # GPT-2 BPE: " 7" and "7" are different tokens; which numbers are one token is the merges'
        assert answer_token_ids(m, "1+2=", "7") == tok_ids(m, ["7"])
        assert answer_token_ids(m, "1+2=", " 7") == tok_ids(m, ["Ġ7"])
        assert answer_token_ids(m, "12+3=", "107") == tok_ids(m, ["107"])
        assert answer_token_ids(m, "12+3=", "123") == tok_ids(m, ["12", "3"])
        assert answer_token_ids(m, cipher_prompt, " y z") == tok_ids(m, ["Ġy", "Ġz"])
    # BOS comes first whatever the style
    assert m.encode("1+2=")[0] == m.tokenizer.bos_token_id


@pytest.mark.parametrize("style", TOKENIZER_STYLES)
@pytest.mark.parametrize("variant", ["setting1_nmax9_offset1", "setting1_nmax99_offset-3", "setting1_nmax999_offset3"])
def test_restricted_vocabulary_is_exactly_the_answer_tokens(checkpoint_root, style, variant):
    m = loaded(checkpoint_root, "llama", style)
    v = ADDITION.parse_variant(variant)
    space = ADDITION.answer_space(v)
    vocab = answer_vocabulary(m, "1+2=3\n4+5=", space)
    if style == "single_digit":
        expected = set("0123456789")
    elif style == "multi_digit":  # every answer is one token: the vocabulary is the answers
        expected = set(space)
    else:  # the BPE pieces of every answer: 1- and 2-digit numbers and the merged 3-digit ones
        expected = set()
        for a in space:
            expected |= set(m.tokenizer.convert_ids_to_tokens(m.tokenizer(a, add_special_tokens=False)["input_ids"]))
        if v.fields["nmax"] == 999:
            assert "107" in expected and "123" not in expected and "12" in expected
    assert vocab_tokens(m, vocab) == expected
    assert vocab.tolist() == sorted(vocab.tolist())


@pytest.mark.parametrize("style", TOKENIZER_STYLES)
def test_cipher_vocabulary_is_the_26_letter_tokens(checkpoint_root, style):
    m = loaded(checkpoint_root, "llama", style)
    v = CIPHER.parse_variant("maxlen4_offset1")
    vocab = answer_vocabulary(m, " a b -> b c\n x ->", CIPHER.answer_space(v))
    prefix = "▁" if style == "single_digit" else "Ġ"
    assert vocab_tokens(m, vocab) == {prefix + c for c in "abcdefghijklmnopqrstuvwxyz"}


# ---- evaluation, attribution, ablation on every architecture x tokenizer -------------------------

def expected_drops(model, family, v, records, shots):
    n = 0
    for ex in family.examples(records, v, shots):
        c_ids = model.encode(ex.contrast_prompt)
        normal, contrast = (answer_token_ids(model, ex.contrast_prompt, a, c_ids)
                            for a in (ex.normal_answer, ex.contrast_answer))
        never_differ = all(a == b for a, b in zip(normal, contrast))
        n += len(model.encode(ex.normal_prompt)) != len(c_ids) or never_differ
    return n


def patching_data(model, family=ADDITION, variant="setting1_nmax9_offset1", shots=2, n=6):
    v = family.parse_variant(variant)
    records = family.generate(v, {**PARAMS, "n_examples": n})
    data = build_patching_data(model, family, v, records, shots)
    assert data.n_dropped == expected_drops(model, family, v, records, shots)
    assert data.size + data.n_dropped == n
    return data


def on_ld_scale(a, b, patcher) -> float:
    """Largest difference of two normalised score maps on the logit-difference scale (normalised
    scores divide by LD_contrast - LD_normal, which is tiny for a random model)."""
    return float(((a - b) * abs(patcher.ld_contrast - patcher.ld_normal)).abs().max())


def test_evaluation_attribution_and_ablation_run(model):
    """Every stage on addition (3-digit sums: 1 to 3 answer tokens by tokenizer) and the cipher
    (4-letter words): right shapes, finite numbers."""
    for family, variant, shots in CELLS:
        v = family.parse_variant(variant)
        records = family.generate(v, PARAMS)
        df = evaluate_task(model, family, v, records, shots, batch_size=4)
        assert len(df) == PARAMS["n_examples"]
        for col in ("cf_correct", "orig_correct", "normal_correct", "normal_on_contrast_correct"):
            assert df[col].dtype == bool
        for col in ("normal_logit_diff", "contrast_logit_diff"):
            assert df[col].map(math.isfinite).all()
        assert df["contrast_answer"].tolist() == [e.contrast_answer for e in family.examples(records, v, shots)]
        ab = ablated_scores(model, family, v, records, shots, [(1, 0), (0, 3)], "patch", batch_size=4)
        # patch-from-base drops exactly the examples whose two prompts differ in token length
        # (BPE can split shifted numbers differently): their positions would not line up
        exs = family.examples(records, v, shots)
        aligned = [i for i, e in enumerate(exs)
                   if len(model.encode(e.normal_prompt)) == len(model.encode(e.contrast_prompt))]
        assert ab["example"].tolist() == aligned
        assert ab.shape[1] == df.shape[1] and ab["contrast_logit_diff"].map(math.isfinite).all()
        # patching from the normal run leaves the normal run alone
        kept = df.set_index("example").loc[aligned]
        assert torch.allclose(torch.tensor(ab["normal_logit_diff"].values),
                              torch.tensor(kept["normal_logit_diff"].values), atol=1e-5)
    for family, variant, shots in ATTRIBUTION_CELLS:
        data = patching_data(model, family, variant, shots)
        alone = Patcher(model, data, batch_size=3)
        attribution = alone.attribution_patching()  # before any cache
        # every architecture's LD is read from the residual, Gemma-2's with its logit soft-capping
        assert alone.route.residual_readout
        patcher = Patcher(model, data, batch_size=3, rows_per_pass=12)
        # sequential blocks, Gemma-2's post-attention / post-MLP norms included: the analytic run 1
        assert patcher.route.analytic_output_path
        for name, scores in {"path": patcher.path_patching("output"), "activation": patcher.activation_patching(),
                             "activation_query": patcher.activation_patching("query"),
                             "attribution": patcher.attribution_patching()}.items():
            assert scores.shape == (model.n_layers, model.n_heads), name
            assert torch.isfinite(scores).all(), name
        # attribution read from the final residual stream equals attribution from the full logits
        full_logits = Patcher(model, data, batch_size=3).with_route(residual_readout=False)
        assert on_ld_scale(full_logits.attribution_patching(), attribution, patcher) <= 1e-4
        assert on_ld_scale(scores, attribution, patcher) <= 1e-4


def per_example_loop(model, examples, vocab):
    """Unbatched: one forward pass per (contrast prompt, answer), restricted argmax per position."""
    cf, orig = [], []
    for ex in examples:
        prompt = model.encode(ex.contrast_prompt)
        for answer, out in ((ex.contrast_answer, cf), (ex.normal_answer, orig)):
            ans = answer_token_ids(model, ex.contrast_prompt, answer)
            with torch.no_grad():
                logits = model.bridge(torch.tensor([prompt + ans]))[0]
            pred = [int(vocab[logits[p, vocab].argmax()]) for p in range(len(prompt) - 1, len(prompt) - 1 + len(ans))]
            out.append(pred == ans)
    return cf, orig


@pytest.mark.parametrize("arch,style", [("llama", "multi_digit"), ("gpt2", "gpt2_bpe"), ("gemma2", "single_digit")])
def test_batched_scoring_equals_the_per_example_loop(checkpoint_root, arch, style):
    # answers of different token counts side by side in one padded batch ("107" one token, "123" two)
    m = loaded(checkpoint_root, arch, style)
    for family, variant, shots in CELLS:
        v = family.parse_variant(variant)
        records = family.generate(v, PARAMS)
        df = evaluate_task(m, family, v, records, shots, batch_size=4)
        examples = family.examples(records, v, shots)
        vocab = answer_vocabulary(m, examples[0].contrast_prompt, family.answer_space(v))
        cf, orig = per_example_loop(m, examples, vocab)
        assert df["cf_correct"].tolist() == cf and df["orig_correct"].tolist() == orig


def test_path_and_activation_patching_equal_the_references(model, monkeypatch):
    """Patcher against the paper's per-sender loops (fi.engine.reference) on every checkpoint, the analytic
    run 1 and the hooked one alike. On Gemma-2 the post-sublayer norms matter: an analytic run 1
    that left them out would be refused by the route's self-check, and would be wrong."""
    import fi.engine.route

    for family, variant, shots in ATTRIBUTION_CELLS:
        data = patching_data(model, family, variant, shots)
        patcher = Patcher(model, data, batch_size=4, rows_per_pass=12)
        assert patcher.route.analytic_output_path
        ref = reference_path_patching(model, data, "output", batch=6)
        assert on_ld_scale(patcher.path_patching("output"), ref, patcher) <= 1e-4
        hooked = patcher.with_route(analytic_output_path=False)
        assert on_ld_scale(hooked.path_patching("output"), ref, patcher) <= 1e-4
        if "gemma2" in model.name:
            with monkeypatch.context() as m:
                m.setattr(fi.engine.route, "_post_norm", lambda block, name: None)
                assert not Patcher(model, data, batch_size=4).route.analytic_output_path
                forced = patcher.with_route(analytic_output_path=True)
                assert on_ld_scale(forced.path_patching("output"), ref, patcher) > 1e-2
        ref = reference_activation_patching(model, data, None, batch=6)
        assert on_ld_scale(patcher.activation_patching(), ref, patcher) <= 1e-4


def test_route_probe_decides_as_the_first_chunks_runs(model, monkeypatch):
    """The route checks on a short probe (2 examples, 12 tokens: used where full logits are costly)
    decide what the checks on the first chunk's own runs decide, and the scores do not depend on
    which of the two ran."""
    import fi.engine.route
    from fi.engine.patching import cache_names
    from fi.engine.route import Route, checked_runs, decide_route

    data = patching_data(model)
    chunk_route = checked_runs(model, data.subset(slice(0, 4)), set(cache_names(model.n_layers)), True)[0]
    assert decide_route(model, data) == chunk_route == Route(residual_readout=True, analytic_output_path=True)
    scores = {}
    for cheap in (True, False):
        monkeypatch.setattr(fi.engine.route, "_full_logits_cheap", lambda m, cheap=cheap: cheap)
        patcher = Patcher(model, data, batch_size=4)
        scores[cheap] = patcher.path_patching("output"), patcher.ld_normal, patcher.ld_contrast
    assert on_ld_scale(scores[True][0], scores[False][0], patcher) <= 1e-4
    assert scores[True][1:] == pytest.approx(scores[False][1:], abs=1e-4)
    # with the probe, only the probe's two runs compute full logits
    shapes = []
    handle = model.bridge.unembed.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape[:2])))
    try:
        Patcher(model, data, batch_size=4).path_patching("output")
    finally:
        handle.remove()
    assert len(shapes) == 2 and all(rows <= 2 and tokens <= 12 for rows, tokens in shapes), shapes


def test_gemma2_path_patching_to_head_inputs_equals_the_reference(checkpoint_root):
    # grouped-query attention: head 3's key and head 2's value are shared kv heads 1
    m = loaded(checkpoint_root, "gemma2", "multi_digit")
    data = patching_data(m, n=4)
    patcher = Patcher(m, data, batch_size=4, rows_per_pass=16)
    for receiver in ("1.0.q", "1.3.k", "1.2.v"):
        ours, ref = patcher.path_patching(receiver), reference_path_patching(m, data, receiver, batch=4)
        assert on_ld_scale(ours, ref, patcher) <= 1e-4, receiver


@pytest.mark.parametrize("arch,style", [("gemma2", "single_digit"), ("gpt2", "gpt2_bpe")])
def test_ablation_modes(checkpoint_root, arch, style):
    m = loaded(checkpoint_root, arch, style)
    family, variant, shots = CELLS[0]
    v = family.parse_variant(variant)
    records = family.generate(v, PARAMS)
    base = evaluate_task(m, family, v, records, shots)
    heads = [(1, 0), (0, 3)]
    for mode in ("mean", "zero"):
        df = ablated_scores(m, family, v, records, shots, heads, mode, batch_size=4)
        assert len(df) == PARAMS["n_examples"] and df["contrast_logit_diff"].map(math.isfinite).all()
        # mean and zero ablation change the normal runs too (seen where the first tokens differ)
        differ = base["normal_logit_diff"] != 0
        assert not differ.any() or not df["normal_logit_diff"][differ].equals(base["normal_logit_diff"][differ])


@pytest.mark.parametrize("style", TOKENIZER_STYLES)
def test_patching_drops_misaligned_examples_and_counts_them(checkpoint_root, style):
    # 3-digit sums: GPT-2 BPE gives "107" one token and "110" two, so the normal and contrast
    # prompts can differ in length; one token per digit makes a+b and a+b+3 start alike, and they
    # are read at their first differing digit, after the shared ones
    m = loaded(checkpoint_root, "llama", style)
    v = ADDITION.parse_variant("setting1_nmax999_offset3")
    records = ADDITION.generate(v, {**PARAMS, "n_examples": 24})
    examples = ADDITION.examples(records, v, 2)
    lengths_differ = sum(len(m.encode(e.normal_prompt)) != len(m.encode(e.contrast_prompt)) for e in examples)
    assert (lengths_differ > 0) == (style == "gpt2_bpe")
    data = build_patching_data(m, ADDITION, v, records, 2)
    assert data.n_dropped == expected_drops(m, ADDITION, v, records, 2) and data.size + data.n_dropped == 24
    if style == "gpt2_bpe":
        assert data.n_dropped == lengths_differ and data.size > 0
    else:  # one token per digit or per answer: nothing to drop
        assert data.n_dropped == 0
    if style == "single_digit":  # most answers share their leading digits: prompts go on with them
        assert (data.last > data.contrast.ne(m.pad_id).sum(1) - 1).sum() == 0  # last is the last real token
        digits = set(m.tokenizer.convert_tokens_to_ids(list("0123456789")))
        shared = [i for i, e in enumerate(examples[:24]) if str(e.normal_answer)[0] == str(e.contrast_answer)[0]]
        assert shared and all(int(data.contrast[i, data.last[i]]) in digits for i in shared)


# ---- loading: dtypes, offline, errors naming the model -------------------------------------------

@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_models_evaluate_and_attribute(checkpoint_root, dtype):
    path = checkpoint_root / "gemma2-single_digit"
    loaded(checkpoint_root, "gemma2", "single_digit")  # saved
    m = load_model(f"tiny-gemma2-{dtype}", path=str(path), dtype=dtype, device="cpu")
    assert m.dtype == getattr(torch, dtype)
    assert {p.dtype for p in m.bridge.parameters()} == {getattr(torch, dtype)}
    family, variant, shots = CELLS[1]
    v = family.parse_variant(variant)
    df = evaluate_task(m, family, v, family.generate(v, PARAMS), shots)
    assert df["contrast_logit_diff"].map(math.isfinite).all()
    patcher = Patcher(m, patching_data(m), batch_size=6)
    assert torch.isfinite(patcher.path_patching("output")).all()


def test_local_folders_load_offline_and_bad_ones_name_the_model(checkpoint_root, tmp_path, monkeypatch):
    from fi.engine.models import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded(checkpoint_root, "llama", "single_digit")
    m = load_model("offline", path=str(checkpoint_root / "llama-single_digit"), device="auto")
    assert m.device in ("cpu", "cuda", "mps") and m.n_heads == 4
    with pytest.raises(ModelLoadError, match=r"model 'gone': checkpoint folder .* does not exist"):
        load_model("gone", path=str(tmp_path / "gone"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="model 'empty': .* has no weights"):
        load_model("empty", path=str(tmp_path))
    with pytest.raises(ModelLoadError, match="model 'no-such-org/no-such-model': could not load"):
        load_model("no-such-org/no-such-model", device="cpu")
    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        load_model("x", path=str(tmp_path), dtype="float8")


# ---- tokenizers that do not fit: clear errors and counted drops ----------------------------------

@pytest.fixture(scope="module")
def merging_model(checkpoint_root):
    path = save_checkpoint(checkpoint_root / "merging", "llama", "boundary", tokenizer=boundary_merging_tokenizer())
    return load_model("tiny-merging", path=str(path), device="cpu")


def test_evaluation_names_the_strings_when_the_answer_merges_into_the_prompt(merging_model):
    assert merging_model.tokenizer.tokenize("1+2=3")[-1] == "=3"
    v = ADDITION.parse_variant("setting1_nmax9_offset1")
    with pytest.raises(AnswerTokenizationError) as err:
        evaluate_task(merging_model, ADDITION, v, ADDITION.generate(v, PARAMS), 2)
    msg = str(err.value)
    assert "tiny-merging" in msg and "does not tokenize separately" in msg and "=" in msg


def test_patching_drops_examples_whose_answer_merges_and_counts_them(merging_model):
    v = ADDITION.parse_variant("setting1_nmax9_offset1")
    with pytest.raises(ValueError, match=r"nothing to patch.*6 of 6 examples dropped"):
        build_patching_data(merging_model, ADDITION, v, ADDITION.generate(v, PARAMS), 2)
    # the cipher's answers start with a space, which this tokenizer never merges: nothing dropped
    c = CIPHER.parse_variant("maxlen1_offset1")
    data = build_patching_data(merging_model, CIPHER, c, CIPHER.generate(c, PARAMS), 2)
    assert data.n_dropped == 0 and data.size == 6


def test_evaluation_rejects_answers_tokenized_differently_after_the_two_prompts(checkpoint_root):
    # GPT-2 BPE without digit splitting: an answer glued to the prompt's last token tokenizes with it
    m = loaded(checkpoint_root, "gpt2", "gpt2_bpe")
    from fi.methods.evaluation import encode_examples
    from fi.plan.tasks import Example

    ex = Example(normal_prompt="1+2=3\n4+5=", contrast_prompt="1+2=4\n4+5=1", normal_answer="0",
                 contrast_answer="1")
    with pytest.raises((ValueError, AnswerTokenizationError), match=r"answer '.' "):
        encode_examples(m, [ex])


# ---- the whole workflow on a local checkpoint folder ---------------------------------------------

@pytest.mark.slow
def test_snakemake_on_a_local_gpt2_checkpoint(tmp_path):
    """The real Snakefile on a tiny GPT-2 (GPT-2 BPE tokenizer) saved to a folder: datasets,
    evaluation, attribution + discovery, head types, ablation, tables, plots and the parity target."""
    import pandas as pd

    from tests.workflow_helpers import snakemake, write_config

    ckpt = save_checkpoint(tmp_path / "ckpt" / "gpt2", "gpt2", "gpt2_bpe")
    work = tmp_path / "work"
    write_config(work, {
        "models": {"local-gpt2": {"path": str(ckpt), "device": "cpu", "batch_size": 8}},
        "tasks": {"addition": {"settings": ["setting1"], "nmax": [9], "offsets": [1], "n_examples": 4}},
        "shots": [1, 2],
        "discovery": {"cell": {"task": "addition", "variant": "setting1_nmax9_offset1", "shots": 2}, "top_k": 2},
        "attribution": {"max_examples": 4, "position_groups": False},
        "head_types": {"n_seqs": 4},
        "ablation": {"shots": [2], "n_random": 1},
        "min_ld_gap": 0.0,  # a random model: its gaps are noise (the guard: tests/test_ld_gap.py)
    })
    snakemake(work, "all", "results/tables/parity.csv")
    acc = pd.read_parquet(work / "results/tables/accuracy.parquet")
    assert len(acc) == 2 and set(acc["shots"]) == {1, 2}
    assert (acc["model"] == "local-gpt2").all() and (acc["n"] == 4).all()
    assert len(pd.read_parquet(work / "results/tables/predictions.parquet")) == 8
    heads = pd.read_parquet(work / "results/tables/head_attribution.parquet")
    assert set(heads["method"]) == {"path", "activation", "attribution"} and heads["fi_head"].sum() == 2 * 3
    ablation = pd.read_parquet(work / "results/tables/ablation.parquet")
    assert set(ablation["head_set"]) == {"none", "fi", "random"}
    parity_table = pd.read_csv(work / "results/tables/parity.csv")
    assert list(parity_table["model"]) == ["local-gpt2"]
    assert parity_table["max_abs_diff"].iloc[0] < 1e-4 and parity_table["argmax_agreement"].iloc[0] == 1.0
    assert (work / "results/plots/accuracy_addition.png").exists()
    assert not (work / "results/models").exists()  # nothing trained: the checkpoint is used as it is
