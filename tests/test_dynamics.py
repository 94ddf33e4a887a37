"""Checkpoints, clamping during training and progress measures of the built-in model (issue 13)."""

import random

import pytest
import torch
from safetensors.torch import load_file

from fi.build.training import build_model, build_tokenizer, char_ids, checkpoint_steps, make_batch, train_model
from fi.engine.clamping import active_at_checkpoint, answer_pattern, answer_positions, clamped, previous_token_pattern
from fi.engine.interventions import pattern_hook, qkv_hook, z_hook
from fi.methods.dynamics import Clamp, ClampedForward, uniform_pattern
from tests.conftest import tiny_train_cfg

MIX = {"addition": 0.5, "letter_shift": 0.5, "repeated_tokens": 0.0}


def _weights(folder):
    return load_file(folder / "model.safetensors")


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_char_table_gives_the_tokenizer_ids():
    tok = build_tokenizer()
    table, unk = char_ids(tok)
    rng = random.Random(0)
    alphabet = list(table) + ["é", "\t", "~", "{", "€"]
    for _ in range(200):
        text = "".join(rng.choices(alphabet, k=rng.randint(1, 30)))
        assert [table.get(c, unk) for c in text] == tok(text, add_special_tokens=False)["input_ids"]


def test_batches_carry_their_sources():
    tok = build_tokenizer()
    cfg = tiny_train_cfg(mix={"addition": 0.4, "letter_shift": 0.3, "repeated_tokens": 0.3})
    tokens, mask, sources = make_batch(random.Random(0), cfg, tok, 16, with_sources=True)
    assert len(sources) == 16 and set(sources) <= set(cfg["mix"])
    for row, src in zip(tokens, sources):
        text = "".join(tok.convert_ids_to_tokens(row.tolist()))
        assert ("+" in text) == (src == "addition") and ("->" in text) == (src == "letter_shift")


def test_checkpoint_steps():
    assert checkpoint_steps(tiny_train_cfg(steps=10)) == []
    assert checkpoint_steps(tiny_train_cfg(steps=10, checkpoints=[0, 3, 30])) == [0, 3, 10]
    assert checkpoint_steps(tiny_train_cfg(steps=10, checkpoint_every=4)) == [0, 4, 8, 10]


def test_checkpoint_k_is_the_weights_at_step_k(tmp_path, one_torch_thread):
    """Resuming from checkpoint k (weights, optimizer, data RNG) ends at the uninterrupted run's
    weights, so checkpoint k held the run's weights at step k; every checkpoint loads as a model."""
    from fi.engine.models import load_model

    cfg = tiny_train_cfg(mix=MIX, steps=6, checkpoints=[0, 3])
    curve = train_model(cfg, tmp_path / "full", progress=False)
    ckpts = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step0", "step3", "step6"]
    assert _same(_weights(ckpts / "step6"), _weights(tmp_path / "full"))
    train_model(cfg, tmp_path / "resumed", progress=False, resume=ckpts / "step3")
    assert _same(_weights(tmp_path / "resumed"), _weights(tmp_path / "full"))
    assert not _same(_weights(ckpts / "step3"), _weights(tmp_path / "full"))
    assert {"loss_addition", "loss_letter_shift"} <= set(curve.columns) and curve["loss_addition"].notna().all()
    loaded = load_model("step3", path=str(ckpts / "step3"), device="cpu")
    assert loaded.n_layers == 2 and loaded.n_heads == 4


def test_empty_clamps_train_exactly_as_unclamped(tmp_path, one_torch_thread):
    cfg = tiny_train_cfg(mix=MIX, steps=4)
    train_model(cfg, tmp_path / "plain", progress=False, prefetch=0)
    plain = _weights(tmp_path / "plain")
    for name, clamp in (("no_heads", Clamp((), "zero", 0, None)), ("no_steps", Clamp(((0, 1),), "zero", 2, 2)),
                        ("after_end", Clamp(((0, 1),), "zero", 4, None))):
        train_model(cfg, tmp_path / name, progress=False, clamps=[clamp])
        assert _same(_weights(tmp_path / name), plain), name
    # and a clamp that covers steps does change the weights
    train_model(cfg, tmp_path / "clamped", progress=False, clamps=[Clamp(((0, 1),), "zero", 1, 3)])
    assert not _same(_weights(tmp_path / "clamped"), plain)


def _model(cfg):
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(cfg, len(tok), tok)
    model.train()
    return model, tok


def _spy(store, key):
    def hook(x, hook):
        store[key] = x
        return x
    return hook


