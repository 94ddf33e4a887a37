"""Task families: dataset generators (the paper's exact draws) and prompt rendering.

A *task family* (addition, ...) owns a config slice, expands it into *variants* (one dataset file
each, e.g. setting1 / nmax 9 / offset +1), generates each variant's records with the paper's seeded
recipe, and renders records into `Example`s: a normal prompt (the plain function, e.g. a+b) and a
contrast prompt (the same demos with the function shifted, e.g. a+b+k), each with its answer.

No torch here: the Snakefile imports this module to build the DAG.
"""

from __future__ import annotations

import csv
import functools
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class Example:
    """One test item, rendered for a given shot count."""

    normal_prompt: str
    contrast_prompt: str
    normal_answer: str
    contrast_answer: str
    # Character spans are not kept: the patching code finds its position groups (demo answers,
    # separators, query) in the tokens.


@dataclass(frozen=True)
class Variant:
    """One dataset file of a family: `name` is path-safe, `fields` become table columns."""

    family: str
    name: str
    fields: dict = field(hash=False, compare=False)


class TaskFamily:
    """Interface every family implements; see AdditionTask for the reference implementation."""

    name: ClassVar[str]
    # Table columns that identify a variant (in order); every variant's `fields` has exactly these.
    columns: ClassVar[tuple[str, ...]]
    # A prompt is items joined by `item_separator`; an item's answer follows its last `separator`.
    separator: ClassVar[str]
    item_separator: ClassVar[str]

    def variants(self, cfg: dict) -> list[Variant]:
        raise NotImplementedError

    def parse_variant(self, name: str) -> Variant:
        raise NotImplementedError

    def generation_params(self, cfg: dict) -> dict:
        """The part of the config one dataset file depends on (the rule's `params`)."""
        raise NotImplementedError

    def generate(self, variant: Variant, params: dict) -> list[dict]:
        raise NotImplementedError

    def examples(self, records: list[dict], variant: Variant, shots: int) -> list[Example]:
        raise NotImplementedError

    def answer_space(self, variant: Variant) -> list[str]:
        """Every answer string the variant can ask for, normal or contrast.

        Scoring restricts the argmax to the tokens these answers use (as the paper restricts it to
        digit tokens), derived per tokenizer."""
        raise NotImplementedError

    def check(self, cfg: dict) -> list[str]:
        """Semantic errors in the family's config slice (beyond the JSON schema)."""
        return []


# --------------------------------------------------------------------------------------------
# Off-by-k addition
# --------------------------------------------------------------------------------------------

ADDITION_NMIN = {9: 0, 99: 10, 999: 100}
ADDITION_SETTINGS = ("normal", "setting1", "setting2")


def addition_sum_range(nmax: int, offset: int) -> tuple[int, int]:
    """The paper's bounds on a+b, chosen so that a+b and a+b+k have the same number of digits."""
    nmin = ADDITION_NMIN[nmax]
    return max(nmin, nmin - offset), min(nmax, nmax - offset)


def draw_addition_pair(rng: random.Random, nmax: int, offset: int) -> list[int]:
    cmin, cmax = addition_sum_range(nmax, offset)
    while True:
        a = rng.randint(0, nmax)
        b = rng.randint(0, nmax)
        if cmin <= a + b <= cmax:
            return [a, b]


def generate_addition(setting: str, nmax: int, offset: int, n_examples: int = 100,
                      n_demos: int = 32, seed: int = 42) -> list[dict]:
    """The paper's off-by-k addition file; with seed 42 it equals the released data byte for byte."""
    if setting not in ADDITION_SETTINGS:
        raise ValueError(f"unknown addition setting {setting!r}; expected one of {ADDITION_SETTINGS}")
    if nmax not in ADDITION_NMIN:
        raise ValueError(f"unknown nmax {nmax!r}; expected one of {sorted(ADDITION_NMIN)}")
    rng = random.Random(seed)
    records = []
    for _ in range(n_examples):
        if setting in ("normal", "setting1"):
            query = draw_addition_pair(rng, nmax, offset)
            demos: list[list[int]] = []
            while len(demos) < n_demos:
                demo = draw_addition_pair(rng, nmax, offset)
                if setting == "normal" and demo == query:
                    continue
                if setting == "setting1" and sum(demo) == sum(query):
                    continue
                demos.append(demo)
        else:  # setting2: the query's sum is among the demos' sums, the query pair itself is not
            demos = [draw_addition_pair(rng, nmax, offset) for _ in range(n_demos)]
            sums = {sum(d) for d in demos}
            while True:
                query = draw_addition_pair(rng, nmax, offset)
                if sum(query) in sums and query not in demos:
                    break
        records.append({"demonstration": demos, "inference": query})
    return records


