"""Meta-learners: each writes the gradient its algorithm defines into .grad and nothing else."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import comparable, crash_at, final_weights, records, tiny_run, write_run_dir
from metapretrain.config.load import run_config_from_dict
from metapretrain.config.schema import subschema
from metapretrain.meta import episode_builder, known_learners, learner
from metapretrain.meta import registry as meta_registry
from metapretrain.meta.head import EpisodeHead
from metapretrain.meta.maml_ntp import InnerOptimizer, adapted_names
from metapretrain.model import Decoder, ModelConfig
from metapretrain.train.steps import StepContext, TrainingData, known_step_kinds

EOS, MASK, VOCAB = 0, 1, 64
TINY = ModelConfig(d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=32, vocab_size=VOCAB, max_seq_len=32)


@pytest.fixture(scope="module")
def shard() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.integers(2, VOCAB, size=8_000).astype(np.uint16)
    x[rng.random(len(x)) < 0.02] = EOS
    return x


def make(learner_name: str, shard, meta: dict | None = None, train: dict | None = None, seed: int = 0):
    """(learner, decoder) for a tiny decoder; dropout off so gradients are exact functions of the episode."""
    meta = {
        "learner": learner_name,
        "episode": {"n_way": 4, "k_shot": 2, "q_query": 2, "window": 8, "min_count": 4, "max_frequency": 0.1},
        "head": {"layers": 2, "width": 8, "dropout": 0.0},
        "inner": {"steps": 2, "lr": 0.5},
        **(meta or {}),
    }
    cfg = run_config_from_dict({"meta": meta, "train": {"seq_len": 16, **(train or {})}})
    torch.manual_seed(seed)
    model = Decoder(TINY)
    ctx = StepContext(model=model, cfg=cfg, device=torch.device("cpu"), batches=None,
                      data=TrainingData(shard, {"eos": EOS, "mask": MASK}))
    return learner(learner_name)(ctx), model


def all_params(lrn, model) -> dict[str, torch.nn.Parameter]:
    return {**{f"model.{n}": p for n, p in model.named_parameters()},
            **{f"head.{n}": p for n, p in lrn.head.named_parameters()}} if hasattr(lrn, "head") else \
        {f"model.{n}": p for n, p in model.named_parameters()}


def grads(lrn, model) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in all_params(lrn, model).items()}


def gen(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp(h, phi):
    return F.linear(F.relu(F.linear(h, phi["linears.0.weight"], phi["linears.0.bias"])),
                    phi["linears.1.weight"], phi["linears.1.bias"])


def first_order_inner_loop(head, hs, labels, steps: int = 2, lr: float = 0.5) -> dict[str, torch.Tensor]:
    """The reference inner loop, by hand: `steps` SGD steps of `head`'s weights on the support features `hs`,
    each step's gradient taken at detached weights (first order); the adapted weights, detached."""
    phi = {n: p.detach().clone() for n, p in head.named_parameters()}
    for _ in range(steps):
        leaves = {n: w.requires_grad_() for n, w in phi.items()}
        g = torch.autograd.grad(F.cross_entropy(mlp(hs, leaves), labels), list(leaves.values()))
        phi = {n: (w - lr * gi).detach() for (n, w), gi in zip(leaves.items(), g, strict=True)}
    return phi


# -- registry and head ----------------------------------------------------


def _schema_learners() -> set[str]:
    """The run schema's `meta.learner` values, `none` (no meta-learning) left out."""
    return set(subschema(("meta", "learner"))["enum"]) - {"none"}


def test_all_schema_learners_are_registered_step_kinds():
    assert set(known_learners()) <= set(known_step_kinds())
    assert episode_builder("smlmt").name == "smlmt"
    with pytest.raises(KeyError, match="unknown meta.episode.builder 'nope'"):
        episode_builder("nope")