def test_zero_clamp_zeroes_the_head_and_stops_its_gradient(one_torch_thread):
    cfg = tiny_train_cfg(mix=MIX)
    model, tok = _model(cfg)
    tokens, mask = make_batch(random.Random(0), cfg, tok, 4)
    seen = {}
    fwd = ClampedForward(model, tok)
    with torch.no_grad():
        fwd(tokens, [], [(z_hook(1), _spy(seen, "plain"))])
    logits = fwd(tokens, [Clamp(((1, 2),), "zero")], [(z_hook(1), _spy(seen, "z"))])
    z = seen["z"]
    assert torch.equal(z[:, :, 2], torch.zeros_like(z[:, :, 2]))
    # the layer's other heads are untouched: their outputs are the unclamped run's, and not zero
    assert torch.equal(z[:, :, [0, 1, 3]], seen["plain"][:, :, [0, 1, 3]])
    assert seen["plain"][:, :, 2].abs().sum() > 0 and z[:, :, [0, 1, 3]].abs().sum() > 0
    torch.nn.functional.cross_entropy(logits[:, :-1][mask[:, 1:]], tokens[:, 1:][mask[:, 1:]]).backward()
    attn = model.model.layers[1].self_attn
    d = cfg["d_model"] // cfg["n_heads"]
    rows = slice(2 * d, 3 * d)
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert torch.equal(proj.weight.grad[rows], torch.zeros_like(proj.weight.grad[rows]))
        assert proj.weight.grad[: 2 * d].abs().sum() > 0
    assert torch.equal(attn.o_proj.weight.grad[:, rows], torch.zeros_like(attn.o_proj.weight.grad[:, rows]))
    # the other layer's heads and the same layer's other heads still learn
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_zero_clamp_holds_in_every_training_forward(tmp_path, one_torch_thread, monkeypatch):
    zs = []
    call = ClampedForward.__call__

    def spying(self, tokens, clamps, extra_hooks=()):
        return call(self, tokens, clamps, list(extra_hooks) + [(z_hook(0), lambda x, hook: zs.append(x.detach()) or x)])
    monkeypatch.setattr(ClampedForward, "__call__", spying)
    train_model(tiny_train_cfg(mix=MIX, steps=5), tmp_path / "m", progress=False, clamps=[Clamp(((0, 3),), "zero", 1, 4)])
    assert len(zs) == 3 and all(torch.equal(z[:, :, 3], torch.zeros_like(z[:, :, 3])) for z in zs)


def test_clamped_forward_without_clamps_is_the_model(one_torch_thread):
    cfg = tiny_train_cfg(mix=MIX)
    model, tok = _model(cfg)
    tokens, _ = make_batch(random.Random(1), cfg, tok, 4)
    with torch.no_grad():
        torch.testing.assert_close(ClampedForward(model, tok)(tokens, []), model(tokens).logits, atol=1e-5, rtol=1e-5)


def test_pattern_clamp_freezes_the_attention(one_torch_thread):
    cfg = tiny_train_cfg(mix=MIX)
    model, tok = _model(cfg)
    tokens, _ = make_batch(random.Random(2), cfg, tok, 3)
    seen = {}
    spies = [(pattern_hook(0), _spy(seen, "pattern")), (qkv_hook(0, "v"), _spy(seen, "v")), (z_hook(0), _spy(seen, "z"))]
    ClampedForward(model, tok)(tokens, [Clamp(((0, 1),), "pattern_uniform")], spies)
    n = tokens.shape[1]
    uniform = uniform_pattern(n)
    assert torch.equal(seen["pattern"][:, 1], uniform.expand(3, n, n))
    assert not torch.allclose(seen["pattern"][:, 0], uniform.expand(3, n, n))
    # the head's output is that pattern applied to its values: the running mean of v
    v = seen["v"][:, :, 1]
    torch.testing.assert_close(seen["z"][:, :, 1], torch.einsum("qk,bkd->bqd", uniform, v), atol=1e-5, rtol=1e-5)


