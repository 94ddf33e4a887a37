"""Task families: exact reproduction of the paper's released data, variant names, prompts."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest

from fi.io import read_jsonl, write_jsonl
from fi.plan import tasks
from fi.plan.tasks import FAMILIES, Example, get_family

REFERENCE = Path(os.environ.get(
    "FI_REFERENCE_DIR",
    Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "function-induction"))
DATA = REFERENCE / "data"

PAPER_PARAMS = {"n_examples": 100, "n_demos": 32, "seed": 42}

# The paper's config slices (the grids the released files were generated from).
PAPER_CFG = {
    "addition": {"settings": ["normal", "setting1", "setting2"], "nmax": [9, 99, 999],
                 "offsets": list(range(-10, 11)), **PAPER_PARAMS},
    "cipher": {"maxlen": [1, 4], "offsets": list(range(-12, 14)), **PAPER_PARAMS},
    "base_addition": {"settings": ["normal", "setting1", "setting2", "setting3"],
                      "ndigits": [2, 3], "bases": [6, 7, 8, 9], **PAPER_PARAMS},
}

# family -> (glob under DATA, function from a file path to the variant name)
REFERENCE_LAYOUT = {
    "addition": ("addition/*/addition_*.jsonl",
                 lambda p: f"{p.parent.name}_{p.stem.removeprefix('addition_')}"),
    "cipher": ("cipher/normal/cipher_*.jsonl", lambda p: p.stem.removeprefix("cipher_")),
    "base_addition": ("addition_base/*/addition_*.jsonl",
                      lambda p: f"{p.parent.name}_{p.stem.removeprefix('addition_')}"),
}
EXPECTED_FILE_COUNTS = {"addition": 141, "cipher": 52, "base_addition": 32}


def _reference_params():
    params = []
    for family, (pattern, _) in REFERENCE_LAYOUT.items():
        files = sorted(DATA.glob(pattern)) if DATA.is_dir() else []
        if not files:
            params.append(pytest.param(family, None, id=f"{family}-missing"))
        params += [pytest.param(family, f, id=str(f.relative_to(DATA))) for f in files]
    return params


# --------------------------------------------------------------------------------------------
# Released data, byte for byte
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family_name,path", _reference_params())
def test_generator_reproduces_released_file(family_name, path, tmp_path):
    if path is None:
        pytest.skip(f"no released {family_name} data under {DATA} (set FI_REFERENCE_DIR)")
    family = get_family(family_name)
    variant = family.parse_variant(REFERENCE_LAYOUT[family_name][1](path))
    records = family.generate(variant, family.generation_params(PAPER_CFG[family_name]))
    out = tmp_path / "out.jsonl"
    write_jsonl(records, out)
    assert out.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("family_name", sorted(REFERENCE_LAYOUT))
def test_paper_grid_matches_released_files(family_name):
    """Every variant of the paper's config has a released file and vice versa."""
    pattern, to_name = REFERENCE_LAYOUT[family_name]
    files = sorted(DATA.glob(pattern)) if DATA.is_dir() else []
    if not files:
        pytest.skip(f"no released {family_name} data under {DATA}")
    assert len(files) == EXPECTED_FILE_COUNTS[family_name]
    names = {v.name for v in get_family(family_name).variants(PAPER_CFG[family_name])}
    assert names == {to_name(p) for p in files}


# --------------------------------------------------------------------------------------------
# Registry and variant names
# --------------------------------------------------------------------------------------------

def _mmlu_cfg(path="unused"):
    return {"path": str(path), "split": "test", "subjects": [], "offsets": [1, -1, 0, 2],
            "n_examples": 100, "n_demos": 32, "seed": 42}


ALL_CFGS = {**PAPER_CFG, "mmlu": _mmlu_cfg()}


def test_registry():
    assert set(FAMILIES) >= {"addition", "cipher", "base_addition", "mmlu"}
    for name, family in FAMILIES.items():
        assert family.name == name
        assert get_family(name) is family
    with pytest.raises(ValueError, match="unknown task family"):
        get_family("nope")


@pytest.mark.parametrize("family_name", sorted(ALL_CFGS))
def test_variant_names_round_trip(family_name):
    family = get_family(family_name)
    variants = family.variants(ALL_CFGS[family_name])
    assert variants and len({v.name for v in variants}) == len(variants)
    for v in variants:
        assert re.fullmatch(r"[A-Za-z0-9_\-]+", v.name), v.name
        assert v.family == family_name
        assert tuple(v.fields) == family.columns
        parsed = family.parse_variant(v.name)
        assert parsed == v and parsed.fields == v.fields