def test_the_schema_lists_exactly_the_registered_learners(monkeypatch):
    assert _schema_learners() == set(known_learners())
    # The check can fail: a learner registered but missing from the schema, or the reverse, is caught.
    monkeypatch.setitem(meta_registry._LEARNERS, "extra", object)
    assert _schema_learners() != set(known_learners())
    monkeypatch.delitem(meta_registry._LEARNERS, "extra")
    monkeypatch.delitem(meta_registry._LEARNERS, "reptile")
    assert _schema_learners() != set(known_learners())


def test_the_schema_lists_exactly_the_registered_episode_builders(monkeypatch):
    listed = lambda: set(subschema(("meta", "episode", "builder"))["enum"])  # noqa: E731
    assert listed() == set(meta_registry.known_episode_builders())
    monkeypatch.setitem(meta_registry._BUILDERS, "extra", object)
    assert listed() != set(meta_registry.known_episode_builders())


def test_head_shape_init_and_generator_dropout():
    head = EpisodeHead(16, n_way=5, layers=4, width=12, dropout=0.5)
    assert [tuple(lin.weight.shape) for lin in head.linears] == [(12, 16), (12, 12), (12, 12), (5, 12)]
    assert all((lin.bias == 0).all() for lin in head.linears)
    w = head.linears[0].weight.detach()  # Xavier uniform: U(±sqrt(6 / (fan_in + fan_out)))
    assert w.abs().max() <= (6 / 28) ** 0.5 and abs(float(w.std()) - (2 / 28) ** 0.5) < 0.05
    h = torch.randn(6, 16)
    assert torch.equal(head(h, gen=gen(1)), head(h, gen=gen(1)))  # dropout masks come from the generator
    assert not torch.equal(head(h, gen=gen(1)), head(h, gen=gen(2)))
    head.eval()
    assert torch.equal(head(h, gen=gen(1)), head(h, gen=gen(2)))


# -- FOMAML ---------------------------------------------------------------


def test_fomaml_writes_only_grad_and_never_moves_a_parameter(shard):
    lrn, model = make("fomaml", shard)
    before = {n: p.detach().clone() for n, p in all_params(lrn, model).items()}
    out = lrn.run(1.0, gen())
    for n, p in all_params(lrn, model).items():
        assert torch.equal(p, before[n]), n
    g = grads(lrn, model)
    assert g["model.lm_head.weight"] is None  # episodes never use the LM head
    assert all(g[n] is not None and g[n].abs().sum() > 0 for n in g if n != "model.lm_head.weight")
    assert out.metrics["meta/support_loss_after"] < out.metrics["meta/support_loss_before"]
    assert out.tokens == (4 * 2 + 4 * 2) * 8


def test_fomaml_gradient_equals_hand_computed_first_order_gradient(shard):
    lrn, model = make("fomaml", shard)
    out = lrn.run(0.5, gen())
    got = grads(lrn, model)

    ep = lrn.builder.sample(gen())  # the same episode: sampling is the generator's first use
    with torch.no_grad():
        hs = model.hidden(ep.support)[:, -1]
    phi = first_order_inner_loop(lrn.head, hs, ep.support_labels)
    phi_T = {n: w.requires_grad_() for n, w in phi.items()}
    q_loss = F.cross_entropy(mlp(model.hidden(ep.query)[:, -1], phi_T), ep.query_labels)
    names = [n for n, _ in model.named_parameters() if not n.startswith("lm_head")]
    wrt = [dict(model.named_parameters())[n] for n in names] + list(phi_T.values())
    expected = torch.autograd.grad(q_loss * 0.5, wrt)
    for n, e in zip([f"model.{n}" for n in names] + [f"head.{n}" for n in phi_T], expected, strict=True):
        torch.testing.assert_close(got[n], e, rtol=1e-5, atol=1e-7, msg=n)
    assert out.loss == pytest.approx(q_loss.item(), rel=1e-6)