def test_reference_and_mean_clamps_hold_their_defining_property(tmp_path, one_torch_thread):
    """pattern_ref: the head's pattern is the reference model's on the batch; value_ref: its values
    (hook_v) are the reference's; output_ref: its output is; mean: its output at each position is the
    batch mean of what it would have been. Each also holds in every clamped training forward."""
    cfg = tiny_train_cfg(mix=MIX, steps=3, checkpoints=[0])
    train_model(cfg, tmp_path / "ref", progress=False)
    ref = str(tmp_path / "ref")
    model, tok = _model(cfg)
    tokens, _ = make_batch(random.Random(3), cfg, tok, 3)
    fwd = ClampedForward(model, tok)
    loaded = fwd.reference(ref)
    names = {pattern_hook(1), z_hook(1), qkv_hook(1, "v")}
    with torch.no_grad():
        _, cache = loaded.bridge.run_with_cache(tokens, names_filter=lambda h: h in names)
        seen = {}
        fwd(tokens, [], [(z_hook(1), _spy(seen, "plain_z")), (qkv_hook(1, "v"), _spy(seen, "plain_v"))])
        fwd(tokens, [Clamp(((1, 0),), "pattern_ref", reference=ref)], [(pattern_hook(1), _spy(seen, "p"))])
        fwd(tokens, [Clamp(((1, 0),), "value_ref", reference=ref)], [(qkv_hook(1, "v"), _spy(seen, "v"))])
        fwd(tokens, [Clamp(((1, 0),), "output_ref", reference=ref)], [(z_hook(1), _spy(seen, "z"))])
        fwd(tokens, [Clamp(((1, 0), (1, 2)), "mean")], [(z_hook(1), _spy(seen, "zm"))])
    assert torch.equal(seen["p"][:, 0], cache[pattern_hook(1)][:, 0])
    assert not torch.allclose(seen["p"][:, 1], cache[pattern_hook(1)][:, 1])  # other heads: the model's own
    assert torch.equal(seen["v"][:, :, 0], cache[qkv_hook(1, "v")][:, :, 0])
    assert torch.equal(seen["v"][:, :, 1], seen["plain_v"][:, :, 1])
    assert not torch.allclose(seen["plain_v"][:, :, 0], cache[qkv_hook(1, "v")][:, :, 0])
    assert torch.equal(seen["z"][:, :, 0], cache[z_hook(1)][:, :, 0])
    mean = seen["plain_z"][:, :, [0, 2]].mean(0, keepdim=True)
    torch.testing.assert_close(seen["zm"][:, :, [0, 2]], mean.expand(3, -1, -1, -1), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(seen["plain_z"][0, :, 0], mean[0, :, 0])  # the rows did differ
    assert torch.equal(seen["zm"][:, :, [1, 3]], seen["plain_z"][:, :, [1, 3]])

    # in training: every forward of the covered steps (0, 1) holds the property, on its own batch
    call = ClampedForward.__call__
    for kind, hook in (("pattern_ref", pattern_hook(0)), ("value_ref", qkv_hook(0, "v")), ("mean", z_hook(0)),
                       ("pattern_uniform", pattern_hook(0))):
        checked = []

        def spying(self, tokens, clamps, extra_hooks=(), name=hook, kind=kind, checked=checked):
            def check(x, hook):
                if kind in ("pattern_ref", "value_ref"):
                    with torch.no_grad():
                        _, c = self.reference(ref).bridge.run_with_cache(tokens, names_filter=lambda h: h == name)
                    checked.append(torch.equal(x[:, 0] if kind == "pattern_ref" else x[:, :, 0],
                                               c[name][:, 0] if kind == "pattern_ref" else c[name][:, :, 0]))
                elif kind == "mean":
                    checked.append(torch.equal(x[:, :, 0], x[:1, :, 0].expand_as(x[:, :, 0])))
                else:
                    checked.append(torch.equal(x[:, 0], uniform_pattern(x.shape[-1]).expand_as(x[:, 0])))
                return x
            return call(self, tokens, clamps, list(extra_hooks) + [(name, check)])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ClampedForward, "__call__", spying)
            train_model(cfg, tmp_path / kind, progress=False, clamps=[Clamp(((0, 0),), kind, 0, 2, reference=ref)])
        assert checked == [True, True], kind


def test_clamp_config():
    c = Clamp.from_config({"heads": [[0, 1]], "kind": "mean", "steps": [10, None]})
    assert c.covers(10) and c.covers(10**6) and not c.covers(9)
    with pytest.raises(ValueError, match="reference"):
        Clamp.from_config({"heads": [[0, 1]], "kind": "pattern_ref"})
    with pytest.raises(ValueError, match="'pattern_induction'"):
        Clamp(((0, 1),), "pattern_induction")
    with pytest.raises(ValueError, match=r"\[5, 3\)"):
        Clamp(((0, 1),), "zero", 5, 3)
    with pytest.raises(ValueError, match=r"head \(0, -1\)"):
        Clamp(((0, -1),), "zero")


def test_bad_clamps_are_refused_when_the_dag_is_planned():
    from fi.plan import dynamics_runs
    from fi.plan.grid import ConfigError

    def config(clamp):
        return {"models": {"toy": {"builtin": True, "train": tiny_train_cfg(steps=10, checkpoint_every=5)}},
                "dynamics": {"seeds": [], "runs": [{"name": "r", "clamps": [clamp]}]}}
    assert len(dynamics_runs.runs(config({"heads": [[1, 3]], "kind": "pattern_answers"}))) == 2
    with pytest.raises(ConfigError, match=r"dynamics.runs.r.clamps: head \[2, 0\] .*2 layers x 4 heads"):
        dynamics_runs.runs(config({"heads": [[2, 0]], "kind": "zero"}))
    with pytest.raises(ConfigError, match="'pattern_perfect'"):
        dynamics_runs.runs(config({"heads": [[0, 0]], "kind": "pattern_perfect"}))
    with pytest.raises(ConfigError, match=r"steps \[50, 10\]"):
        dynamics_runs.runs(config({"heads": [[0, 0]], "steps": [50, 10]}))


