"""The built-in model: a small HF causal LM trained on synthetic in-context function induction.

Everything is a plain Hugging Face checkpoint (config.json + model.safetensors + a character-level
PreTrainedTokenizerFast), so the grid loads it through exactly the same TransformerBridge path as any
downloaded model. Training is seeded and deterministic for a fixed thread count.

Training sequences are drawn from a configurable mix of sources, each a sequence of in-context items
that share one hidden function, with the loss on the items' outputs only:
  addition        `a+b=c` lines, c = a+b+k with k drawn per sequence (k = 0 with prob. p_zero)
  letter_shift    ` a b -> c d` lines, each output the input shifted by k letters (Caesar)
  repeated_tokens a random character string followed by itself (trains induction heads when its
                  length varies, `repeat_len: [lo, hi]`; at one fixed length a head that looks back
                  that many positions predicts the copy, and no induction head is needed)
"""

from __future__ import annotations

import math
import random
import shutil
import string
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from fi.io import atomic_dir, write_parquet
from fi.plan.dynamics_runs import checkpoint_steps
from fi.plan.tasks import addition_sum_range, draw_addition_pair

PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"
# Every character of the addition, cipher and base-k prompts, plus common punctuation; free text
# (MMLU questions) can hold others, which the tokenizer maps to <unk>.
CHARSET = string.digits + string.ascii_lowercase + string.ascii_uppercase + " \n+-=>()?.,:;'\"!/&%$*#@[]_"


def build_tokenizer():
    """A character-level fast tokenizer: one token per character."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, BOS, UNK] + list(CHARSET))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, bos_token=BOS,
                                   unk_token=UNK, eos_token=PAD)


# The symbols the training sources draw at random (operands, words, repeated strings); the rest of
# CHARSET is punctuation the formats fix, or never seen (capitals): those embeddings stay untrained.
DRAWN_CHARACTERS = string.digits + string.ascii_lowercase


def drawn_token_ids(tokenizer) -> list[int] | None:
    """The ids of DRAWN_CHARACTERS when `tokenizer` is the built-in character tokenizer, else None.
    Scores on random tokens (fi.methods.heads.head_type_scores) draw from these on a built-in model:
    a random string of never-trained characters measures what a head does off its training data."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else None
    if vocab != {tok: i for i, tok in enumerate([PAD, BOS, UNK] + list(CHARSET))}:
        return None
    return [vocab[c] for c in DRAWN_CHARACTERS]