def test_backbone_grad_from_support_adds_every_inner_steps_support_gradient(shard):
    plain, model_a = make("fomaml", shard)
    buggy, model_b = make("fomaml", shard, meta={"inner": {"steps": 2, "lr": 0.5, "backbone_grad_from_support": True}})
    plain.run(1.0, gen())
    buggy.run(1.0, gen())
    g_plain, g_buggy = grads(plain, model_a), grads(buggy, model_b)
    # Head gradients are identical: the support loss only reaches the backbone.
    for n in g_plain:
        if n.startswith("head."):
            torch.testing.assert_close(g_plain[n], g_buggy[n])
    # Backbone: query gradient + sum over inner steps of d(support loss at φ_t)/dθ.
    ep = plain.builder.sample(gen())
    names = [n for n, _ in model_a.named_parameters() if not n.startswith("lm_head")]
    params = [dict(model_a.named_parameters())[n] for n in names]
    hs = model_a.hidden(ep.support)[:, -1]
    phi = {n: p.detach().clone() for n, p in plain.head.named_parameters()}
    extra = [torch.zeros_like(p) for p in params]
    for _ in range(2):
        leaves = {n: w.requires_grad_() for n, w in phi.items()}
        loss = F.cross_entropy(mlp(hs, leaves), ep.support_labels)
        g = torch.autograd.grad(loss, params + list(leaves.values()), retain_graph=True)
        extra = [e + gi for e, gi in zip(extra, g[:len(params)], strict=True)]
        phi = {n: (w - 0.5 * gi).detach() for (n, w), gi in zip(leaves.items(), g[len(params):], strict=True)}
    for n, e in zip(names, extra, strict=True):
        torch.testing.assert_close(g_buggy[f"model.{n}"], g_plain[f"model.{n}"] + e, rtol=1e-4, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", known_learners())
def test_meta_step_is_bit_identical_for_the_same_generator(shard, name):
    meta = {"head": {"layers": 3, "width": 8, "dropout": 0.3}, "reptile": {"scope": "all", "outer_step_size": 1.0}}
    a, model_a = make(name, shard, meta=meta)
    b, model_b = make(name, shard, meta=meta)
    torch.manual_seed(123)  # the global RNG must not matter
    out_a = a.run(1.0, gen(9))
    torch.manual_seed(456)
    out_b = b.run(1.0, gen(9))
    assert out_a.loss == out_b.loss and out_a.metrics == out_b.metrics
    ga, gb = grads(a, model_a), grads(b, model_b)
    assert all((ga[n] is None and gb[n] is None) or torch.equal(ga[n], gb[n]) for n in ga)
    assert out_a.loss != make(name, shard, meta=meta)[0].run(1.0, gen(10)).loss


@pytest.mark.parametrize("name", known_learners())
def test_meta_steps_run_under_bf16_autocast(shard, name):
    lrn, model = make(name, shard, meta={"reptile": {"scope": "all", "outer_step_size": 1.0}})
    lrn.ctx.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    out = lrn.run(1.0, gen())
    assert np.isfinite(out.loss) and out.flops > 0
    for p in all_params(lrn, model).values():
        assert p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)


def test_fomaml_flops_count_support_forward_query_training_and_head(shard):
    lrn, model = make("fomaml", shard)
    out = lrn.run(1.0, gen())
    from metapretrain.model.flops import forward_flops_per_token

    W, n = 8, 8  # window; support and query examples
    backbone = forward_flops_per_token(TINY, W) - 2 * TINY.d_model * VOCAB
    head = 2 * (16 * 8 + 8 * 4)
    expected = n * W * backbone + n * W * 3 * backbone + head * (3 * 2 * n + 2 * n + 3 * n)
    assert out.flops == pytest.approx(expected)
    buggy, _ = make("fomaml", shard, meta={"inner": {"steps": 2, "lr": 0.5, "backbone_grad_from_support": True}})
    assert buggy.run(1.0, gen()).flops == pytest.approx(expected + 2 * n * W * backbone)


