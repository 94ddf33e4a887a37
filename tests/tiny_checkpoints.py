"""Tiny random-initialised checkpoints in the shapes of the paper's models, built locally (no
downloads): three tokenizer styles x three architectures, saved with `save_pretrained`.

Tokenizer styles (each a `tokenizers` model wrapped in a PreTrainedTokenizerFast):
  single_digit  Llama-2 / Mistral / Gemma: SentencePiece-like Metaspace ("▁" on the first piece of
                a text and before every word), one token per digit, "▁x" letter pieces.
  multi_digit   Llama-3 / Phi-4 / Qwen-2.5-like byte-level BPE whose pre-tokenizer groups digits
                in runs of up to three (Llama-3's split regex), every 1-3 digit number one token:
                "123" is one token, "4567" is "456" + "7".
  gpt2_bpe      GPT-2 / Pythia: byte-level BPE with GPT-2's regex (leading spaces fold into the
                token: " q" is "Ġq"); digits are not split, so which numbers are one token depends
                on the merges. All 2-digit numbers are tokens, only every 7th 3-digit one is:
                "107" is one token, "123" is "12" + "3", so the normal and contrast prompts of a
                3-digit example can differ in length.
Plus `boundary_merging_tokenizer`: a BPE that merges "=" with a following digit ("=3" is one
token), so an answer does not tokenize separately after its prompt.

Architectures: GPT-2 (GPT2LMHeadModel), Llama with grouped-query attention (LlamaForCausalLM,
4 query heads on 2 key/value heads) and Gemma-2 (Gemma2ForCausalLM: extra post-attention and
post-MLP norms, logit soft-capping, alternating sliding-window layers); and the other architectures
of the paper's grid (`PAPER_ARCHITECTURES`, each with the tokenizer style of its family): Mistral
(sliding-window attention), Qwen-2 (q/k/v biases), Phi-3 (fused qkv and gate/up projections),
GPT-NeoX (Pythia: parallel attention and MLP, partial rotary) and Gemma-3 (q/k norms, local and
global layers). Every parameter is random, biases and norm weights included, so that no term of
an architecture hides behind a zero or a one.
"""

from __future__ import annotations

import string
from pathlib import Path

TOKENIZER_STYLES = ("single_digit", "multi_digit", "gpt2_bpe")
ARCHITECTURES = ("gpt2", "llama", "gemma2")
# every architecture of configs/paper.yaml (and Gemma-3) -> the tokenizer style of its models
PAPER_ARCHITECTURES = {"llama": "single_digit", "mistral": "single_digit", "gemma2": "single_digit",
                       "qwen2": "multi_digit", "phi3": "multi_digit", "gpt_neox": "gpt2_bpe",
                       "gemma3": "single_digit"}

# Characters the task prompts use besides letters and digits.
PUNCTUATION = "\n+-=>()?.,:;'\"!/&%$*#@[]_"
# Llama-3's pre-tokenizer split pattern: digits in groups of at most three.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# The 3-digit numbers the gpt2_bpe style has as single tokens.
GPT2_THREE_DIGIT_TOKENS = range(100, 1000, 7)


def _wrap(backend, bos: str, eos: str, pad: str, unk: str | None = None):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad,
                                   unk_token=unk)


