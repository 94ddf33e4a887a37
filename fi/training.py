"""The built-in model: a small HF causal LM trained on synthetic in-context function induction.

Everything is a plain Hugging Face checkpoint (config.json + model.safetensors + a character-level
PreTrainedTokenizerFast), so the grid loads it through exactly the same TransformerBridge path as any
downloaded model. Training is seeded and deterministic for a fixed thread count.

Training sequences are drawn from a configurable mix of sources, each a sequence of in-context items
that share one hidden function, with the loss on the items' outputs only:
  addition        `a+b=c` lines, c = a+b+k with k drawn per sequence (k = 0 with prob. p_zero)
  letter_shift    ` a b -> c d` lines, each output the input shifted by k letters (Caesar)
  repeated_tokens a random character string followed by itself (trains induction heads)
"""

from __future__ import annotations

import math
import random
import string
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from fi.io import atomic_dir, write_parquet
from fi.tasks import addition_sum_range, draw_addition_pair

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
    for _ in range(cfg["items"]):
        word = deal(rng.randint(1, cfg["max_word_len"]))
        shifted = [letters[(letters.index(c) + k) % 26] for c in word]
        segs += [("".join(f" {c}" for c in word) + " ->", False), ("".join(f" {c}" for c in shifted) + "\n", True)]
    return segs


def repeated_tokens_sequence(rng: random.Random, cfg: dict) -> list[tuple[str, bool]]:
    chunk = "".join(rng.choices(string.digits + string.ascii_lowercase, k=cfg["repeat_len"]))
    return [(chunk, False), (chunk, True)]


SOURCES = {"addition": addition_sequence, "letter_shift": letter_shift_sequence,
           "repeated_tokens": repeated_tokens_sequence}


def make_batch(rng: random.Random, cfg: dict, tokenizer, size: int):
    names = [n for n, w in cfg["mix"].items() if w > 0]
    weights = [cfg["mix"][n] for n in names]
    seqs, masks = [], []
    for _ in range(size):
        segs = SOURCES[rng.choices(names, weights)[0]](rng, cfg)
        ids, mask = [tokenizer.bos_token_id], [False]
        for text, target in segs:
            t = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += t
            mask += [target] * len(t)
        seqs.append(ids[: cfg["max_len"]])
        masks.append(mask[: cfg["max_len"]])
    width = max(map(len, seqs))
    tokens = torch.full((size, width), tokenizer.pad_token_id, dtype=torch.long)
    target_mask = torch.zeros((size, width), dtype=torch.bool)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        tokens[i, : len(s)] = torch.tensor(s)
        target_mask[i, : len(m)] = torch.tensor(m)
    return tokens, target_mask


def lr_at(step: int, cfg: dict) -> float:
    if step < cfg["warmup_steps"]:
        return cfg["lr"] * (step + 1) / cfg["warmup_steps"]
    progress = (step - cfg["warmup_steps"]) / max(1, cfg["steps"] - cfg["warmup_steps"])
    return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * progress))


def train_model(cfg: dict, out_dir: str | Path, threads: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Train the built-in model described by `cfg` and save it to `out_dir` (atomically).

    Returns the training curve (also saved as `training_curve.parquet` in the folder)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg["seed"])
    rng = random.Random(cfg["seed"])
    tokenizer = build_tokenizer()
    model = build_model(cfg, len(tokenizer), tokenizer)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                            betas=(0.9, 0.98))
    curve = []
    for step in tqdm(range(cfg["steps"]), desc="train_model", disable=not progress, mininterval=2):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        tokens, mask = make_batch(rng, cfg, tokenizer, cfg["batch_size"])
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
            curve.append({"step": step, "loss": loss.item(), "token_acc": acc, "lr": lr_at(step, cfg)})
    model.eval()
    curve_df = pd.DataFrame(curve)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        write_parquet(curve_df, Path(tmp) / "training_curve.parquet")
    return curve_df