BAD_NAMES = {
    "cipher": ["", "maxlen4", "maxlen0_offset1", "maxlen04_offset1", "maxlen4_offset+1",
               "maxlen4_offset-0", "maxlen4_offset1/..", "maxlen4_offset1 ", "setting1_maxlen4_offset1"],
    "base_addition": ["", "setting4_ndigits2_base7", "setting1_ndigits2_base11", "setting1_ndigits2_base1",
                      "setting1_ndigits0_base7", "setting1_ndigits2", "setting1_ndigits2_base7.jsonl",
                      "ndigits2_base7", "Setting1_ndigits2_base7"],
    "mmlu": ["", "offset", "offset1_x", "offset+1", "offset-0", "offset01", "1", "offset1/"],
    "addition": ["setting3_nmax9_offset1", "normal_nmax10_offset1", "normal_nmax9"],
}


@pytest.mark.parametrize("family_name,name",
                         [(f, n) for f, names in BAD_NAMES.items() for n in names])
def test_bad_variant_names_raise(family_name, name):
    with pytest.raises(ValueError):
        get_family(family_name).parse_variant(name)


def test_negative_offsets_round_trip():
    for family_name, name in [("cipher", "maxlen4_offset-12"), ("mmlu", "offset-1"),
                              ("addition", "setting2_nmax99_offset-10")]:
        v = get_family(family_name).parse_variant(name)
        assert v.name == name and v.fields["offset"] < 0


# --------------------------------------------------------------------------------------------
# Addition (reference family): setting constraints
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting", ["normal", "setting1", "setting2"])
def test_addition_setting_constraints(setting):
    records = tasks.generate_addition(setting, 99, 3)
    for r in records:
        q, demos = r["inference"], r["demonstration"]
        assert len(demos) == 32
        assert q not in demos
        if setting == "setting1":
            assert all(sum(d) != sum(q) for d in demos)
        if setting == "setting2":
            assert sum(q) in {sum(d) for d in demos}


def test_addition_prompts():
    family = get_family("addition")
    v = family.parse_variant("normal_nmax99_offset2")
    [ex] = family.examples([{"demonstration": [[1, 2], [10, 20]], "inference": [3, 4]}], v, 2)
    assert ex == Example("1+2=3\n10+20=30\n3+4=", "1+2=5\n10+20=32\n3+4=", "7", "9")


# --------------------------------------------------------------------------------------------
# Cipher
# --------------------------------------------------------------------------------------------

def test_caesar_shift():
    assert tasks.caesar_shift("abc", 1) == "bcd"
    assert tasks.caesar_shift("xyz", 3) == "abc"
    assert tasks.caesar_shift("abc", -1) == "zab"
    assert tasks.caesar_shift("hello", 13) == "uryyb"
    assert tasks.caesar_shift("hello", 0) == "hello"
    assert tasks.caesar_shift(tasks.caesar_shift("qahf", -12), 12) == "qahf"


def test_cipher_prompts_hand_checked():
    family = get_family("cipher")
    v = family.parse_variant("maxlen2_offset1")
    record = {"demonstration": [["ab", "bc"], ["zz", "aa"]], "inference": ["cd", "de"]}
    [ex] = family.examples([record], v, 2)
    assert ex.normal_prompt == " a b -> a b\n z z -> z z\n c d ->"
    assert ex.contrast_prompt == " a b -> b c\n z z -> a a\n c d ->"
    assert ex.normal_answer == " c d"
    assert ex.contrast_answer == " d e"
    [one] = family.examples([record], v, 1)
    assert one.normal_prompt == " a b -> a b\n c d ->"
    assert one.contrast_prompt == " a b -> b c\n c d ->"
    [zero] = family.examples([record], v, 0)
    assert zero.normal_prompt == zero.contrast_prompt == " c d ->"


@pytest.mark.parametrize("maxlen,offset", [(1, -3), (4, 1), (4, 13), (3, 25)])
def test_cipher_generated_records(maxlen, offset):
    family = get_family("cipher")
    v = family.parse_variant(f"maxlen{maxlen}_offset{offset}")
    records = family.generate(v, {"n_examples": 30, "n_demos": 32, "seed": 7})
    assert len(records) == 30
    letters = set(family.answer_space(v))
    assert letters == {f" {c}" for c in "abcdefghijklmnopqrstuvwxyz"}
    for r, ex in zip(records, family.examples(records, v, 32)):
        words = [w for w, _ in r["demonstration"]]
        assert len(words) == 32
        assert all(len(w) == maxlen and s == tasks.caesar_shift(w, offset)
                   for w, s in r["demonstration"])
        q, shifted = r["inference"]
        assert q not in words and shifted == tasks.caesar_shift(q, offset)
        assert ex.normal_answer == tasks.spaced_letters(q)
        assert ex.contrast_answer == tasks.spaced_letters(tasks.caesar_shift(q, offset))
        assert ex.normal_prompt.endswith(f"{tasks.spaced_letters(q)} ->")
        assert ex.normal_prompt.count("\n") == 32
        for answer in (ex.normal_answer, ex.contrast_answer):
            assert {f" {c}" for c in answer.split()} <= letters


