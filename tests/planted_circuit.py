"""A GPT-2-shaped model whose weights are set by hand so that it carries the paper's three head
groups, with known roles, on off-by-k addition prompts (single-digit tokenizer of tiny_checkpoints):

  layer 0  head 0  previous-token head P: from every token, half its attention on the token before
                   it and half on itself; copies the attended tokens' "is '='" flag and digit value
                   into the residual (so at a demo answer it writes "after '='" and half the answer's
                   value)
           head 1  a second previous-token head whose output nothing reads (a decoy)
  layer 1  head 0  function-induction head F: from each '=' attends to the demos' answers (the
                   tokens P marked "after '='"), copies the value P wrote there
           head 1  the same attention as F, output read by nothing (a decoy for the attention rule)
  layer 2  head 0  consolidation head C: from the read '=' attends to every '='; moves F's value to
                   the direction the unembedding reads as "the answer's digit value"
           head 1  uniform attention, output read by nothing

So the contrast prompts (answers shifted by k) raise the logit of larger digits through P -> F -> C
only: C alone has a direct effect, F feeds C's value, P feeds F's value, and each decoy either has
the right attention and no path (heads (0, 1), (1, 1)) or neither.

Every feature is stored in a pair of residual dimensions as (+v, -v), so the residual's mean is
exactly zero, and the layer norms have an epsilon so large that they are a fixed scaling, undone by
their weights: the model is linear where the design needs it to be."""

from __future__ import annotations

import math
import string
from pathlib import Path

import torch

FEATURES = ("eq", "num", "cos", "sin", "prev_eq", "prev_num", "fi_num", "out", "junk0", "junk1", "junk2")
D_MODEL, N_HEADS, N_LAYERS, N_POSITIONS = 32, 2, 3, 96
D_HEAD = D_MODEL // N_HEADS
EPS = 1e10  # layer-norm epsilon: LN(x) = x / sqrt(var + EPS) * w, a scaling to ~1e-9 for |x| < 100
THETA = 2 * math.pi / (2 * N_POSITIONS)  # position angle step; no wrap-around within N_POSITIONS
PLANTED = {"previous_token": [[0, 0]], "function_induction": [[1, 0]], "consolidation": [[2, 0]]}


def write(feature: str, value: float = 1.0) -> torch.Tensor:
    """The residual vector holding `value` on `feature`."""
    x = torch.zeros(D_MODEL)
    f = FEATURES.index(feature)
    x[2 * f], x[2 * f + 1] = value, -value
    return x


def read(feature: str) -> torch.Tensor:
    """The direction whose dot product with a residual is the value of `feature`."""
    return write(feature, 0.5)


def build_planted_model(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tokenizer), n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
                        n_inner=4, n_positions=N_POSITIONS, layer_norm_epsilon=EPS,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    ln_gain = math.sqrt(EPS)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.fill_(ln_gain)
        # token embeddings (tied with the unembedding): '=' flag, digit value, and the "answer
        # digit" direction the unembedding reads (logit(d) grows with d times the 'out' feature)
        vocab = tokenizer.get_vocab()
        for token, i in vocab.items():
            row = torch.zeros(D_MODEL)
            if token == "=":
                row += write("eq")
            if token in string.digits:
                row += write("num", float(token)) + write("out", float(token))
            model.transformer.wte.weight[i] = row
        for t in range(N_POSITIONS):
            model.transformer.wpe.weight[t] = write("cos", math.cos(t * THETA)) + write("sin", math.sin(t * THETA))

        scale = math.sqrt(D_HEAD)  # GPT-2 divides scores by sqrt(d_head)
        q_cols, k_cols, v_cols = [[torch.zeros(D_MODEL, D_MODEL) for _ in range(N_LAYERS)] for _ in range(3)]
        o_rows = [torch.zeros(D_MODEL, D_MODEL) for _ in range(N_LAYERS)]

        def head(layer, h, q=(), k=(), v=()):
            """q, k: (query direction, key direction) pairs summed into the score; v: (read, write)."""
            for j, (qd, kd) in enumerate(list(zip(q, k))):
                q_cols[layer][:, h * D_HEAD + j] = qd * scale
                k_cols[layer][:, h * D_HEAD + j] = kd
            for j, (rd, wd) in enumerate(v):
                v_cols[layer][:, h * D_HEAD + j] = rd
                o_rows[layer][h * D_HEAD + j] = wd

        # previous-token QK: score(t, s) = A cos((t - 1/2 - s) theta), maximal and equal at s = t - 1
        # and s = t, at least A theta^2 lower elsewhere
        a = 60.0 / THETA ** 2
        c, s = math.cos(THETA / 2), math.sin(THETA / 2)
        prev_q = (a * (c * read("cos") + s * read("sin")), a * (c * read("sin") - s * read("cos")))
        prev_k = (read("cos"), read("sin"))
        head(0, 0, prev_q, prev_k, [(read("eq"), write("prev_eq")), (read("num"), write("prev_num"))])
        head(0, 1, prev_q, prev_k, [(read("num"), write("junk0"))])
        # "after '='": P wrote prev_eq = 1/2 at an answer, and at a '=' itself (its own half), which
        # the key takes back
        after_eq = read("prev_eq") - 0.5 * read("eq")
        head(1, 0, [60.0 * read("eq")], [after_eq], [(read("prev_num"), write("fi_num"))])
        head(1, 1, [60.0 * read("eq")], [after_eq], [(read("prev_num"), write("junk1"))])
        head(2, 0, [60.0 * read("eq")], [read("eq")], [(read("fi_num"), write("out", 4.0))])
        head(2, 1, [], [], [(read("num"), write("junk2"))])
        for layer, block in enumerate(model.transformer.h):
            block.attn.c_attn.weight.copy_(torch.cat([q_cols[layer], k_cols[layer], v_cols[layer]], dim=1))
            block.attn.c_proj.weight.copy_(o_rows[layer])
    return model.eval()


def save_planted_checkpoint(path: str | Path) -> Path:
    from tiny_checkpoints import build_tokenizer

    path = Path(path)
    tokenizer = build_tokenizer("single_digit")
    build_planted_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