@pytest.mark.parametrize("name,meta", [
    ("fomaml", {}), ("fomaml", {"inner": {"steps": 3, "lr": 0.5, "backbone_grad_from_support": True}}),
    ("maml2", {}), ("reptile", {"reptile": {"scope": "head"}}), ("reptile", {"reptile": {"scope": "all"}}),
    ("maml_ntp", {"maml_ntp": {"scope": "last_layers", "inner_layers": 1}}), ("maml_ntp", {"maml_ntp": {"scope": "all"}}),
])
def test_expected_cost_from_the_config_is_what_a_step_reports(shard, name, meta):
    """`grid show` plans with `expected_cost` (no model, no data): it must be what `run` then counts."""
    lrn, _ = make(name, shard, meta=meta)
    out = lrn.run(1.0, gen())
    expected = type(lrn).expected_cost(lrn.ctx.cfg, TINY)
    assert (expected.tokens, expected.flops) == (out.tokens, pytest.approx(out.flops))
    if name in ("fomaml", "maml2"):  # an episode really is N·k + N·q windows of the configured width
        ep = lrn.builder.sample(gen())
        assert expected.tokens == ep.support.numel() + ep.query.numel()


def test_next_token_expected_cost_is_the_batch():
    from metapretrain.model.flops import training_flops_per_token
    from metapretrain.train.steps import step_kind

    cfg = run_config_from_dict({"train": {"batch_size": 3, "seq_len": 16}})
    cost = step_kind("next_token").expected_cost(cfg, TINY)
    assert cost.tokens == 48 and cost.flops == pytest.approx(48 * training_flops_per_token(TINY, 16))


def test_head_shape_params_match_a_built_head():
    head = EpisodeHead(16, n_way=5, layers=4, width=12, dropout=0.0)
    assert EpisodeHead.shape_params(16, 5, 4, 12) == (head.matmul_params(), sum(p.numel() for p in head.parameters()))


# -- second-order MAML -----------------------------------------------------


def test_maml2_equals_autograd_through_the_inner_loop(shard):
    lrn, model = make("maml2", shard)
    lrn.run(1.0, gen())
    got = grads(lrn, model)
    ep = lrn.builder.sample(gen())
    names = [n for n, _ in model.named_parameters() if not n.startswith("lm_head")]
    params = [dict(model.named_parameters())[n] for n in names]
    phi0 = {n: p.detach().clone().requires_grad_() for n, p in lrn.head.named_parameters()}
    hs = model.hidden(ep.support)[:, -1]
    phi = dict(phi0)
    for _ in range(2):
        g = torch.autograd.grad(F.cross_entropy(mlp(hs, phi), ep.support_labels), list(phi.values()), create_graph=True)
        phi = {n: w - 0.5 * gi for (n, w), gi in zip(phi.items(), g, strict=True)}
    q_loss = F.cross_entropy(mlp(model.hidden(ep.query)[:, -1], phi), ep.query_labels)
    expected = torch.autograd.grad(q_loss, params + list(phi0.values()))
    for n, e in zip([f"model.{n}" for n in names] + [f"head.{n}" for n in phi0], expected, strict=True):
        torch.testing.assert_close(got[n], e, rtol=1e-5, atol=1e-7, msg=n)


