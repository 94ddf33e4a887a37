"""Tiny GGUF files written with the `gguf` package's GGUFWriter (no downloads): random weights in
llama.cpp's tensor layout and a small tokenizer in the GGUF metadata, in two shapes:

  llama   Llama-style (SmolLM2's layout): grouped-query attention (4 query heads on 2 key/value
          heads), tied embeddings, a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) with
          merges; optionally with its matrices quantised to Q8_0 (`quant=True`).
  gemma3  Gemma-3-style (Gemma-3-270M's layout): 1 key/value head, q/k norms, post-attention and
          post-MLP norms (stored as w + 1, as llama.cpp writes Gemma norms), a SentencePiece vocabulary
          (`tokenizer.ggml.model = "llama"`, scores and token types, no merges: transformers rebuilds
          them from the vocabulary's order).

Both tokenizers cover every character of the task prompts (digits, letters, "+", "=", "->", " ",
"\\n"). `write_unsupported` writes a structurally valid file of an architecture nothing loads.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np

D_MODEL, D_MLP, N_LAYERS, HEAD_DIM = 32, 64, 2, 8
PUNCT = "+-=>?.,:;!()'\""


def _rng_weights(rng, shape, scale=0.2):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _byte_level_vocab():
    """GPT-2 byte-level BPE: specials, the 256-byte alphabet, then merges for " x" letters and '->'."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = list(bytes_to_unicode().values())
    tokens = specials + alphabet
    merges = []
    for c in string.ascii_lowercase:
        tokens.append("Ġ" + c)
        merges.append(f"Ġ {c}")
    tokens.append("->")
    merges.append("- >")
    tokens.append("Ġ->")
    merges.append("Ġ ->")
    token_type = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    return tokens, merges, token_type


def _sentencepiece_vocab():
    """Gemma-style: <pad> <eos> <bos> <unk>, characters, then "▁x" pieces and "->" in merge order."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    chars = list(string.digits + string.ascii_letters + PUNCT) + ["\n", "▁"]
    pieces = ["▁" + c for c in string.ascii_lowercase] + ["->", "▁->"]
    tokens = specials + chars + pieces
    scores = [0.0] * len(specials) + [-float(i) for i in range(len(chars) + len(pieces))]
    token_type = [3, 3, 3, 2] + [1] * (len(chars) + len(pieces))
    return tokens, scores, token_type


def write_tiny_gguf(path: str | Path, arch: str = "llama", quant: bool = False, seed: int = 0) -> Path:
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    if arch == "llama":
        n_heads, n_kv = 4, 2
        tokens, merges, token_type = _byte_level_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(token_type)
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_pad_token_id(2)
        w.add_add_bos_token(False)
        w.add_rope_dimension_count(HEAD_DIM)
    elif arch == "gemma3":
        n_heads, n_kv = 4, 1
        tokens, scores, token_type = _sentencepiece_vocab()
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(token_type)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(False)
        w.add_key_length(HEAD_DIM)
        w.add_value_length(HEAD_DIM)
        w.add_sliding_window(16)
    else:
        raise ValueError(arch)
    vocab = len(tokens)
    w.add_context_length(256)
    w.add_embedding_length(D_MODEL)
    w.add_block_count(N_LAYERS)
    w.add_feed_forward_length(D_MLP)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant else gguf.LlamaFileType.ALL_F32)

    def matrix(name, shape):
        data = _rng_weights(rng, shape)
        if quant:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, data)

    def norm(name, n):
        # near 1: a Llama norm's scale; a Gemma norm is stored as w + 1 (transformers subtracts 1)
        w.add_tensor(name, (1.0 + _rng_weights(rng, (n,), 0.1)).astype(np.float32))

    w.add_tensor("token_embd.weight", _rng_weights(rng, (vocab, D_MODEL), 0.5))
    for i in range(N_LAYERS):
        b = f"blk.{i}"
        norm(f"{b}.attn_norm.weight", D_MODEL)
        matrix(f"{b}.attn_q.weight", (n_heads * HEAD_DIM, D_MODEL))
        matrix(f"{b}.attn_k.weight", (n_kv * HEAD_DIM, D_MODEL))
        matrix(f"{b}.attn_v.weight", (n_kv * HEAD_DIM, D_MODEL))
        matrix(f"{b}.attn_output.weight", (D_MODEL, n_heads * HEAD_DIM))
        norm(f"{b}.ffn_norm.weight", D_MODEL)
        matrix(f"{b}.ffn_gate.weight", (D_MLP, D_MODEL))
        matrix(f"{b}.ffn_up.weight", (D_MLP, D_MODEL))
        matrix(f"{b}.ffn_down.weight", (D_MODEL, D_MLP))
        if arch == "gemma3":
            norm(f"{b}.attn_q_norm.weight", HEAD_DIM)
            norm(f"{b}.attn_k_norm.weight", HEAD_DIM)
            norm(f"{b}.post_attention_norm.weight", D_MODEL)
            norm(f"{b}.post_ffw_norm.weight", D_MODEL)
    norm("output_norm.weight", D_MODEL)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_unsupported(path: str | Path, arch: str = "fooformer") -> Path:
    """A valid GGUF (one tensor) of an architecture neither transformers nor the bridge knows."""
    import gguf

    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