class AdditionTask(TaskFamily):
    name = "addition"
    columns = ("setting", "nmax", "offset")
    separator = "="
    item_separator = "\n"
    _pattern = re.compile(r"^(normal|setting1|setting2)_nmax(9|99|999)_offset(-?\d+)$")

    def variants(self, cfg):
        return [self._variant(s, n, k) for s in cfg["settings"] for n in cfg["nmax"]
                for k in cfg["offsets"] if not (n == 9 and abs(k) > 2)]

    def _variant(self, setting, nmax, offset):
        return Variant(self.name, f"{setting}_nmax{nmax}_offset{offset}",
                       {"setting": setting, "nmax": int(nmax), "offset": int(offset)})

    def parse_variant(self, name):
        m = self._pattern.match(name)
        if not m:
            raise ValueError(f"not an addition variant name: {name!r}")
        return self._variant(m.group(1), int(m.group(2)), int(m.group(3)))

    def generation_params(self, cfg):
        return {k: cfg[k] for k in ("n_examples", "n_demos", "seed")}

    def generate(self, variant, params):
        f = variant.fields
        return generate_addition(f["setting"], f["nmax"], f["offset"], **params)

    def examples(self, records, variant, shots):
        k = variant.fields["offset"]
        out = []
        for r in records:
            demos = r["demonstration"][:shots]
            a, b = r["inference"]
            normal = "".join(f"{x}+{y}={x + y}\n" for x, y in demos) + f"{a}+{b}="
            contrast = "".join(f"{x}+{y}={x + y + k}\n" for x, y in demos) + f"{a}+{b}="
            out.append(Example(normal, contrast, str(a + b), str(a + b + k)))
        return out

    def answer_space(self, variant):
        cmin, cmax = addition_sum_range(variant.fields["nmax"], variant.fields["offset"])
        k = variant.fields["offset"]
        return sorted({str(s) for s in range(cmin, cmax + 1)} | {str(s + k) for s in range(cmin, cmax + 1)})

    def check(self, cfg):
        errors = []
        for n in cfg["nmax"]:
            if n == 9 and not any(abs(k) <= 2 for k in cfg["offsets"]):
                errors.append("tasks.addition: nmax 9 only allows offsets -2..2 (the paper's "
                              f"bound), and none of offsets {cfg['offsets']} is in that range")
        return errors


# --------------------------------------------------------------------------------------------
# Caesar cipher
# --------------------------------------------------------------------------------------------

CIPHER_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def caesar_shift(word: str, offset: int) -> str:
    """Shift every lowercase letter of `word` by `offset` places, wrapping around (mod 26)."""
    return "".join(CIPHER_ALPHABET[(CIPHER_ALPHABET.index(c) + offset) % 26] for c in word)


def spaced_letters(word: str) -> str:
    """'abc' -> ' a b c': every letter its own space-prefixed token, as in the paper's prompts."""
    return "".join(f" {c}" for c in word)