def test_cipher_generation_is_seeded():
    a = tasks.generate_cipher(4, 1, n_examples=5, seed=1)
    assert a == tasks.generate_cipher(4, 1, n_examples=5, seed=1)
    assert a != tasks.generate_cipher(4, 1, n_examples=5, seed=2)
    with pytest.raises(ValueError):
        tasks.generate_cipher(0, 1)


def test_cipher_check():
    family = get_family("cipher")
    assert family.check({**PAPER_CFG["cipher"], "shots_max": 32}) == []
    assert family.check({**PAPER_CFG["cipher"], "shots_max": 64})
    assert family.check({**PAPER_CFG["cipher"], "maxlen": [0]})


# --------------------------------------------------------------------------------------------
# Base-k addition
# --------------------------------------------------------------------------------------------

def test_to_base():
    assert tasks.to_base(0, 7) == "0"
    assert tasks.to_base(12, 7) == "15"
    assert tasks.to_base(25, 7) == "34"
    assert tasks.to_base(215, 6) == "555"
    assert tasks.to_base(255, 2) == "11111111"
    assert tasks.to_base(99, 10) == "99"
    with pytest.raises(ValueError):
        tasks.to_base(5, 11)


def test_base_addition_prompts_hand_checked():
    family = get_family("base_addition")
    v = family.parse_variant("normal_ndigits2_base7")
    # 12 = "15"_7, 13 = "16"_7: base 7 gives 25 = "34"_7, decimal 15+16 = 31.
    record = {"demonstration": [[12, 13], [7, 8]], "inference": [13, 13]}
    [ex] = family.examples([record], v, 2)
    assert ex.contrast_prompt == "15+16=34\n10+11=21\n16+16="
    assert ex.normal_prompt == "15+16=31\n10+11=21\n16+16="
    assert ex.contrast_answer == "35"  # 26 in base 7
    assert ex.normal_answer == "32"    # 16 + 16 in decimal
    [zero] = family.examples([record], v, 0)
    assert zero.normal_prompt == zero.contrast_prompt == "16+16="


@pytest.mark.parametrize("setting", tasks.BASE_ADDITION_SETTINGS)
@pytest.mark.parametrize("ndigits,base", [(2, 6), (2, 9), (3, 7), (3, 8)])
def test_base_addition_constraints(setting, ndigits, base):
    family = get_family("base_addition")
    v = family.parse_variant(f"{setting}_ndigits{ndigits}_base{base}")
    records = family.generate(v, PAPER_PARAMS)
    cmin, cmax = tasks.base_addition_range(ndigits, base)
    space = set(family.answer_space(v))
    for r, ex in zip(records, family.examples(records, v, 32)):
        q, demos = r["inference"], r["demonstration"]
        assert len(demos) == 32 and q not in demos
        for a, b in demos + [q]:
            assert cmin <= a and cmin <= b and a + b <= cmax
            assert all(len(tasks.to_base(x, base)) == ndigits for x in (a, b, a + b))
        c0 = q[0] % base + q[1] % base
        if setting == "setting1":
            assert c0 < base
        elif setting == "setting2":
            assert base <= c0 < 10
        elif setting == "setting3":
            assert c0 >= 10
        assert ex.contrast_answer == tasks.to_base(sum(q), base)
        assert ex.normal_answer == str(int(tasks.to_base(q[0], base)) + int(tasks.to_base(q[1], base)))
        assert ex.normal_answer in space and ex.contrast_answer in space
        if setting == "setting1":  # no carry out of the last digit: the last digits agree
            assert ex.normal_answer[-1] == ex.contrast_answer[-1]
        elif setting == "setting2":  # a carry in base k only: the last digits differ
            assert ex.normal_answer[-1] != ex.contrast_answer[-1]