def test_clamps_active_at_a_checkpoint():
    """Checkpoint s holds the weights the training forward of step s runs with: the clamps covering
    step s; the final checkpoint (no step of its own) takes the last step's."""
    whole, early, late, to_end = (Clamp(((0, 0),), "zero"), Clamp(((0, 1),), "zero", 0, 4),
                                  Clamp(((0, 2),), "zero", 2, None), Clamp(((0, 3),), "zero", 0, 8))
    clamps = [whole, early, late, to_end]
    assert active_at_checkpoint(clamps, 0, 8) == [whole, early, to_end]
    assert active_at_checkpoint(clamps, 2, 8) == [whole, early, late, to_end]
    assert active_at_checkpoint(clamps, 4, 8) == [whole, late, to_end]  # released at its stop
    assert active_at_checkpoint(clamps, 8, 8) == [whole, late, to_end]  # the final: step 7's
    assert active_at_checkpoint([Clamp((), "zero")], 0, 8) == []


def test_answer_positions_are_the_training_targets():
    """The separators and answers read from the tokens are, in training batches, the token before
    each target segment and the target tokens but the newline: the per-sequence masks the
    pattern_answers clamp uses."""
    tok = build_tokenizer()
    cfg = tiny_train_cfg(mix={"addition": 0.4, "letter_shift": 0.4, "repeated_tokens": 0.2}, items=5, max_word_len=3)
    tokens, mask, sources = make_batch(random.Random(4), cfg, tok, 24, with_sources=True)
    separators, answers = answer_positions(tokens, tok)
    newline = tok.convert_tokens_to_ids("\n")
    for row, src in enumerate(sources):
        m = mask[row]
        starts = m & ~torch.cat([torch.tensor([False]), m[:-1]])  # first token of each target segment
        if src == "repeated_tokens":  # no items: the random characters have no '=' nor '->' here
            continue
        assert torch.equal(separators[row], torch.cat([starts[1:], torch.tensor([False])])), src
        assert torch.equal(answers[row], m & (tokens[row] != newline)), src
        assert separators[row].sum() == cfg["items"]
    assert {"addition", "letter_shift", "repeated_tokens"} == set(sources)


def test_perfect_pattern_clamps(one_torch_thread):
    """pattern_previous_token: each position attends to the one before (0 to itself); pattern_answers:
    from each '=' (and the answer it predicts) uniformly to the earlier items' answers, elsewhere to
    itself. The head's output is that pattern applied to its values."""
    tok = build_tokenizer()
    text = "0+1=1\n2+2=4\n3+1=4\n5+1="
    tokens = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
    pattern = answer_pattern(tokens, tok)[0]
    chars = ["^"] + list(text)
    eq = [i for i, c in enumerate(chars) if c == "="]
    answer_at = [i + 1 for i in eq[:-1]]  # the single-digit answers
    assert torch.equal(pattern[eq[0]], torch.eye(len(chars))[eq[0]])  # no earlier answer: itself
    for k, q in enumerate(eq[1:], start=1):
        expected = torch.zeros(len(chars))
        expected[answer_at[:k]] = 1.0 / k
        assert torch.equal(pattern[q], expected)
        assert q + 1 == len(chars) or torch.equal(pattern[q + 1], expected)  # the answer token's row too
    others = [i for i in range(len(chars)) if i not in eq and i not in answer_at]
    assert torch.equal(pattern[others], torch.eye(len(chars))[others])

    cfg = tiny_train_cfg(mix=MIX)
    model, tok = _model(cfg)
    batch, _ = make_batch(random.Random(5), cfg, tok, 3)
    n = batch.shape[1]
    fwd = ClampedForward(model, tok)
    for kind, expected in (("pattern_previous_token", previous_token_pattern(n).expand(3, n, n)),
                           ("pattern_answers", answer_pattern(batch, tok))):
        seen = {}
        with torch.no_grad():
            fwd(batch, [Clamp(((1, 1),), kind)], [(pattern_hook(1), _spy(seen, "p")), (qkv_hook(1, "v"), _spy(seen, "v")),
                                                  (z_hook(1), _spy(seen, "z"))])
        assert torch.equal(seen["p"][:, 1], expected), kind
        assert not torch.allclose(seen["p"][:, 0], expected), kind
        torch.testing.assert_close(seen["z"][:, :, 1], torch.einsum("bqk,bkd->bqd", expected, seen["v"][:, :, 1]),
                                   atol=1e-5, rtol=1e-5)
    prev = previous_token_pattern(4)
    assert prev[0, 0] == 1 and all(prev[q, q - 1] == 1 for q in range(1, 4)) and torch.equal(prev.sum(1), torch.ones(4))