def generate_cipher(maxlen: int, offset: int, n_examples: int = 100, n_demos: int = 32,
                    seed: int = 42) -> list[dict]:
    """The paper's Caesar-cipher file; with seed 42 it equals the released data byte for byte.

    Draw order (one `random.Random(seed)` for the whole file): per example, first the `n_demos`
    demo words, each `random.choices(alphabet, k=maxlen)`, then the query word, drawn the same
    way and re-drawn while it equals one of the demo words. Demo words may repeat. Records are
    `{"demonstration": [[word, shifted], ...], "inference": [word, shifted]}`.
    """
    if maxlen < 1:
        raise ValueError(f"cipher maxlen must be >= 1, got {maxlen!r}")
    rng = random.Random(seed)
    records = []
    for _ in range(n_examples):
        words = ["".join(rng.choices(CIPHER_ALPHABET, k=maxlen)) for _ in range(n_demos)]
        seen = set(words)
        if len(seen) >= 26 ** maxlen:
            raise ValueError(f"cipher maxlen {maxlen}: the {n_demos} demos use every possible "
                             "word, so no query differs from them; lower n_demos")
        while True:
            query = "".join(rng.choices(CIPHER_ALPHABET, k=maxlen))
            if query not in seen:
                break
        records.append({"demonstration": [[w, caesar_shift(w, offset)] for w in words],
                        "inference": [query, caesar_shift(query, offset)]})
    return records


class CipherTask(TaskFamily):
    """Caesar cipher: the normal task copies a word, the contrast task shifts it by `offset`.

    Prompt lines are `" a b c -> a b c"` (normal) or `" a b c -> d e f"` (contrast, demos map a
    word to its shift), joined by "\\n"; the query line ends in `" ->"`. Answers are rendered
    like the demos' right-hand sides (`" q u e r y"`).

    answer_space: the 26 single letters rendered `" x"`. Scoring is token-restricted (the
    argmax is taken over the tokens the answer space uses), so what matters is the set of
    letter tokens, not every whole multi-letter answer string; a multi-letter answer is scored
    token by token within that set.
    """

    name = "cipher"
    columns = ("maxlen", "offset")
    separator = " ->"
    item_separator = "\n"
    _pattern = re.compile(r"^maxlen([1-9]\d*)_offset(0|-?[1-9]\d*)$")

    def variants(self, cfg):
        return [self._variant(m, k) for m in cfg["maxlen"] for k in cfg["offsets"]]

    def _variant(self, maxlen, offset):
        return Variant(self.name, f"maxlen{int(maxlen)}_offset{int(offset)}",
                       {"maxlen": int(maxlen), "offset": int(offset)})

    def parse_variant(self, name):
        m = self._pattern.match(name)
        if not m:
            raise ValueError(f"not a cipher variant name: {name!r} (expected e.g. 'maxlen4_offset1')")
        return self._variant(int(m.group(1)), int(m.group(2)))

    def generation_params(self, cfg):
        return {k: cfg[k] for k in ("n_examples", "n_demos", "seed")}

    def generate(self, variant, params):
        f = variant.fields
        return generate_cipher(f["maxlen"], f["offset"], **params)

    def examples(self, records, variant, shots):
        out = []
        for r in records:
            demos = r["demonstration"][:shots]
            query, shifted = r["inference"]
            q = f"{spaced_letters(query)} ->"
            normal = "\n".join([f"{spaced_letters(w)} ->{spaced_letters(w)}" for w, _ in demos] + [q])
            contrast = "\n".join([f"{spaced_letters(w)} ->{spaced_letters(s)}" for w, s in demos] + [q])
            out.append(Example(normal, contrast, spaced_letters(query), spaced_letters(shifted)))
        return out

    def answer_space(self, variant):
        return [f" {c}" for c in CIPHER_ALPHABET]

    def check(self, cfg):
        errors = []
        if any(int(m) < 1 for m in cfg["maxlen"]):
            errors.append(f"tasks.cipher.maxlen must be >= 1, got {cfg['maxlen']}")
        if max(cfg.get("shots_max", 0), 0) > cfg["n_demos"]:
            errors.append("tasks.cipher.n_demos is smaller than the largest shot count")
        return errors


# --------------------------------------------------------------------------------------------
# Base-k addition
# --------------------------------------------------------------------------------------------

BASE_ADDITION_SETTINGS = ("normal", "setting1", "setting2", "setting3")


def to_base(n: int, base: int) -> str:
    """Non-negative `n` written in base `base` (2..10) as a digit string."""
    if n < 0 or not 2 <= base <= 10:
        raise ValueError(f"to_base needs n >= 0 and 2 <= base <= 10, got n={n}, base={base}")
    digits = ""
    while n:
        n, d = divmod(n, base)
        digits = str(d) + digits
    return digits or "0"