def test_base_addition_answer_space_is_exact():
    # ndigits 1, base 6: a, b in 1..5 with a + b <= 5; decimal and base-6 answers.
    v = get_family("base_addition").parse_variant("normal_ndigits1_base6")
    assert get_family("base_addition").answer_space(v) == ["2", "3", "4", "5"]
    v = get_family("base_addition").parse_variant("setting3_ndigits2_base6")
    space = get_family("base_addition").answer_space(v)
    assert "1010" not in space and all(s.isdigit() for s in space)


def test_base_addition_infeasible():
    assert tasks.base_addition_problems("setting2", 2, 10)      # base <= c0 < 10 impossible
    assert tasks.base_addition_problems("setting3", 2, 5)       # c0 <= 8 < 10
    assert tasks.base_addition_problems("normal", 4, 6)         # 2 * 1000 > 6**4 - 1
    assert tasks.base_addition_problems("setting1", 2, 11)
    assert tasks.base_addition_problems("normal", 2, 7) == []
    with pytest.raises(ValueError, match="impossible"):
        tasks.generate_base_addition("setting2", 2, 10)
    family = get_family("base_addition")
    assert family.check({**PAPER_CFG["base_addition"], "shots_max": 32}) == []
    errors = family.check({**PAPER_CFG["base_addition"], "bases": [10], "shots_max": 64})
    assert any("setting2" in e for e in errors) and any("n_demos" in e for e in errors)


# --------------------------------------------------------------------------------------------
# Shifted MMLU (a tiny fixture in the hendrycks layout)
# --------------------------------------------------------------------------------------------