def test_maml2_differs_from_fomaml_by_the_hessian_term(shard):
    one_step = {"inner": {"steps": 1, "lr": 0.5}}
    fo, model_fo = make("fomaml", shard, meta=one_step)
    so, model_so = make("maml2", shard, meta=one_step)
    fo.run(1.0, gen())
    so.run(1.0, gen())
    g_fo, g_so = grads(fo, model_fo), grads(so, model_so)
    # Head: ∇_φ0 L_q(φ1) = (I − α H_S(φ0)) ∇L_q(φ1), and FOMAML keeps only ∇L_q(φ1).
    ep = fo.builder.sample(gen())
    with torch.no_grad():
        hs = model_fo.hidden(ep.support)[:, -1]
    names = [n for n, _ in fo.head.named_parameters()]
    phi0 = tuple(p.detach() for p in fo.head.parameters())

    def support_loss(*w):
        return F.cross_entropy(mlp(hs, dict(zip(names, w, strict=True))), ep.support_labels)

    g_q = tuple(g_fo[f"head.{n}"] for n in names)
    _, hvp = torch.autograd.functional.hvp(support_loss, phi0, g_q)
    for n, hv in zip(names, hvp, strict=True):
        diff = g_so[f"head.{n}"] - g_fo[f"head.{n}"]
        torch.testing.assert_close(diff, -0.5 * hv, rtol=1e-4, atol=1e-6, msg=n)
    assert any(h.abs().max() > 1e-4 for h in hvp)  # the term is really there


# -- Reptile ----------------------------------------------------------------


def test_reptile_head_scope_writes_theta_minus_adapted(shard):
    lrn, model = make("reptile", shard, meta={"reptile": {"outer_step_size": 0.25, "scope": "head"}})
    before = {n: p.detach().clone() for n, p in all_params(lrn, model).items()}
    lrn.run(2.0, gen())
    got = grads(lrn, model)
    assert all(got[n] is None for n in got if n.startswith("model."))  # head scope: no backbone gradient
    ep = lrn.builder.sample(gen())
    with torch.no_grad():
        hs = model.hidden(ep.support)[:, -1]
    phi = first_order_inner_loop(lrn.head, hs, ep.support_labels)
    for n, p in lrn.head.named_parameters():
        torch.testing.assert_close(got[f"head.{n}"], (p.detach() - phi[n]) * 0.25 * 2.0)
        assert torch.equal(p, before[f"head.{n}"])


def test_reptile_all_scope_moves_toward_weights_that_fit_the_support(shard):
    lrn, model = make("reptile", shard, meta={"reptile": {"outer_step_size": 1.0, "scope": "all"}})
    before = {n: p.detach().clone() for n, p in all_params(lrn, model).items()}
    out = lrn.run(1.0, gen())
    got = grads(lrn, model)
    assert all(torch.equal(p, before[n]) for n, p in all_params(lrn, model).items())
    assert got["model.layers.0.attn.q_proj.weight"].abs().sum() > 0 and got["model.lm_head.weight"] is None
    # θ − grad is exactly θ_adapted (outer_step_size 1): the support loss there is the adapted one.
    with torch.no_grad():
        for p in all_params(lrn, model).values():
            if p.grad is not None:
                p -= p.grad
        ep = lrn.builder.sample(gen())
        lrn.head.eval()
        loss = F.cross_entropy(lrn.head(model.hidden(ep.support)[:, -1]), ep.support_labels)
    assert float(loss) == pytest.approx(out.metrics["meta/support_loss_after"], rel=1e-4)
    assert out.metrics["meta/support_loss_after"] < out.metrics["meta/support_loss_before"]


# -- next-token MAML (the proposal) -------------------------------------------


def test_maml_ntp_scopes_name_the_right_parameters():
    model = Decoder(TINY)
    assert adapted_names(model, "head", 1) == ["lm_head.weight"]
    last = adapted_names(model, "last_layers", 1)
    assert "layers.1.attn.q_proj.weight" in last and "norm.weight" in last and "lm_head.weight" in last
    assert not any(n.startswith(("layers.0.", "embed.")) for n in last)
    assert len(adapted_names(model, "all", 1)) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="meta.maml_ntp.inner_layers=3 exceeds model.n_layers=2"):
        adapted_names(model, "last_layers", 3)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_maml_ntp_inner_loop_lowers_support_loss_without_moving_weights(shard, optimizer):
    lr = 3e-2 if optimizer == "adamw" else 1.0
    lrn, model = make("maml_ntp", shard, meta={
        "inner": {"steps": 4, "lr": 0.5},
        "maml_ntp": {"scope": "all", "inner_optimizer": optimizer, "inner_lr": lr, "support_batch_size": 4}})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = lrn.run(1.0, gen())
    assert out.metrics["meta/support_loss_after"] < out.metrics["meta/support_loss_before"] - 0.05
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.grad is not None for p in model.parameters())
    assert out.tokens == (4 + 1) * 4 * 16 + 8 * 16