def _sentencepiece_like():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = list(string.digits + string.ascii_letters + PUNCTUATION) + ["▁"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    merges = []
    for c in string.ascii_letters:
        vocab["▁" + c] = len(vocab)
        merges.append(("▁", c))
    vocab["->"] = len(vocab)
    merges.append(("-", ">"))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return _wrap(backend, "<s>", "</s>", "<pad>", "<unk>")


def _byte_level(numbers, split_regex: str | None):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    specials = ["<|pad|>", "<|bos|>", "<|eos|>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = []

    def merge(a: str, b: str) -> None:
        if a in vocab and b in vocab and (a, b) not in merges:
            vocab.setdefault(a + b, len(vocab))
            merges.append((a, b))

    # shorter numbers first, and a merge for every split ("1"+"23" and "12"+"3" -> "123"): whichever
    # pair BPE joins first, a listed number always ends as one token
    for s in sorted(map(str, numbers), key=len):
        for i in range(1, len(s)):
            merge(s[:i], s[i:])
    for c in string.ascii_letters + string.digits:
        merge("Ġ", c)  # " q" -> "Ġq", " 7" -> "Ġ7": GPT-2 and Llama-3 fold a leading space in
    merge("-", ">")
    merge("Ġ", "->")
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    if split_regex is None:  # GPT-2: its own regex (digits in any run length)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    backend.decoder = decoders.ByteLevel()
    return _wrap(backend, "<|bos|>", "<|eos|>", "<|pad|>")


def build_tokenizer(style: str):
    if style == "single_digit":
        return _sentencepiece_like()
    if style == "multi_digit":
        return _byte_level(range(1000), LLAMA3_SPLIT)
    if style == "gpt2_bpe":
        return _byte_level(list(range(100)) + list(GPT2_THREE_DIGIT_TOKENS), None)
    raise ValueError(f"unknown tokenizer style {style!r}; expected one of {TOKENIZER_STYLES}")


def boundary_merging_tokenizer():
    """Character BPE without a pre-tokenizer whose merges join '=' with the digit after it."""
    from tokenizers import Tokenizer, decoders, models

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + list(string.digits + string.ascii_letters + PUNCTUATION + " "))}
    merges = []
    for d in string.digits:
        vocab["=" + d] = len(vocab)
        merges.append(("=", d))
    for c in string.ascii_lowercase:  # " q" is one token, so the cipher's answers stay separate
        vocab[" " + c] = len(vocab)
        merges.append((" ", c))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    return _wrap(backend, "<s>", "</s>", "<pad>", "<unk>")


def build_model(architecture: str, tokenizer, seed: int = 0, n_layers: int = 2, d_model: int = 32,
                n_heads: int = 4, n_kv_heads: int = 2, d_mlp: int = 64, max_len: int = 512,
                initializer_range: float = 0.1, sliding_window: int | None = None):
    """A tiny random-initialised causal LM (float32) whose vocabulary is the tokenizer's.
    `sliding_window` (default: max_len, i.e. no effect) sets the local attention span of the
    architectures that have one."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    window = sliding_window or max_len
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                  initializer_range=initializer_range)
    decoder = dict(hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                   num_attention_heads=n_heads, max_position_embeddings=max_len, **common)
    gqa = dict(decoder, num_key_value_heads=n_kv_heads)
    gemma = dict(gqa, head_dim=d_model // n_heads, query_pre_attn_scalar=d_model // n_heads, sliding_window=window)
    builders = {
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=d_model, n_inner=d_mlp, n_layer=n_layers, n_head=n_heads,
                                                          n_positions=max_len, **common)),
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**gqa, tie_word_embeddings=False)),
        "gemma2": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(**gemma)),
        "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(**gqa, sliding_window=window, tie_word_embeddings=False)),
        # the first layer full attention, the others local (Qwen-2's max_window_layers)
        "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**gqa, use_sliding_window=sliding_window is not None,
                                                             sliding_window=window, max_window_layers=1,
                                                             tie_word_embeddings=False)),
        "phi3": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(**gqa, original_max_position_embeddings=max_len,
                                                          sliding_window=window, tie_word_embeddings=False)),
        "gpt_neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**decoder, rotary_pct=0.25, use_parallel_residual=True,
                                                                    tie_word_embeddings=False)),
        "gemma3": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**gemma, sliding_window_pattern=2)),
    }
    if architecture not in builders:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {sorted(builders)}")
    model = builders[architecture]()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if architecture in ("gemma2", "gemma3") and "norm" in name:
                # HF initialises Gemma's RMSNorm weights to 0 (its norm multiplies by 1 + w); give the
                # extra post-attention / post-MLP and q/k norms some weight so that their effect shows
                p.normal_(0.0, 0.5)
            elif name.endswith("bias") and architecture in ("qwen2", "gpt_neox"):
                p.normal_(0.0, initializer_range)  # HF initialises biases to 0
    return model.eval()


def save_checkpoint(path: str | Path, architecture: str, style: str, seed: int = 0, tokenizer=None,
                    **model_kwargs) -> Path:
    """Build and save_pretrained a tokenizer + model pair to `path` (safetensors)."""
    path = Path(path)
    tok = tokenizer if tokenizer is not None else build_tokenizer(style)
    model = build_model(architecture, tok, seed=seed, **model_kwargs)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