def _write_csv(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def _rows(subject, n, split):
    return [[f"{subject} {split} q{i}?", f"{subject} a{i}", f"{subject} b{i}", f"{subject} c{i}",
             f"{subject} d{i}", "ABCD"[i % 4]] for i in range(n)]


@pytest.fixture
def mmlu_dir(tmp_path):
    root = tmp_path / "mmlu"
    for subject in ("astronomy", "virology"):
        _write_csv(root / "test" / f"{subject}_test.csv", _rows(subject, 6, "test"))
        _write_csv(root / "dev" / f"{subject}_dev.csv", _rows(subject, 3, "dev"))
    # quoting: comma, quote and newline inside a field
    _write_csv(root / "test" / "astronomy_test.csv",
               _rows("astronomy", 6, "test") + [['Is "x", y\nz?', "1", "2", "3", "4", "D"]])
    (root / "test" / "README.txt").write_text("not a subject\n")
    return root


def _mmlu_params(path, **kw):
    return get_family("mmlu").generation_params({**_mmlu_cfg(path), "n_examples": 5,
                                                 "n_demos": 4, **kw})


def test_mmlu_reading(mmlu_dir):
    assert tasks.mmlu_subjects(mmlu_dir, "test") == ["astronomy", "virology"]
    items = tasks.read_mmlu_split(mmlu_dir, "test")
    assert len(items) == 13
    assert items[6] == {"question": 'Is "x", y\nz?', "choices": ["1", "2", "3", "4"],
                        "answer": "D", "subject": "astronomy"}
    only = tasks.read_mmlu_split(mmlu_dir, "test", ["virology"])
    assert len(only) == 6 and {i["subject"] for i in only} == {"virology"}


def test_mmlu_generate_with_dev(mmlu_dir, tmp_path):
    family = get_family("mmlu")
    v = family.parse_variant("offset1")
    records = family.generate(v, _mmlu_params(mmlu_dir))
    assert len(records) == 5
    queries = [r["inference"]["question"] for r in records]
    assert len(set(queries)) == 5
    for r in records:
        assert len(r["demonstration"]) == 4
        assert all(" dev " in d["question"] for d in r["demonstration"])  # demos from dev/
        assert len({d["question"] for d in r["demonstration"]}) == 4
        assert " test " in r["inference"]["question"] or r["inference"]["answer"] == "D"
    assert records == family.generate(v, _mmlu_params(mmlu_dir))          # seeded
    assert records != family.generate(v, _mmlu_params(mmlu_dir, seed=1))
    # records survive the jsonl round trip
    write_jsonl(records, tmp_path / "m.jsonl")
    assert read_jsonl(tmp_path / "m.jsonl") == records


def test_mmlu_generate_without_dev(mmlu_dir):
    import shutil
    shutil.rmtree(mmlu_dir / "dev")
    family = get_family("mmlu")
    v = family.parse_variant("offset1")
    records = family.generate(v, _mmlu_params(mmlu_dir, n_examples=100, n_demos=12))
    assert len(records) == 13                     # capped at the number of questions
    for r in records:
        qs = [d["question"] for d in r["demonstration"]]
        assert len(qs) == 12 and len(set(qs)) == 12
        assert r["inference"]["question"] not in qs   # 13 questions, 12 demos: all but the query
    with pytest.raises(ValueError, match="demos"):
        family.generate(v, _mmlu_params(mmlu_dir, n_demos=13))


def test_mmlu_dev_too_small_falls_back_to_split(mmlu_dir):
    records = get_family("mmlu").generate(
        get_family("mmlu").parse_variant("offset1"), _mmlu_params(mmlu_dir, n_demos=7))
    for r in records:
        assert all(" dev " not in d["question"] for d in r["demonstration"])
        assert r["inference"] not in r["demonstration"]


def test_mmlu_prompts_and_shift():
    family = get_family("mmlu")

    def item(q, ans):
        return {"question": q, "choices": ["w", "x", "y", "z"], "answer": ans}

    record = {"demonstration": [item("d1", "A"), item("d2", "D")], "inference": item("q", "C")}
    [ex] = family.examples([record], family.parse_variant("offset1"), 2)
    block = "Question: {}\n(A) w\n(B) x\n(C) y\n(D) z\nAnswer: ({}"
    assert ex.normal_prompt == "\n\n".join([block.format("d1", "A)"), block.format("d2", "D)"),
                                            block.format("q", "")])
    assert ex.contrast_prompt == "\n\n".join([block.format("d1", "B)"), block.format("d2", "A)"),
                                              block.format("q", "")])
    assert ex.normal_prompt.endswith("Answer: (")
    assert (ex.normal_answer, ex.contrast_answer) == ("C", "D")
    [neg] = family.examples([record], family.parse_variant("offset-1"), 1)
    assert neg.contrast_prompt.startswith(block.format("d1", "D)"))
    assert (neg.normal_answer, neg.contrast_answer) == ("C", "B")
    [two] = family.examples([record], family.parse_variant("offset2"), 0)
    assert two.normal_prompt == two.contrast_prompt == block.format("q", "")
    assert (two.normal_answer, two.contrast_answer) == ("C", "A")
    assert family.answer_space(family.parse_variant("offset1")) == ["A", "B", "C", "D"]
    assert [tasks.shift_letter(x, 1) for x in "ABCD"] == list("BCDA")


def test_mmlu_generated_examples(mmlu_dir):
    family = get_family("mmlu")
    v = family.parse_variant("offset1")
    records = family.generate(v, _mmlu_params(mmlu_dir))
    for r, ex in zip(records, family.examples(records, v, 4)):
        assert ex.normal_answer == r["inference"]["answer"]
        assert ex.contrast_answer == "ABCD"["ABCD".index(ex.normal_answer) - 3]
        assert ex.normal_prompt.count("Question: ") == 5
        for d in r["demonstration"]:
            assert f"{d['question']}\n" in ex.contrast_prompt


def test_mmlu_missing_paths(tmp_path, mmlu_dir):
    family = get_family("mmlu")
    v = family.parse_variant("offset1")
    missing = tmp_path / "no_such_mmlu"
    with pytest.raises(FileNotFoundError, match="no_such_mmlu"):
        family.generate(v, _mmlu_params(missing))
    with pytest.raises(FileNotFoundError, match="val"):
        family.generate(v, _mmlu_params(mmlu_dir, split="val"))
    (mmlu_dir / "val").mkdir()
    with pytest.raises(ValueError, match="val"):
        family.generate(v, _mmlu_params(mmlu_dir, split="val"))
    with pytest.raises(FileNotFoundError, match="chemistry"):
        family.generate(v, _mmlu_params(mmlu_dir, subjects=["chemistry"]))
    bad = mmlu_dir / "test" / "bad_test.csv"
    _write_csv(bad, [["q", "a", "b", "c", "d", "E"]])
    with pytest.raises(ValueError, match="bad_test.csv"):
        family.generate(v, _mmlu_params(mmlu_dir))


def test_mmlu_check(tmp_path, mmlu_dir):
    family = get_family("mmlu")
    ok = {**_mmlu_cfg(mmlu_dir), "n_demos": 4, "shots_max": 4}
    assert family.check(ok) == []
    errors = family.check({**ok, "path": ""})
    assert errors and "path" in errors[0]
    cfg = {k: v for k, v in ok.items() if k != "path"}
    assert any("tasks.mmlu.path" in e for e in family.check(cfg))
    errors = family.check({**ok, "path": str(tmp_path / "gone")})
    assert any(str(tmp_path / "gone") in e for e in errors)
    assert any("n_demos" in e for e in family.check({**ok, "shots_max": 8}))
    assert family.check({**ok, "n_demos": 100, "shots_max": 4})   # not enough questions