def test_maml_ntp_outer_gradient_is_the_query_gradient_at_the_adapted_weights(shard):
    lrn, model = make("maml_ntp", shard, meta={
        "inner": {"steps": 2, "lr": 0.5},
        "maml_ntp": {"scope": "head", "inner_optimizer": "sgd", "inner_lr": 0.5, "support_batch_size": 2,
                     "query_batch_size": 3}})
    lrn.run(1.0, gen())
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    g = gen()
    adapted = copy.deepcopy(model)
    for _ in range(2):
        batch = lrn.windows(2, g)
        loss = F.cross_entropy(adapted(batch[:, :-1]).reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        (grad,) = torch.autograd.grad(loss, [adapted.lm_head.weight])
        with torch.no_grad():
            adapted.lm_head.weight -= 0.5 * grad
    query = lrn.windows(3, g)
    adapted.zero_grad()
    F.cross_entropy(adapted(query[:, :-1]).reshape(-1, VOCAB), query[:, 1:].reshape(-1)).backward()
    for n, p in adapted.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)


def test_maml_ntp_flops_shrink_with_the_scope(shard):
    flops = {scope: make("maml_ntp", shard, meta={"maml_ntp": {"scope": scope}})[0].run(1.0, gen()).flops
             for scope in ("all", "last_layers", "head")}
    assert flops["all"] > flops["last_layers"] > flops["head"] > 0