def base_addition_range(ndigits: int, base: int) -> tuple[int, int]:
    """The paper's bounds (base 10 values) on a, b and a+b: `ndigits` digits in base `base`,
    and at least `ndigits` digits when the base-k digit string is read as a decimal number."""
    return max(base ** (ndigits - 1), 10 ** (ndigits - 1)), base ** ndigits - 1


def base_setting_holds(setting: str, pair, base: int) -> bool:
    """The paper's query constraint on c0 = (last base-k digit of a) + (last base-k digit of b).

    setting1: c0 < base (no carry out of the last digit in base k nor in base 10);
    setting2: base <= c0 < 10 (a carry in base k but not in base 10);
    setting3: c0 >= 10 (a carry in both); normal: no constraint."""
    c0 = pair[0] % base + pair[1] % base
    if setting == "normal":
        return True
    if setting == "setting1":
        return c0 < base
    if setting == "setting2":
        return base <= c0 < 10
    if setting == "setting3":
        return c0 >= 10
    raise ValueError(f"unknown base_addition setting {setting!r}; expected one of {BASE_ADDITION_SETTINGS}")


def draw_base_pair(rng: random.Random, ndigits: int, base: int) -> list[int]:
    # Two randint calls per attempt. (The paper also requires a, b and a+b to have `ndigits`
    # base-k digits; that is implied by cmin <= a, b, a+b <= cmax, so it is not re-checked.)
    cmin, cmax = base_addition_range(ndigits, base)
    while True:
        a = rng.randint(cmin, cmax)
        b = rng.randint(cmin, cmax)
        if cmin <= a + b <= cmax:
            return [a, b]


def base_addition_problems(setting: str, ndigits: int, base: int) -> list[str]:
    """Why (setting, ndigits, base) cannot be generated (the draw loops would never end)."""
    if setting not in BASE_ADDITION_SETTINGS:
        return [f"unknown base_addition setting {setting!r}; expected one of {BASE_ADDITION_SETTINGS}"]
    if not 2 <= base <= 10:
        return [f"base_addition base must be in 2..10 (digit strings), got {base!r}"]
    if ndigits < 1:
        return [f"base_addition ndigits must be >= 1, got {ndigits!r}"]
    cmin, cmax = base_addition_range(ndigits, base)
    if 2 * cmin > cmax:
        return [f"base_addition ndigits {ndigits} base {base}: no two {ndigits}-digit numbers "
                f"(>= {cmin}) have a sum <= {cmax}"]
    # The smallest a >= cmin with a given residue is cmin + i for some i < base, so scanning
    # i, j < base decides exactly whether some in-range pair satisfies the setting.
    if not any(2 * cmin + i + j <= cmax and base_setting_holds(setting, (cmin + i, cmin + j), base)
               for i in range(base) for j in range(base)):
        return [f"base_addition {setting} is impossible for ndigits {ndigits} base {base} "
                "(no pair satisfies its last-digit constraint)"]
    return []


def generate_base_addition(setting: str, ndigits: int, base: int, n_examples: int = 100,
                           n_demos: int = 32, seed: int = 42) -> list[dict]:
    """The paper's base-k addition file; with seed 42 it equals the released data byte for byte.

    Draw order (one `random.Random(seed)` per file): per example, the query pair first,
    re-drawn until it satisfies the setting's last-digit constraint, then `n_demos` demo pairs,
    each re-drawn while equal to the query (demos are unconstrained by the setting). Numbers
    are stored in base 10: `{"demonstration": [[a, b], ...], "inference": [a, b]}`.
    """
    problems = base_addition_problems(setting, ndigits, base)
    if problems:
        raise ValueError("; ".join(problems))
    rng = random.Random(seed)
    records = []
    for _ in range(n_examples):
        query = draw_base_pair(rng, ndigits, base)
        while not base_setting_holds(setting, query, base):
            query = draw_base_pair(rng, ndigits, base)
        demos: list[list[int]] = []
        while len(demos) < n_demos:
            demo = draw_base_pair(rng, ndigits, base)
            if demo != query:
                demos.append(demo)
        records.append({"demonstration": demos, "inference": query})
    return records