def build_model(cfg: dict, vocab_size: int, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    common = dict(vocab_size=vocab_size, bos_token_id=tokenizer.bos_token_id,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if cfg["architecture"] == "llama":
        config = LlamaConfig(hidden_size=cfg["d_model"], intermediate_size=cfg["d_mlp"],
                             num_hidden_layers=cfg["n_layers"], num_attention_heads=cfg["n_heads"],
                             num_key_value_heads=cfg["n_kv_heads"] or cfg["n_heads"],
                             max_position_embeddings=cfg["max_len"], tie_word_embeddings=False, **common)
        return LlamaForCausalLM(config)
    if cfg["architecture"] == "gpt2":
        config = GPT2Config(n_embd=cfg["d_model"], n_inner=cfg["d_mlp"], n_layer=cfg["n_layers"],
                            n_head=cfg["n_heads"], n_positions=cfg["max_len"], **common)
        return GPT2LMHeadModel(config)
    raise ValueError(f"unknown architecture {cfg['architecture']!r}; expected llama or gpt2")


def _draw_offset(rng: random.Random, cfg: dict) -> int:
    if rng.random() < cfg["p_zero"]:
        return 0
    return rng.choice([k for k in range(-cfg["max_offset"], cfg["max_offset"] + 1) if k != 0])


def addition_sequence(rng: random.Random, cfg: dict) -> list[tuple[str, bool]]:
    """Segments (text, is_target) of one off-by-k addition sequence."""
    nmax = rng.choice(cfg["nmax"])
    k = _draw_offset(rng, cfg)
    if nmax == 9:
        k = max(-2, min(2, k))  # keep a+b+k a single digit, as the paper's nmax-9 files do
    cmin, cmax = addition_sum_range(nmax, k)
    assert cmin <= cmax
    segs = []
    for _ in range(cfg["items"]):
        a, b = draw_addition_pair(rng, nmax, k)
        segs += [(f"{a}+{b}=", False), (f"{a + b + k}\n", True)]
    return segs


def letter_shift_sequence(rng: random.Random, cfg: dict) -> list[tuple[str, bool]]:
    """Shifted letter copying. Letters are dealt from a shuffled deck, so no letter recurs within a
    sequence until all 26 have been used: when items repeat, the cheapest solution is to look the
    query up among earlier items (induction) rather than to shift it, and a model trained that way
    copies letters it has not seen shifted, exactly the case of the cipher prompts (their query
    never equals a demo)."""
    k = _draw_offset(rng, cfg)
    letters = string.ascii_lowercase
    deck: list[str] = []

    def deal(n: int) -> list[str]:
        out = []
        for _ in range(n):
            if not deck:
                deck.extend(rng.sample(letters, len(letters)))
            out.append(deck.pop())
        return out
    segs = []
    # A told sequence states its shift first: the shifted letters can be learnt from it before the
    # shift can be inferred from demos (the draw is skipped at 0, keeping other recipes' data as it was).
    if cfg.get("told_shift", 0) > 0 and rng.random() < cfg["told_shift"]:
        segs.append((f"{k:+d}:\n", False))
    for _ in range(cfg["items"]):
        word = deal(rng.randint(1, cfg["max_word_len"]))
        shifted = [letters[(letters.index(c) + k) % 26] for c in word]
        segs += [("".join(f" {c}" for c in word) + " ->", False), ("".join(f" {c}" for c in shifted) + "\n", True)]
    return segs


def repeated_tokens_sequence(rng: random.Random, cfg: dict) -> list[tuple[str, bool]]:
    length = cfg["repeat_len"]
    if not isinstance(length, int):  # [lo, hi]: a length drawn per sequence (an int draws nothing)
        length = rng.randint(*length)
    chunk = "".join(rng.choices(DRAWN_CHARACTERS, k=length))
    return [(chunk, False), (chunk, True)]


SOURCES = {"addition": addition_sequence, "letter_shift": letter_shift_sequence,
           "repeated_tokens": repeated_tokens_sequence}


def char_ids(tokenizer) -> tuple[dict[str, int], int]:
    """The character tokenizer as a dict (char -> id) and its <unk> id: the same ids as a tokenizer call
    on any text (one token per character, unknown characters <unk>), at a fraction of its cost (the
    call costs ~15 us of Python per segment, 80 ms per default batch)."""
    cached = _CHAR_IDS.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1], cached[2]
    vocab = tokenizer.get_vocab()
    table = {c: vocab[c] for c in CHARSET if c in vocab}
    unk = tokenizer.unk_token_id
    _CHAR_IDS[id(tokenizer)] = (tokenizer, table, unk)
    return table, unk


_CHAR_IDS: dict[int, tuple] = {}


def make_batch(rng: random.Random, cfg: dict, tokenizer, size: int, with_sources: bool = False):
    """`size` training sequences: (tokens, target_mask), right-padded to the longest; with
    `with_sources` also the source name of each row."""
    names = [n for n, w in cfg["mix"].items() if w > 0]
    weights = [cfg["mix"][n] for n in names]
    table, unk = char_ids(tokenizer)
    get = table.get
    seqs, masks, sources = [], [], []
    for _ in range(size):
        source = rng.choices(names, weights)[0]
        segs = SOURCES[source](rng, cfg)
        ids, mask = [tokenizer.bos_token_id], [False]
        for text, target in segs:
            ids += [get(c, unk) for c in text]
            mask += [target] * len(text)
        seqs.append(ids[: cfg["max_len"]])
        masks.append(mask[: cfg["max_len"]])
        sources.append(source)
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    tokens = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long)
    target_mask = torch.tensor([m + [False] * (width - len(m)) for m in masks], dtype=torch.bool)
    if with_sources:
        return tokens, target_mask, sources
    return tokens, target_mask


def lr_at(step: int, cfg: dict) -> float:
    if step < cfg["warmup_steps"]:
        return cfg["lr"] * (step + 1) / cfg["warmup_steps"]
    progress = (step - cfg["warmup_steps"]) / max(1, cfg["steps"] - cfg["warmup_steps"])
    return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * progress))


def checkpoint_dir(model_dir: str | Path, step: int) -> Path:
    return Path(model_dir) / "checkpoints" / f"step{int(step)}"


def _batches(rng: random.Random, cfg: dict, tokenizer, first: int, prefetch: int):
    """(step, tokens, mask, sources, rng state after the batch) for steps first..steps-1, drawn in
    order from `rng`; with `prefetch` > 0 by a background thread that runs up to that many batches
    ahead (the same batches: only this thread touches `rng`)."""
    def draw(step):
        tokens, mask, sources = make_batch(rng, cfg, tokenizer, cfg["batch_size"], with_sources=True)
        return step, tokens, mask, sources, rng.getstate()

    if prefetch <= 0:
        for step in range(first, cfg["steps"]):
            yield draw(step)
        return
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def work():
        try:
            for step in range(first, cfg["steps"]):
                item = draw(step)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as err:  # handed to the consumer
            q.put(err)

    thread = threading.Thread(target=work, name="fi-batches", daemon=True)
    thread.start()
    try:
        for _ in range(first, cfg["steps"]):
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _source_losses(logits: torch.Tensor, target: torch.Tensor, m: torch.Tensor, sources: list[str],
                   names: list[str]) -> dict[str, float]:
    """Mean answer-token loss per data source (rows of that source only), from detached logits."""
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(logits.detach()[m], target[m], reduction="none")
        row = torch.arange(m.shape[0])[:, None].expand_as(m)[m]
        src = torch.tensor([names.index(s) for s in sources])[row]
        out = {}
        for i, name in enumerate(names):
            sel = src == i
            out[f"loss_{name}"] = float(ce[sel].mean()) if sel.any() else float("nan")
        return out


