"""The built-in model's training data and its determinism."""

import random
import re
import string

from safetensors.torch import load_file

from fi.build.training import build_tokenizer, letter_shift_sequence, make_batch, repeated_tokens_sequence, train_model
from fi.plan.tasks import get_family
from tests.conftest import tiny_train_cfg

LETTERS = string.ascii_lowercase


def _items(segs):
    """(input letters, output letters) per item of a letter_shift sequence."""
    out = []
    for (src, src_target), (dst, dst_target) in zip(segs[::2], segs[1::2]):
        assert not src_target and dst_target  # the loss is on outputs only
        assert src.endswith(" ->") and dst.endswith("\n")
        out.append((src[:-3].split(), dst.split()))
    return out


def test_letter_shift_outputs_are_the_inputs_shifted_by_one_k():
    for seed in range(20):
        cfg = tiny_train_cfg(items=9, max_word_len=3, max_offset=2, p_zero=0.2)
        items = _items(letter_shift_sequence(random.Random(seed), cfg))
        shifts = {(LETTERS.index(d) - LETTERS.index(s)) % 26 for src, dst in items for s, d in zip(src, dst)}
        assert len(shifts) == 1 and shifts <= {0, 1, 2, 24, 25}  # one k per sequence, |k| <= 2
        assert all(len(src) == len(dst) >= 1 and len(src) <= 3 for src, dst in items)


def test_a_told_sequence_states_its_own_shift_and_told_shift_0_draws_the_same_data():
    """`told_shift` opens that share of letter_shift sequences with their shift (`+2:`), which the
    items then follow; at 0 (the schema's default) no draw is made, so a recipe without it trains on
    exactly the data it trained on before the option existed."""
    told = 0
    for seed in range(40):
        segs = letter_shift_sequence(random.Random(seed), tiny_train_cfg(items=9, max_word_len=1, told_shift=0.5))
        if segs[0][0].endswith(":\n"):
            told += 1
            assert segs[0][1] is False  # the statement carries no loss
            k = int(segs[0][0][:-2])
            items = _items(segs[1:])
            assert {(LETTERS.index(d[0]) - LETTERS.index(s[0])) % 26 for s, d in items} == {k % 26}
        else:
            _items(segs)
    assert 10 <= told <= 30
    tok = build_tokenizer()
    plain = tiny_train_cfg(mix={"addition": 0.5, "letter_shift": 0.5, "repeated_tokens": 0.0}, max_word_len=1)
    assert "told_shift" not in plain or plain["told_shift"] == 0
    without = make_batch(random.Random(3), {k: v for k, v in plain.items() if k != "told_shift"}, tok, 16)
    at_zero = make_batch(random.Random(3), {**plain, "told_shift": 0.0}, tok, 16)
    assert all((a == b).all() for a, b in zip(without, at_zero))


def test_letter_shift_never_repeats_a_letter_before_all_26_are_used():
    """A repeated input could be answered by looking it up among earlier items, which teaches
    copying by induction instead of shifting; the cipher prompts' query never repeats a demo."""
    for seed in range(20):
        items = _items(letter_shift_sequence(random.Random(seed), tiny_train_cfg(items=26, max_word_len=1)))
        letters = [src[0] for src, _ in items]
        assert sorted(letters) == list(LETTERS)


def test_letter_shift_lines_are_the_cipher_prompt_lines():
    """Training lines are in the one-letter cipher prompts' format, demo lines and query alike."""
    family = get_family("cipher")
    variant = family.parse_variant("maxlen1_offset1")
    records = family.generate(variant, {"n_examples": 1, "n_demos": 4, "seed": 42})
    example = family.examples(records, variant, 4)[0]
    line = re.compile(r" [a-z] -> [a-z]")
    *demos, query = example.contrast_prompt.split("\n")
    assert all(line.fullmatch(d) for d in demos) and line.fullmatch(query + example.contrast_answer)
    segs = letter_shift_sequence(random.Random(0), tiny_train_cfg(items=5, max_word_len=1))
    text = "".join(t for t, _ in segs)
    assert all(line.fullmatch(t) for t in text.rstrip("\n").split("\n"))


def test_batches_mask_only_the_outputs():
    tok = build_tokenizer()
    cfg = tiny_train_cfg(mix={"addition": 0.5, "letter_shift": 0.5, "repeated_tokens": 0.0}, max_word_len=1)
    tokens, mask = make_batch(random.Random(0), cfg, tok, 8)
    assert tokens.shape == mask.shape and not mask[:, 0].any()
    for row, m in zip(tokens, mask):
        text = tok.decode(row[m])
        assert set(text) <= set(string.digits + LETTERS + " \n-") and "+" not in text and ">" not in text


def test_training_is_deterministic_for_a_fixed_seed(tmp_path):
    cfg = tiny_train_cfg(mix={"addition": 0.5, "letter_shift": 0.5, "repeated_tokens": 0.0})
    weights = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_model(dict(cfg, seed=seed), tmp_path / name, threads=1, progress=False)
        weights.append(load_file(tmp_path / name / "model.safetensors"))
    same = all((weights[0][k] == weights[1][k]).all() for k in weights[0])
    differs = any((weights[0][k] != weights[2][k]).any() for k in weights[0])
    assert same and differs


def test_repeated_strings_vary_in_length_only_when_given_a_range():
    """At one fixed length the copy can be predicted from position alone (look back that far); a range
    makes matching the current token the only way, which is what an induction head does. A fixed
    length draws nothing more, so configs written for it keep their training data."""
    fixed = [repeated_tokens_sequence(random.Random(s), tiny_train_cfg(repeat_len=12)) for s in range(30)]
    assert {len(first) for (first, _), _ in fixed} == {12}
    for (first, first_target), (copy, copy_target) in fixed:
        assert first == copy and not first_target and copy_target  # the loss is on the copy only
    ranged = [repeated_tokens_sequence(random.Random(s), tiny_train_cfg(repeat_len=[4, 16])) for s in range(30)]
    lengths = {len(first) for (first, _), _ in ranged}
    assert lengths <= set(range(4, 17)) and len(lengths) >= 8
    assert all(first == copy for (first, _), (copy, _) in ranged)
    for seed, ((first, _), _) in enumerate(fixed):  # a fixed length: the strings drawn before ranges existed
        assert first == "".join(random.Random(seed).choices(string.digits + LETTERS, k=12))