def base_addition_answers(setting: str, ndigits: int, base: int) -> tuple[str, ...]:
    return _base_addition_answers(setting, int(ndigits), int(base))


@functools.cache
def _base_addition_answers(setting: str, ndigits: int, base: int) -> tuple[str, ...]:
    problems = base_addition_problems(setting, ndigits, base)
    if problems:
        raise ValueError("; ".join(problems))
    cmin, cmax = base_addition_range(ndigits, base)
    digits = {n: to_base(n, base) for n in range(cmin, cmax + 1)}
    answers: set[str] = set()
    for a in range(cmin, cmax - cmin + 1):
        for b in range(cmin, cmax - a + 1):
            if base_setting_holds(setting, (a, b), base):
                answers.add(digits[a + b])                               # contrast (base k)
                answers.add(str(int(digits[a]) + int(digits[b])))       # normal (decimal)
    return tuple(sorted(answers))


class BaseAdditionTask(TaskFamily):
    """Base-k addition, contrasted with decimal addition of the same digit strings.

    Operands are written as base-k digit strings A, B. The contrast prompt's demos are
    `A+B=C` with C = a+b in base k; the normal prompt's demos read A and B as decimal numbers,
    C = int(A)+int(B) in base 10. Both end with the query `A+B=`; answers follow the same rule.

    answer_space: exactly the strings a query of the variant can ask for, normal (decimal) or
    contrast (base k), enumerated over every in-range pair that satisfies the setting (cached).
    """

    name = "base_addition"
    columns = ("setting", "ndigits", "base")
    separator = "="
    item_separator = "\n"
    _pattern = re.compile(r"^(normal|setting1|setting2|setting3)_ndigits([1-9]\d*)_base([2-9]|10)$")

    def variants(self, cfg):
        return [self._variant(s, n, b) for s in cfg["settings"] for n in cfg["ndigits"]
                for b in cfg["bases"]]

    def _variant(self, setting, ndigits, base):
        return Variant(self.name, f"{setting}_ndigits{int(ndigits)}_base{int(base)}",
                       {"setting": setting, "ndigits": int(ndigits), "base": int(base)})

    def parse_variant(self, name):
        m = self._pattern.match(name)
        if not m:
            raise ValueError(f"not a base_addition variant name: {name!r} "
                             "(expected e.g. 'setting1_ndigits2_base7')")
        return self._variant(m.group(1), int(m.group(2)), int(m.group(3)))

    def generation_params(self, cfg):
        return {k: cfg[k] for k in ("n_examples", "n_demos", "seed")}

    def generate(self, variant, params):
        f = variant.fields
        return generate_base_addition(f["setting"], f["ndigits"], f["base"], **params)

    def examples(self, records, variant, shots):
        base = variant.fields["base"]
        out = []
        for r in records:
            demos = r["demonstration"][:shots]
            a, b = r["inference"]
            normal = "".join(f"{to_base(x, base)}+{to_base(y, base)}="
                             f"{int(to_base(x, base)) + int(to_base(y, base))}\n" for x, y in demos)
            contrast = "".join(f"{to_base(x, base)}+{to_base(y, base)}={to_base(x + y, base)}\n"
                               for x, y in demos)
            A, B = to_base(a, base), to_base(b, base)
            query = f"{A}+{B}="
            out.append(Example(normal + query, contrast + query, str(int(A) + int(B)),
                               to_base(a + b, base)))
        return out

    def answer_space(self, variant):
        f = variant.fields
        return list(base_addition_answers(f["setting"], f["ndigits"], f["base"]))

    def check(self, cfg):
        errors = []
        for s in cfg["settings"]:
            for n in cfg["ndigits"]:
                for b in cfg["bases"]:
                    errors += [f"tasks.base_addition: {p}" for p in base_addition_problems(s, n, b)]
        if max(cfg.get("shots_max", 0), 0) > cfg["n_demos"]:
            errors.append("tasks.base_addition.n_demos is smaller than the largest shot count")
        return errors


# --------------------------------------------------------------------------------------------
# Shifted MMLU
# --------------------------------------------------------------------------------------------

MMLU_LETTERS = "ABCD"