def test_clamped_checkpoint_runs_the_training_forward(tmp_path, one_torch_thread):
    """A loaded checkpoint under `clamped` gives, for every kind, the logits of the training forward
    with that clamp; a caller's hooks see the clamped values; a block part called directly (analytic
    path patching) is not clamped again; outside the block the checkpoint is the plain model."""
    from fi.engine.models import load_model
    from fi.plan.dynamics_runs import KINDS

    cfg = tiny_train_cfg(mix=MIX, steps=2)
    train_model(cfg, tmp_path / "ref", progress=False)
    model, tok = _model(cfg)
    model.eval()
    model.save_pretrained(tmp_path / "ck")
    tok.save_pretrained(tmp_path / "ck")
    loaded = load_model("ck", path=str(tmp_path / "ck"), device="cpu")
    tokens, _ = make_batch(random.Random(6), cfg, tok, 3)
    fwd = ClampedForward(model, tok)
    with torch.no_grad():
        plain = loaded.bridge(tokens)
        for kind in KINDS:
            clamps = [Clamp(((0, 1), (1, 2)), kind, reference=str(tmp_path / "ref"))]
            with clamped(loaded, clamps):
                ours = loaded.bridge(tokens)
                seen = {}
                loaded.bridge.run_with_hooks(tokens, fwd_hooks=[(z_hook(1), _spy(seen, "z"))])
            assert torch.equal(ours, fwd(tokens, clamps)), kind
            assert not torch.allclose(ours, plain), kind
            with clamped(loaded, clamps):  # a run from a residual stream (path patching's run 1)
                resid = torch.randn(3, tokens.shape[1], cfg["d_model"])
                loaded.bridge.run_with_hooks(resid, start_at_layer=1, fwd_hooks=[(z_hook(1), _spy(seen, "z1"))])
            if kind == "zero":
                assert torch.equal(seen["z"][:, :, 2], torch.zeros_like(seen["z"][:, :, 2]))
                assert torch.equal(seen["z1"][:, :, 2], torch.zeros_like(seen["z1"][:, :, 2]))
                with clamped(loaded, clamps):
                    z = torch.ones(2, 1, cfg["d_model"])  # heads' outputs side by side, as fi.engine.patching passes them
                    direct = loaded.bridge.blocks[1].attn.o(z.clone())
                torch.testing.assert_close(direct, loaded.bridge.blocks[1].attn.o(z.clone()))
        assert torch.equal(loaded.bridge(tokens), plain)