def _save_checkpoint(model, tokenizer, opt, rng_state, step: int, folder: Path) -> None:
    """A model folder (config.json + model.safetensors + tokenizer) plus training_state.pt (optimizer
    state and data RNG) so that training can resume from it (`train_model(..., resume=folder)`)."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save({"step": step, "optimizer": opt.state_dict(), "rng": rng_state}, Path(tmp) / "training_state.pt")


def train_model(cfg: dict, out_dir: str | Path, threads: int | None = None, progress: bool = True,
                clamps: list | None = None, resume: str | Path | None = None, prefetch: int = 0) -> pd.DataFrame:
    """Train the built-in model described by `cfg` and save it to `out_dir` (atomically), with its
    checkpoints (`checkpoint_steps(cfg)`) under out_dir/checkpoints/step<k>/.

    `clamps` (fi.methods.dynamics.Clamp values) run the steps they cover through a TransformerBridge around
    the same parameters with their interventions as hooks; every other step is the plain HF forward.
    `resume` continues from a checkpoint folder of a run with the same `cfg` (its weights, optimizer
    state and data RNG): the result equals the uninterrupted run's.

    `prefetch` > 0 draws batches that many steps ahead in a background thread (the same batches;
    measured no faster on 1 thread, where it competes for the core: bench/bench_training.py).

    Returns the training curve (also saved as `training_curve.parquet` in the folder): per log step
    the loss, answer-token accuracy, learning rate and the loss per data source."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg["seed"])
    # the data's own seed, when set, draws other batches for the same initialisation (a robustness check)
    rng = random.Random(cfg["seed"] if cfg.get("data_seed") is None else cfg["data_seed"])
    tokenizer = build_tokenizer()
    model = build_model(cfg, len(tokenizer), tokenizer)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                            betas=(0.9, 0.98))
    first = 0
    if resume is not None:
        from safetensors.torch import load_file

        # tensors and plain values only: no pickled code
        state = torch.load(Path(resume) / "training_state.pt", weights_only=True)
        model.load_state_dict(load_file(Path(resume) / "model.safetensors"))
        opt.load_state_dict(state["optimizer"])
        rng.setstate(state["rng"])
        first = int(state["step"])
    names = [n for n, w in cfg["mix"].items() if w > 0]
    saves = set(checkpoint_steps(cfg))
    clamps = [c for c in (clamps or []) if c.active_steps(cfg["steps"])]
    clamped = None
    curve = []
    with atomic_dir(out_dir) as tmp:
        rng_state = rng.getstate()
        if first in saves and resume is None:
            _save_checkpoint(model, tokenizer, opt, rng_state, first, checkpoint_dir(tmp, first))
        batches = _batches(rng, cfg, tokenizer, first, prefetch)
        for step, tokens, mask, sources, rng_state in tqdm(batches, total=cfg["steps"] - first, desc="train_model",
                                                            disable=not progress, mininterval=2):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            active = [c for c in clamps if c.covers(step)]
            if active:
                if clamped is None:
                    from fi.engine.clamping import ClampedForward

                    clamped = ClampedForward(model, tokenizer)
                logits = clamped(tokens, active)[:, :-1]
            else:
                logits = model(tokens).logits[:, :-1]
            target = tokens[:, 1:]
            m = mask[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits[m], target[m])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % cfg["log_every"] == 0 or step == cfg["steps"] - 1:
                acc = (logits[m].argmax(-1) == target[m]).float().mean().item()
                curve.append({"step": step, "loss": loss.item(), "token_acc": acc, "lr": lr_at(step, cfg),
                              **_source_losses(logits, target, m, sources, names), "clamped": bool(active)})
            if step + 1 in saves:
                _save_checkpoint(model, tokenizer, opt, rng_state, step + 1, checkpoint_dir(tmp, step + 1))
        model.eval()
        curve_df = pd.DataFrame(curve)
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        if resume is not None:  # the checkpoints up to the resumed step are the earlier run's
            for k in sorted(saves):
                earlier = Path(resume).parent / f"step{k}"
                if k <= first and earlier.is_dir():
                    shutil.copytree(earlier, checkpoint_dir(tmp, k))
        write_parquet(curve_df, Path(tmp) / "training_curve.parquet")
    return curve_df