def mmlu_subjects(path: str | os.PathLike, split: str) -> list[str]:
    """Subjects with a `<subject>_<split>.csv` in `<path>/<split>/` (the hendrycks layout), sorted."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"MMLU folder {str(root)!r} does not exist (get it as in the "
                                "paper's data/mmlu/get_data.md: hendrycks data.tar)")
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"MMLU split folder {str(folder)!r} does not exist")
    suffix = f"_{split}.csv"
    subjects = sorted(p.name[: -len(suffix)] for p in folder.iterdir()
                      if p.is_file() and p.name.endswith(suffix) and len(p.name) > len(suffix))
    if not subjects:
        raise ValueError(f"MMLU split folder {str(folder)!r} has no '<subject>{suffix}' files")
    return subjects


def read_mmlu_csv(path: str | os.PathLike, subject: str) -> list[dict]:
    """One headerless hendrycks CSV (question, A, B, C, D, answer letter) as item dicts."""
    items = []
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != 6:
                raise ValueError(f"{str(path)!r} row {line_no}: expected 6 columns "
                                 f"(question, A, B, C, D, answer), got {len(row)}")
            answer = row[5].strip()
            if answer not in MMLU_LETTERS:
                raise ValueError(f"{str(path)!r} row {line_no}: answer {row[5]!r} is not one of A-D")
            items.append({"question": row[0], "choices": row[1:5], "answer": answer,
                          "subject": subject})
    return items


def read_mmlu_split(path: str | os.PathLike, split: str, subjects=()) -> list[dict]:
    """Every item of `split` for `subjects` (empty: all found), subjects sorted, rows in file order."""
    found = mmlu_subjects(path, split)
    wanted = sorted(set(subjects)) if subjects else found
    missing = [s for s in wanted if s not in found]
    if missing:
        raise FileNotFoundError(
            f"MMLU subjects {missing} have no file in {str(Path(path) / split)!r} "
            f"(looked for {[str(Path(path) / split / f'{s}_{split}.csv') for s in missing]})")
    items = []
    for s in wanted:
        items += read_mmlu_csv(Path(path) / split / f"{s}_{split}.csv", s)
    if not items:
        raise ValueError(f"MMLU split folder {str(Path(path) / split)!r} has no questions "
                         f"for subjects {wanted}")
    return items


def _mmlu_pools(path, split, subjects, n_demos) -> tuple[list[dict], list[dict] | None]:
    """(query pool, demo pool); the demo pool is None when demos come from the query split."""
    queries = read_mmlu_split(path, split, subjects)
    if split != "dev" and (Path(path) / "dev").is_dir():
        try:
            dev = read_mmlu_split(path, "dev", sorted({q["subject"] for q in queries}))
        except (FileNotFoundError, ValueError):
            dev = []
        if len(dev) >= n_demos:
            return queries, dev
    if len(queries) - 1 < n_demos:
        raise ValueError(f"MMLU {str(path)!r} split {split!r}: {len(queries)} questions cannot "
                         f"give {n_demos} demos per query (and no dev split with >= {n_demos} "
                         "questions); lower n_demos or add subjects")
    return queries, None


def generate_mmlu(path: str | os.PathLike, split: str = "test", subjects=(), n_examples: int = 100,
                  n_demos: int = 32, seed: int = 42) -> list[dict]:
    """Shifted-MMLU records `{"demonstration": [item, ...], "inference": item}`, items being
    `{"question", "choices" (4 strings), "answer" (true letter), "subject"}`.

    Draws, with one `random.Random(seed)`: the queries first, `rng.sample` of
    min(n_examples, #questions) distinct questions of `split` (subjects sorted, rows in file
    order); then per query, in order, `rng.sample` of `n_demos` distinct demos, from the `dev`
    split (same subjects) when it exists and holds at least `n_demos` questions, otherwise from
    `split` without the query itself.
    """
    queries, dev = _mmlu_pools(path, split, subjects, n_demos)
    rng = random.Random(seed)
    picked = rng.sample(range(len(queries)), min(n_examples, len(queries)))
    records = []
    for qi in picked:
        if dev is not None:
            demos = [dev[i] for i in rng.sample(range(len(dev)), n_demos)]
        else:  # indices of the split without the query: skip over qi
            demos = [queries[i + (i >= qi)] for i in rng.sample(range(len(queries) - 1), n_demos)]
        records.append({"demonstration": demos, "inference": queries[qi]})
    return records


def shift_letter(letter: str, offset: int) -> str:
    return MMLU_LETTERS[(MMLU_LETTERS.index(letter) + offset) % len(MMLU_LETTERS)]


def mmlu_item_text(item: dict, letter: str | None) -> str:
    """'Question: q\\n(A) ..\\n(B) ..\\n(C) ..\\n(D) ..\\nAnswer: (X)'; letter None leaves 'Answer: ('."""
    lines = [f"Question: {item['question']}"]
    lines += [f"({L}) {c}" for L, c in zip(MMLU_LETTERS, item["choices"])]
    lines.append("Answer: (" + (f"{letter})" if letter is not None else ""))
    return "\n".join(lines)


class MMLUTask(TaskFamily):
    """MMLU with the answer letter shifted by `offset` (mod 4) in the contrast prompt.

    Items render as 'Question: ...\\n(A) ...\\n(B) ...\\n(C) ...\\n(D) ...\\nAnswer: (X)', joined
    by blank lines; the query ends with 'Answer: ('. Normal demos show the true letter, contrast
    demos the letter shifted by `offset` (k=1: '(B)' where the answer is A). Variants are one
    per offset, pooling the configured subjects; the questions come from `path` (hendrycks
    layout: dev/, val/, test/ with headerless `<subject>_<split>.csv`), read at generation time.
    """

    name = "mmlu"
    columns = ("offset",)
    separator = "Answer: ("
    item_separator = "\n\n"
    _pattern = re.compile(r"^offset(0|-?[1-9]\d*)$")

    def variants(self, cfg):
        return [self._variant(k) for k in cfg["offsets"]]

    def _variant(self, offset):
        return Variant(self.name, f"offset{int(offset)}", {"offset": int(offset)})

    def parse_variant(self, name):
        m = self._pattern.match(name)
        if not m:
            raise ValueError(f"not an mmlu variant name: {name!r} (expected e.g. 'offset1')")
        return self._variant(int(m.group(1)))

    def generation_params(self, cfg):
        return {"path": str(cfg["path"]), "split": cfg.get("split", "test"),
                "subjects": list(cfg.get("subjects") or []),
                **{k: cfg[k] for k in ("n_examples", "n_demos", "seed")}}

    def generate(self, variant, params):
        return generate_mmlu(**params)

    def examples(self, records, variant, shots):
        k = variant.fields["offset"]
        out = []
        for r in records:
            demos = r["demonstration"][:shots]
            query = mmlu_item_text(r["inference"], None)
            normal = "\n\n".join([mmlu_item_text(d, d["answer"]) for d in demos] + [query])
            contrast = "\n\n".join([mmlu_item_text(d, shift_letter(d["answer"], k)) for d in demos]
                                   + [query])
            answer = r["inference"]["answer"]
            out.append(Example(normal, contrast, answer, shift_letter(answer, k)))
        return out

    def answer_space(self, variant):
        return list(MMLU_LETTERS)

    def check(self, cfg):
        errors = []
        path = cfg.get("path")
        if not path:
            errors.append("tasks.mmlu.path is not set: point it at the hendrycks MMLU folder "
                          "(dev/, val/, test/)")
        else:
            try:
                _mmlu_pools(path, cfg.get("split", "test"), list(cfg.get("subjects") or []),
                            cfg["n_demos"])
            except (FileNotFoundError, ValueError, OSError) as e:
                errors.append(f"tasks.mmlu.path: {e}")
        if max(cfg.get("shots_max", 0), 0) > cfg["n_demos"]:
            errors.append("tasks.mmlu.n_demos is smaller than the largest shot count")
        return errors

FAMILIES: dict[str, TaskFamily] = {
    f.name: f for f in (AdditionTask(), CipherTask(), BaseAdditionTask(), MMLUTask())
}


def get_family(name: str) -> TaskFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown task family {name!r}; known: {sorted(FAMILIES)}") from None