def test_inner_schedules():
    lin = InnerOptimizer("sgd", 1.0, "linear", 4, (0.9, 0.95), 1e-8)
    cos = InnerOptimizer("sgd", 1.0, "cosine", 4, (0.9, 0.95), 1e-8)
    assert [lin.lr_at(t) for t in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert cos.lr_at(0) == 1.0 and cos.lr_at(2) == pytest.approx(0.5)
    # The first AdamW step moves every weight by lr · sign(g) (bias-corrected moments).
    adam = InnerOptimizer("adamw", 0.1, "constant", 4, (0.9, 0.95), 1e-12)
    w = {"w": torch.zeros(3)}
    out = adam.step(w, [torch.tensor([2.0, -0.5, 1e-3])], 0)
    torch.testing.assert_close(out["w"], torch.tensor([-0.1, 0.1, -0.1]))


# -- in the training loop, on real text ---------------------------------------

LOOP_RUN = tiny_run(
    train={"budget": {"value": 8}, "grad_accum": 2, "eval_batches": 1, "checkpoint": {"log_spaced": 0}},
    meta={"learner": "fomaml", "hybrid_ratio": 0.5,
          "episode": {"n_way": 8, "k_shot": 2, "q_query": 2, "window": 16, "min_count": 8, "max_frequency": 0.05},
          "head": {"layers": 2, "width": 16}, "inner": {"steps": 3, "lr": 0.05}})


@pytest.mark.slow
def test_fomaml_run_resumes_bit_identically_after_a_crash(tmp_path, tokenized_dir, monkeypatch):
    from metapretrain import checkpoint as ckpt
    from metapretrain.train import loop as loop_mod
    from metapretrain.train.stage import train_run

    full = write_run_dir(tmp_path, "full", LOOP_RUN)
    train_run(str(full), str(tokenized_dir))
    train = comparable(records(full, "train"))
    assert sum(r["n_meta"] for r in train) > 0 and "meta/query_acc" in next(r for r in train if r["n_meta"])

    cut = write_run_dir(tmp_path, "cut", LOOP_RUN)
    original = crash_at(monkeypatch, 6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(str(cut), str(tokenized_dir))
    monkeypatch.setattr(loop_mod.Trainer, "update", original)
    train_run(str(cut), str(tokenized_dir))

    assert comparable(records(cut)) == comparable(records(full))
    a, b = final_weights(full), final_weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = (ckpt.load_modules(ckpt.final_checkpoint(r).path)["episode_head"] for r in (full, cut))
    assert all(torch.equal(ha[k], hb[k]) for k in ha)


def real_text_fomaml(tokenized_dir, inner_steps: int):
    """(FOMAML learner, its decoder, the train shard): 8-way SMLMT episodes of the real tokenized corpus and a
    freshly initialised d-64 decoder, dropout off."""
    from metapretrain.data.shards import open_split, read_manifest

    shard = open_split(tokenized_dir, "train")
    special = read_manifest(tokenized_dir)["special_tokens"]
    cfg = run_config_from_dict({"meta": {
        "learner": "fomaml",
        "episode": {"n_way": 8, "k_shot": 4, "q_query": 4, "window": 24, "min_count": 8, "max_frequency": 0.02},
        "head": {"layers": 2, "width": 32, "dropout": 0.0}, "inner": {"steps": inner_steps, "lr": 0.1}}})
    torch.manual_seed(0)
    model = Decoder(ModelConfig(d_model=64, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=128,
                                vocab_size=int(shard.max()) + 1, max_seq_len=32))
    ctx = StepContext(model=model, cfg=cfg, device=torch.device("cpu"), batches=None,
                      data=TrainingData(shard, special))
    return learner("fomaml")(ctx), model, shard


def test_inner_loop_raises_support_accuracy_on_real_episodes(tokenized_dir):
    """Adaptation fits the support set of real SMLMT episodes, from a freshly initialised model."""
    lrn, _, _ = real_text_fomaml(tokenized_dir, inner_steps=20)
    outs = [lrn.run(1.0, gen(seed)).metrics for seed in range(6)]
    before = np.mean([m["meta/support_acc_before"] for m in outs])
    after = np.mean([m["meta/support_acc_after"] for m in outs])
    assert after > before + 0.15, (before, after)
    assert np.mean([m["meta/support_loss_after"] < m["meta/support_loss_before"] for m in outs]) == 1.0


@pytest.mark.slow
def test_hybrid_fomaml_learns_episodes_above_chance(tokenized_dir):
    """Alternating next-token and FOMAML updates on real text: query accuracy climbs well above 1/N.

    The head's output layer starts at zero (EpisodeHead output_init="zero"): with the paper's
    all-Xavier head this tiny model stays at chance over the same budget.
    """
    from metapretrain.model.loss import next_token_loss

    lrn, model, shard = real_text_fomaml(tokenized_dir, inner_steps=10)
    torch.nn.init.zeros_(lrn.head.linears[-1].weight)
    opt = torch.optim.AdamW(list(model.parameters()) + lrn.parameters(), lr=1e-3, weight_decay=0.0)
    g, accs = gen(0), []
    for step in range(500):  # 250 episodes; at 150 the margin was within numerical noise
        opt.zero_grad(set_to_none=True)
        if step % 2 == 0:
            starts = torch.randint(len(shard) - 25, (16,), generator=g).numpy()
            batch = torch.from_numpy(np.asarray(shard[starts[:, None] + np.arange(25)], dtype=np.int64))
            next_token_loss(model, batch).backward()
        else:
            accs.append(lrn.run(1.0, gen(step)).metrics["meta/query_acc"])
        opt.step()
    early, late = np.mean(accs[:20]), np.mean(accs[-30:])
    assert late > 0.25 and late > early + 0.08, (early, late)