def _zero_head_weights(folder, out, layer, head, d_head):
    """The checkpoint with one head's output-projection columns zeroed: the zero clamp as weights."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("training_state.pt"))
    w = load_file(folder / "model.safetensors")
    key = f"model.layers.{layer}.self_attn.o_proj.weight"
    w[key] = w[key].clone()
    w[key][:, head * d_head:(head + 1) * d_head] = 0.0
    save_file(w, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_measures_of_a_clamped_run_go_through_its_clamps(tmp_path, one_torch_thread):
    """A head zeroed throughout training is measured zeroed at every checkpoint: its path score to
    the output is exactly 0 and the accuracies and logit differences are those of the clamped forward
    (the checkpoint with the head's output projection zeroed); the same checkpoints measured without
    clamps (clamps.json empty) give the plain model's, where the head's score is not 0."""
    import json

    import pandas as pd

    from fi.build.training import checkpoint_dir
    from fi.engine.models import load_model
    from fi.engine.pairs import build_patching_data
    from fi.engine.patching import Patcher
    from fi.io import read_jsonl
    from fi.methods.dynamics import measure_checkpoint, progress_measures, train_run
    from fi.methods.evaluation import evaluate_task
    from fi.plan.tasks import get_family
    from fi.stages import make_dataset

    cfg = tiny_train_cfg(mix=MIX, steps=8, checkpoints=[0, 4])
    run = tmp_path / "run"
    train_run(cfg, [{"heads": [[0, 1]], "kind": "zero"}], str(run), threads=1)
    cell = {"task": "addition", "variant": "setting1_nmax9_offset1", "shots": 4}
    dataset = tmp_path / "data.jsonl"
    make_dataset("addition", cell["variant"], {"n_examples": 12, "n_demos": 8, "seed": 42}, str(dataset))
    params = {"max_examples": 12, "batch_size": 5}
    ht = {"seq_len": 10, "n_seqs": 4, "seed": 0, "threshold": 0.3}
    family = get_family("addition")
    variant = family.parse_variant(cell["variant"])
    records = read_jsonl(str(dataset))
    for step in (0, 4, 8):
        out = tmp_path / f"step{step}.parquet"
        measure_checkpoint(str(run), step, cfg, [cell], [str(dataset)], ht, params, {"run": "zero"}, str(out))
        df = pd.read_parquet(out)
        assert set(df["clamps"]) == {json.dumps([{"kind": "zero", "heads": [[0, 1]], "steps": [0, None]}])}
        path = df[df["measure"] == "path_output"].set_index(["layer", "head"])["value"]
        assert path[(0, 1)] == 0.0 and (path.drop((0, 1)) != 0).all(), step
        surgery = load_model("s", path=str(_zero_head_weights(checkpoint_dir(run, step), tmp_path / f"s{step}", 0, 1,
                                                               cfg["d_model"] // cfg["n_heads"])), device="cpu")
        scores = evaluate_task(surgery, family, variant, records, 4)
        val = df.set_index("measure")["value"]
        assert val["cf_acc"] == scores["cf_correct"].mean() and val["orig_acc"] == scores["orig_correct"].mean()
        patcher = Patcher(surgery, build_patching_data(surgery, family, variant, records, 4, 12), batch_size=5)
        assert val["ld_normal"] == pytest.approx(patcher.ld_normal, abs=1e-5)
        plain = progress_measures(str(checkpoint_dir(run, step)), cfg, [cell], [str(dataset)], ht, 12, 5)
        assert abs(plain.set_index("measure")["value"]["ld_normal"] - val["ld_normal"]) > 1e-4
        plain_path = plain[plain["measure"] == "path_output"].set_index(["layer", "head"])["value"]
        assert abs(plain_path[(0, 1)]) > 1e-4
    # an empty-clamp run measures as before
    (run / "clamps.json").write_text("[]")
    measure_checkpoint(str(run), 8, cfg, [cell], [str(dataset)], ht, params, {"run": "zero"}, str(tmp_path / "e.parquet"))
    empty = pd.read_parquet(tmp_path / "e.parquet")
    assert set(empty["clamps"]) == {"[]"}
    pd.testing.assert_frame_equal(empty.drop(columns=["run", "step", "seconds"]), plain)


def test_progress_measures_of_the_final_checkpoint_equal_the_grids_attribution(tmp_path, one_torch_thread):
    """The measure stage on the final checkpoint gives the path scores and accuracies the grid's own
    stages (attribute, evaluate, head_types) give on the trained model folder; aggregation, formation
    steps and the figure run on its output."""
    import pandas as pd

    from fi.methods.dynamics import aggregate_dynamics, measure_checkpoint
    from fi.plan.params import AttributionParams, HeadTypeParams, ModelSpec
    from fi.report.plots import plot_model_dynamics
    from fi.stages import attribute, evaluate, head_types, make_dataset

    cfg = tiny_train_cfg(mix=MIX, steps=8, checkpoints=[0, 4])
    model_dir = tmp_path / "fi-toy"
    train_model(cfg, model_dir, progress=False)
    cell = {"task": "addition", "variant": "setting1_nmax9_offset1", "shots": 4}
    dataset = tmp_path / "data.jsonl"
    make_dataset("addition", cell["variant"], {"n_examples": 12, "n_demos": 8, "seed": 42}, str(dataset))
    params = {"max_examples": 12, "batch_size": 5}
    ht = {"seq_len": 10, "n_seqs": 4, "seed": 0, "threshold": 0.3}
    keys = {"model": "fi-toy", "run": "baseline", "seed": 0}
    outs = []
    for step in (0, 4, 8):
        outs.append(tmp_path / f"step{step}.parquet")
        measure_checkpoint(str(model_dir), step, cfg, [cell], [str(dataset)], ht, params, keys, str(outs[-1]))
    final = pd.read_parquet(outs[-1])
    model = ModelSpec("fi-toy", str(model_dir), "float32")
    attribution = AttributionParams(methods=("path",), receivers=("output",), position_groups=False, **params)
    grid_attr = attribute(model, "addition", cell["variant"], 4, str(dataset), str(tmp_path / "attr.parquet"),
                          attribution, device="cpu")
    ours = final[final["measure"] == "path_output"].set_index(["layer", "head"])["value"]
    theirs = grid_attr.set_index(["layer", "head"])["score"]
    assert len(ours) == 8 and ours.sort_index().equals(theirs.sort_index())
    scores = evaluate(model, "addition", cell["variant"], 4, str(dataset), str(tmp_path / "eval.parquet"), device="cpu")
    val = final.set_index("measure")["value"]
    assert val["cf_acc"] == scores["cf_correct"].mean() and val["orig_acc"] == scores["orig_correct"].mean()
    types = head_types(model, str(tmp_path / "types.parquet"), HeadTypeParams(**ht), device="cpu")
    ind = final[final["measure"] == "induction_score"].set_index(["layer", "head"])["value"].sort_index()
    assert ind.equals(types.set_index(["layer", "head"])["induction_score"].sort_index())
    att = final[final["measure"] == "attn_query_answers"]["value"]
    assert len(att) == 8 and ((att >= 0) & (att <= 1)).all()
    assert {f"heldout_loss_{s}" for s in ("addition", "letter_shift", "repeated_tokens")} <= set(final["measure"])
    aggregate_dynamics([str(p) for p in outs], 0.2, str(tmp_path / "dyn.parquet"), str(tmp_path / "form.parquet"),
                       str(tmp_path / "summary.parquet"))
    table = pd.read_parquet(tmp_path / "dyn.parquet")
    assert sorted(table["step"].unique()) == [0, 4, 8]
    form = pd.read_parquet(tmp_path / "form.parquet")
    assert len(form) == 8 and {"formation_step", "first_step"} <= set(form.columns)
    summary = pd.read_parquet(tmp_path / "summary.parquet")
    assert summary[["run", "n_seeds"]].values.tolist() == [["baseline", 1]]
    plot_model_dynamics(str(tmp_path / "dyn.parquet"), str(tmp_path / "form.parquet"), "fi-toy", str(tmp_path / "d.png"))
    assert (tmp_path / "d.png").stat().st_size > 0


def test_formation_steps():
    import pandas as pd

    from fi.methods.dynamics import formation_steps

    rows = []
    for step, (a, b) in zip([0, 10, 20, 30], [(0.0, 0.0), (-0.5, 0.0), (-0.1, -0.3), (-0.6, -0.4)]):
        for head, v in ((0, a), (1, b)):
            rows.append(dict(model="m", run="baseline", seed=0, task="addition", variant="v", shots=4, layer=0,
                             head=head, step=step, measure="path_output", value=v))
    f = formation_steps(pd.DataFrame(rows), 0.2).set_index("head")
    assert f.loc[0, "first_step"] == 10 and f.loc[0, "formation_step"] == 30
    assert f.loc[1, "first_step"] == 20 and f.loc[1, "formation_step"] == 20
    # a checkpoint whose logit-difference gap is below min_gap has no FI head
    for step, gap in zip([0, 10, 20, 30], [0.0, 0.1, 2.0, 3.0]):
        for m, v in (("ld_normal", gap), ("ld_contrast", 0.0)):
            rows.append(dict(model="m", run="baseline", seed=0, task="addition", variant="v", shots=4, layer=-1,
                             head=-1, step=step, measure=m, value=v))
    f = formation_steps(pd.DataFrame(rows), 0.2, min_gap=0.5).set_index("head")
    assert f.loc[0, "first_step"] == 30 and f.loc[0, "formation_step"] == 30 and f.loc[1, "first_step"] == 20


def test_formation_summary_over_seeds():
    """Per run: the first FI head's formation step over seeds (mean, min, max, which head), the
    delay against the baseline, and the final cf_acc."""
    import numpy as np
    import pandas as pd

    from fi.methods.dynamics import formation_summary

    cell = dict(model="m", task="addition", variant="v", shots=4)
    formed = {("baseline", 0): {(0, 3): 150, (1, 0): 300}, ("baseline", 1): {(0, 1): 200},
              ("zero", 0): {(1, 0): 250}, ("zero", 1): {}}
    formation = pd.DataFrame([dict(cell, run=r, seed=s, layer=a, head=b, formation_step=step, final_score=-0.5)
                              for (r, s), heads in formed.items() for (a, b), step in heads.items()]
                             + [dict(cell, run="zero", seed=1, layer=0, head=0, formation_step=np.nan, final_score=0.0)])
    acc = {("baseline", 0): 1.0, ("baseline", 1): 0.9, ("zero", 0): 0.8, ("zero", 1): 0.2}
    table = pd.DataFrame([dict(cell, run=r, seed=s, step=step, measure="cf_acc", layer=-1, head=-1,
                               value=v if step == 350 else 0.0) for (r, s), v in acc.items() for step in (0, 350)])
    out = formation_summary(table, formation).set_index("run")
    assert out.loc["baseline", "formation_mean"] == 175 and out.loc["baseline", "formation_min"] == 150
    assert out.loc["baseline", "fi_head_by_seed"] == "0:L0H3, 1:L0H1"
    assert out.loc["zero", "n_formed"] == 1 and out.loc["zero", "formation_max"] == 250
    assert out.loc["zero", "delay_vs_baseline"] == 75 and out.loc["zero", "fi_head_by_seed"] == "0:L1H0, 1:-"
    assert out.loc["zero", "final_cf_acc_mean"] == pytest.approx(0.5) and out.loc["zero", "final_cf_acc_min"] == 0.2


def test_prefetching_draws_the_same_batches(tmp_path, one_torch_thread):
    cfg = tiny_train_cfg(mix=MIX, steps=4, checkpoints=[2])
    train_model(cfg, tmp_path / "a", progress=False, prefetch=0)
    train_model(cfg, tmp_path / "b", progress=False, prefetch=3)
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    a = torch.load(tmp_path / "a/checkpoints/step2/training_state.pt", weights_only=True)["rng"]
    b = torch.load(tmp_path / "b/checkpoints/step2/training_state.pt", weights_only=True)["rng"]
    assert a == b


def test_fi_clamps_of_another_cell_use_each_seeds_baseline(tmp_path):
    """`heads: fi` with a `cell` (the cipher's FI head) comes from the final measures of the same
    seed's baseline at every seed, the model's own included; a cell the checkpoints do not measure is
    refused when the DAG is planned, naming it."""
    import json

    import pandas as pd

    from fi.methods.dynamics import train_run
    from fi.plan import dynamics_runs
    from fi.plan.grid import ConfigError

    cipher = {"task": "cipher", "variant": "maxlen1_offset1", "shots": 4}
    addition = {"task": "addition", "variant": "setting1_nmax9_offset1", "shots": 4}
    train = tiny_train_cfg(steps=4, checkpoint_every=2)
    config = {"models": {"toy": {"builtin": True, "train": train}}, "discovery": {"cell": addition},
              "dynamics": {"seeds": [0, 7], "cells": [cipher], "runs": [
                  {"name": "zero_cipher_fi", "clamps": [{"heads": "fi", "cell": cipher, "kind": "zero"}]}]}}
    runs = dynamics_runs.runs(config)
    by = {(r.name, r.seed): r for r in runs}
    for seed in (0, 7):
        run = by[("zero_cipher_fi", seed)]
        assert dynamics_runs.needs_cell_heads(run) and not dynamics_runs.needs_fi_heads(run)
        assert dynamics_runs.baseline_final_measures(run, runs) == \
            f"results/dynamics/toy/measures/baseline/seed{seed}/step4.parquet"
        assert dynamics_runs.clamp_entries(run)[0]["cell"] == cipher

    rows = [{"measure": "path_output", **addition, "layer": 0, "head": 0, "value": -0.9},
            {"measure": "path_output", **cipher, "layer": 1, "head": 2, "value": -0.6},
            {"measure": "path_output", **cipher, "layer": 0, "head": 1, "value": -0.1}]
    pd.DataFrame(rows).to_parquet(tmp_path / "m.parquet")
    discovery = {"cell": addition, "criterion": "top_k", "top_k": 1, "threshold": 0.2}
    train_run(train, dynamics_runs.clamp_entries(by[("zero_cipher_fi", 7)]), str(tmp_path / "run"),
              fi_measures=str(tmp_path / "m.parquet"), discovery=discovery, threads=1)
    applied = json.loads((tmp_path / "run" / "clamps.json").read_text())
    assert applied[0]["heads"] == [[1, 2]] and applied[0]["cell"] == cipher

    elsewhere = {**cipher, "variant": "maxlen1_offset2"}
    config["dynamics"]["runs"][0]["clamps"][0]["cell"] = elsewhere
    with pytest.raises(ConfigError, match="maxlen1_offset2.*not measured"):
        dynamics_runs.runs(config)


def test_fi_clamps_at_other_seeds_use_that_seeds_own_fi_head(tmp_path):
    """`heads: fi` is the grid's FI head at the model's seed, and at another seed the FI head of that
    seed's own baseline: picked from its final checkpoint's path scores by the discovery criterion."""
    import pandas as pd

    from fi.methods.dynamics import fi_heads_from_measures
    from fi.plan import dynamics_runs

    config = {"models": {"toy": {"builtin": True, "train": tiny_train_cfg(steps=10, checkpoint_every=5)}},
              "dynamics": {"seeds": [0, 7], "runs": [{"name": "zero_fi", "clamps": [{"heads": "fi", "kind": "zero"}]}]}}
    runs = dynamics_runs.runs(config)
    by = {(r.name, r.seed): r for r in runs}
    own = by[("zero_fi", 0)]
    assert dynamics_runs.fi_heads_source(own, runs) == ("heads", "results/heads/toy.json")
    other = by[("zero_fi", 7)]
    assert dynamics_runs.fi_heads_source(other, runs) == (
        "measures", "results/dynamics/toy/measures/baseline/seed7/step10.parquet")

    cell = {"task": "addition", "variant": "setting1_nmax9_offset1", "shots": 4}
    scores = {(0, 0): -0.1, (0, 3): -0.7, (1, 2): -0.4, (1, 1): 0.3}
    rows = [{"measure": "path_output", **cell, "layer": a, "head": b, "value": v} for (a, b), v in scores.items()]
    rows += [{"measure": "path_output", **cell, "variant": "maxlen1_offset1", "task": "cipher", "layer": 1,
              "head": 1, "value": -0.9}]
    pd.DataFrame(rows).to_parquet(tmp_path / "m.parquet")
    discovery = {"cell": cell, "criterion": "top_k", "top_k": 1, "threshold": 0.2}
    assert fi_heads_from_measures(str(tmp_path / "m.parquet"), discovery) == [[0, 3]]
    assert fi_heads_from_measures(str(tmp_path / "m.parquet"), {**discovery, "criterion": "threshold"}) == [[0, 3], [1, 2]]
