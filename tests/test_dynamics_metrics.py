"""Dynamics metrics without the stage: effective rank, attention entropy, the probe pass's gradients and
activations, CKA, phase (peak) detection, the metric registry and the episodic-accuracy lookup."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import tiny_decoder
from metapretrain.dynamics.cka import linear_cka
from metapretrain.dynamics.entropy import causal_entropy_sums, head_entropies, query_entropy
from metapretrain.dynamics.phases import detect_peak, peaks_table, smooth
from metapretrain.dynamics.rank import effective_rank, spectrum_ranks
from metapretrain.dynamics.registry import UnknownMetricError, get_metrics, known_metrics, register_metric

VOCAB = 64
SIZE = {"d_model": 16, "ffn_hidden": 32, "max_seq_len": 32}  # a smaller tiny decoder: d 16, FFN 32


# Tiny matrices: more threads only contend for the shared CPU cores.
pytestmark = pytest.mark.usefixtures("single_thread")


def _random_orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


# --- effective rank ---------------------------------------------------------------------------------------------

def test_effective_rank_of_identity_like_rank1_and_k_equal_values():
    er, per = spectrum_ranks(torch.eye(6) * 3.0)
    assert er.item() == pytest.approx(6.0) and per.item() == pytest.approx(1.0)
    u, v = torch.randn(7, 1), torch.randn(1, 5)
    er, per = spectrum_ranks(u @ v)
    assert er.item() == pytest.approx(1.0, abs=1e-6) and per.item() == pytest.approx(1 / 5, abs=1e-6)
    # k equal singular values among n: ER = k exactly, whatever the rotation.
    sv = torch.tensor([2.0, 2.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    m = _random_orthogonal(5, 1) @ torch.diag(sv) @ _random_orthogonal(5, 2)
    er, per = spectrum_ranks(m)
    assert er.item() == pytest.approx(3.0) and per.item() == pytest.approx(3 / 5)
    assert effective_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])).item() == pytest.approx(4.0)


def test_effective_rank_is_invariant_to_scaling_and_orthogonal_transforms():
    m = torch.randn(8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    er, _ = spectrum_ranks(m)
    assert 1.0 < er.item() < 6.0
    assert spectrum_ranks(m * 1e-3)[0].item() == pytest.approx(er.item(), rel=1e-9)
    assert spectrum_ranks(_random_orthogonal(8, 3) @ m @ _random_orthogonal(6, 4))[0].item() == pytest.approx(er.item())


def test_effective_rank_is_batched_and_nan_for_zero():
    mats = torch.stack([torch.eye(4), torch.zeros(4, 4), torch.diag(torch.tensor([1.0, 0, 0, 0]))])
    er, _ = spectrum_ranks(mats)
    assert er[0].item() == pytest.approx(4.0) and math.isnan(er[1].item()) and er[2].item() == pytest.approx(1.0)


# --- attention entropy ------------------------------------------------------------------------------------------

def _uniform_causal(B: int, H: int, T: int) -> torch.Tensor:
    mask = torch.ones(T, T).tril()
    return (mask / mask.sum(-1, keepdim=True)).expand(B, H, T, T)


def test_head_entropy_of_uniform_and_one_hot_attention():
    T = 9
    raw, norm = head_entropies([_uniform_causal(2, 3, T)])
    expected = float(np.mean(np.log(np.arange(1, T + 1))))
    assert torch.allclose(raw, torch.full((3,), expected, dtype=torch.float64))
    assert torch.allclose(norm, torch.ones(3, dtype=torch.float64))
    # Full (non-causal) uniform rows: log T each; one-hot rows: 0.
    assert torch.allclose(query_entropy(torch.full((4, T), 1 / T)), torch.full((4,), math.log(T), dtype=torch.float64))
    one_hot = torch.eye(T).expand(1, 2, T, T)  # each query attends to itself only (causal)
    raw, norm = head_entropies([one_hot])
    assert torch.allclose(raw, torch.zeros(2, dtype=torch.float64)) and torch.allclose(norm, torch.zeros(2, dtype=torch.float64))


def test_head_entropy_averages_over_batch_slices():
    g = torch.Generator().manual_seed(0)
    T = 6
    logits = torch.randn(4, 2, T, T, generator=g).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
    probs = logits.softmax(-1)
    whole = head_entropies([probs])
    sliced = head_entropies([probs[:1], probs[1:3], probs[3:]])
    assert torch.allclose(whole[0], sliced[0]) and torch.allclose(whole[1], sliced[1])
    raw_sum, _ = causal_entropy_sums(probs)
    assert torch.allclose(whole[0], raw_sum / (4 * T))


def _tiny_model(seed: int = 0, init_std: float = 0.02):
    return tiny_decoder(VOCAB, seed, init_std=init_std, **SIZE)


def test_scores_match_the_sdpa_forward_with_rope():
    """Probabilities from scores() times V, through o_proj, reproduce the module's SDPA forward."""
    model = _tiny_model(init_std=0.5)
    attn = model.layers[0].attn
    x = torch.randn(3, 12, 16, generator=torch.Generator().manual_seed(1))
    probs = attn.scores(x)
    _, _, v = attn._qkv(x)
    v = v.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)
    y = (probs @ v).transpose(1, 2).reshape(3, 12, -1)
    assert torch.allclose(attn.o_proj(y), attn(x), atol=1e-5)
    # And RoPE matters: the same q/k without rotation give different probabilities.
    B, T = 3, 12
    q = attn.q_proj(x).view(B, T, attn.n_heads, -1).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, attn.n_kv_heads, -1).transpose(1, 2).repeat_interleave(2, dim=1)
    no_rope = ((q @ k.transpose(-1, -2)) / math.sqrt(attn.head_dim)).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf).softmax(-1)
    assert not torch.allclose(no_rope, probs, atol=1e-3)


def test_head_entropy_metric_reads_the_real_attention_input():
    """The metric's layer-0 entropies equal a naive softmax(QKᵀ) on attn_norm(embed(ids)) with RoPE."""
    from metapretrain.dynamics.entropy import head_entropy_metric
    from metapretrain.dynamics.probe_pass import run_probe

    model = _tiny_model(init_std=0.5)  # large weights: peaked attention that depends on its input
    batch = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(2))
    data = run_probe(model, batch, step=0, activations=False, attention=True, gradients=False)
    rows = {(r.layer, r.head, r.metric): r.value for r in head_entropy_metric(data)}
    attn = model.layers[0].attn
    with torch.no_grad():
        x = model.layers[0].attn_norm(model.embed(batch[:, :-1]))
        q, k, _ = attn._qkv(x)
        k = k.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)
        T = x.shape[1]
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(attn.head_dim)
        p = logits.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf).softmax(-1).double()
    ent = -(p * p.clamp_min(1e-300).log()).sum(-1)  # [B, H, T]
    for h in range(attn.n_heads):
        assert rows[(0, h, "head_entropy")] == pytest.approx(ent[:, h].mean().item(), rel=1e-5)
        norm = (ent[:, h, 1:] / torch.arange(2, T + 1, dtype=torch.float64).log()).mean().item()
        assert rows[(0, h, "head_entropy_norm")] == pytest.approx(norm, rel=1e-5)
        assert norm < 0.9  # far from uniform, so a wrong input would show
    assert {layer for layer, _, _ in rows} == {0, 1}


# --- probe pass: real gradients, activations ---------------------------------------------------------------------

def test_gradients_are_of_the_real_next_token_loss():
    from metapretrain.dynamics.probe_pass import COMPONENTS, run_probe
    from metapretrain.dynamics.rank import effective_rank_metric

    model = _tiny_model()
    batch = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(3))
    data = run_probe(model, batch, step=0, activations=True, attention=False, gradients=True)
    real = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(real) == 2 * len(COMPONENTS) and all(g.abs().sum() > 0 for g in real.values())
    er_real = {(r.layer, r.component, r.metric): r.value for r in effective_rank_metric(data)}

    ref = _tiny_model()
    torch.nn.functional.cross_entropy(ref(batch[:, :-1]).reshape(-1, VOCAB), batch[:, 1:].reshape(-1)).backward()
    assert all(torch.allclose(real[n], dict(ref.named_parameters())[n].grad, atol=1e-6) for n in real)

    # The paper's dummy loss gives other gradients and other gradient ranks.
    model.zero_grad()
    model(batch[:, :-1]).mean().backward()
    data.has_grads = True
    er_dummy = {(r.layer, r.component, r.metric): r.value for r in effective_rank_metric(data)}
    changed = [k for k in er_real if k[1].endswith(".grad") and abs(er_real[k] - er_dummy[k]) > 1e-3]
    assert len(changed) > len(COMPONENTS)
    assert all(er_real[k] == er_dummy[k] for k in er_real if k[1].endswith(".weight"))


def test_effective_rank_metric_rows_cover_every_layer_component_and_source():
    from metapretrain.dynamics.probe_pass import COMPONENTS, run_probe
    from metapretrain.dynamics.rank import effective_rank_metric

    model = _tiny_model()
    batch = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(4))
    data = run_probe(model, batch, step=0, activations=True, attention=False, gradients=True)
    assert data.acts[(0, "attn.q_proj")].shape == (20, 16) and data.acts[(1, "ffn.up_proj")].shape == (20, 32)
    rows = effective_rank_metric(data)
    comps = {r.component for r in rows}
    assert comps == {f"{c}.{s}" for c in COMPONENTS for s in ("weight", "grad", "act")} | {"resid.act"}
    assert len(rows) == 2 * 2 * len(comps)
    for r in rows:
        assert r.value > 0 and (r.value <= 1 if r.metric == "per" else r.value >= 1)


# --- CKA ------------------------------------------------------------------------------------------------------

def test_linear_cka_identity_orthogonal_and_scale_invariance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g, dtype=torch.float64)
    assert linear_cka(x, x) == pytest.approx(1.0)
    y = torch.randn(50, 8, generator=g, dtype=torch.float64) + 0.5 * x
    base = linear_cka(x, y)
    assert 0.0 < base < 1.0
    assert linear_cka(x, 7.0 * y @ _random_orthogonal(8, 5)) == pytest.approx(base)
    assert linear_cka(x @ _random_orthogonal(8, 6), y) == pytest.approx(base)
    assert linear_cka(x + 3.0, y) == pytest.approx(base)  # centred
    assert linear_cka(x, torch.randn(50, 8, generator=g, dtype=torch.float64)) < base
    with pytest.raises(ValueError, match="same tokens"):
        linear_cka(x, x[:10])


# --- phase detection ------------------------------------------------------------------------------------------

STEPS = np.arange(0, 6100, 100)


def test_smoothing_is_a_centred_moving_average_shrunk_at_the_ends():
    assert np.allclose(smooth([1, 2, 3, 4, 5], 3), [1.5, 2, 3, 4, 4.5])
    assert np.allclose(smooth([1, 2, 3], 1), [1, 2, 3])


def test_peak_detection_finds_a_rise_and_fall():
    curve = 0.3 + 0.2 * np.exp(-((STEPS - 2000) / 800.0) ** 2)
    peak = detect_peak(STEPS, curve, smoothing=3, min_prominence=0.05)
    assert peak.is_rise_and_fall and peak.peak_step == 2000
    assert peak.rise == pytest.approx(0.2 * (1 - math.exp(-6.25)), rel=0.02) and peak.fall > 0.19


def test_peak_detection_rejects_monotone_and_flat_noise():
    rng = np.random.default_rng(0)
    rising = 0.1 + STEPS / 6000
    assert not detect_peak(STEPS, rising, 3, 0.05).is_rise_and_fall
    assert detect_peak(STEPS, rising, 3, 0.05).peak_step == 6000
    assert not detect_peak(STEPS, 1.0 - STEPS / 12000, 3, 0.05).is_rise_and_fall
    noisy_rising = rising + rng.normal(0, 0.01, len(STEPS))
    assert not detect_peak(STEPS, noisy_rising, 3, 0.05).is_rise_and_fall
    flat_noise = 0.5 + rng.normal(0, 1e-3, len(STEPS))
    assert not detect_peak(STEPS, flat_noise, 3, 0.05).is_rise_and_fall


def test_peak_detection_on_a_noisy_rise_and_fall():
    rng = np.random.default_rng(1)
    curve = 0.3 + 0.2 * np.exp(-((STEPS - 3000) / 1000.0) ** 2) + rng.normal(0, 0.01, len(STEPS))
    peak = detect_peak(STEPS, curve, smoothing=5, min_prominence=0.05)
    assert peak.is_rise_and_fall and abs(peak.peak_step - 3000) <= 500
    # Too strict a prominence rejects the same curve.
    assert not detect_peak(STEPS, curve, smoothing=5, min_prominence=0.5).is_rise_and_fall


def test_peaks_table_averages_heads_and_orders_layers():
    rows = []
    for step in (0, 100, 200, 300, 400):
        bump = {0: 0.0, 100: 1.0, 200: 2.0, 300: 1.0, 400: 0.0}[step]
        for layer in (1, 0):
            for head, offset in ((0, 0.0), (1, 1.0)):
                rows.append({"run_id": "r", "step": str(step), "layer": str(layer), "component": "attn", "head": str(head),
                             "metric": "head_entropy", "value": str(1.0 + offset + bump * (layer + 1))})
        rows.append({"run_id": "r", "step": str(step), "layer": "", "component": "episode", "head": "",
                     "metric": "query_acc", "value": str(step / 400)})
    out = peaks_table(rows, smoothing=1, min_prominence=0.05)
    assert [(p["layer"], p["metric"]) for p in out] == [("0", "head_entropy"), ("1", "head_entropy"), ("", "query_acc")]
    assert out[0]["peak_step"] == 200 and out[0]["peak_value"] == pytest.approx(1.5 + 2.0)
    assert out[0]["is_rise_and_fall"] and not out[2]["is_rise_and_fall"]


# --- registry -----------------------------------------------------------------------------------------------------

def test_registry_rejects_unknown_names_listing_the_known_ones():
    assert {"effective_rank", "head_entropy", "weight_norm", "cka", "episodic_accuracy"} <= set(known_metrics())
    with pytest.raises(UnknownMetricError) as exc:
        get_metrics(["effective_rank", "head_entropi"])
    msg = str(exc.value)
    assert "head_entropi" in msg and "did you mean 'head_entropy'" in msg and "cka, effective_rank" in msg
    with pytest.raises(ValueError, match="unknown needs"):
        register_metric("x", needs={"weights", "logits"})


def test_config_validation_rejects_an_unknown_metric():
    from metapretrain.config.errors import ConfigError
    from metapretrain.config.load import run_config_from_dict

    with pytest.raises(ConfigError, match="known metrics: cka"):
        run_config_from_dict({"dynamics": {"metrics": ["effective_rank", "per_layer_magic"]}})


def test_episodic_accuracy_is_the_last_value_at_or_before_the_step(tmp_path):
    from metapretrain.dynamics.episodic import accuracy_at, read_train_log

    f = tmp_path / "metrics.jsonl"
    recs = [{"kind": "train", "step": 1, "loss": 3.0, "meta/query_acc": 0.1, "meta/support_acc_after": 0.3},
            {"kind": "eval", "step": 2, "val_loss": 3.1},
            {"kind": "train", "step": 3, "loss": 2.9},
            {"kind": "train", "step": 5, "loss": 2.8, "meta/query_acc": 0.4, "meta/head_weight_norm": 2.0}]
    f.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"kind": "train", "st')  # torn last line
    log = read_train_log(f)
    assert [r["step"] for r in log] == [1, 3, 5]
    assert accuracy_at(log, 0) == {}
    assert accuracy_at(log, 4) == {"query_acc": 0.1, "support_acc_after": 0.3}
    assert accuracy_at(log, 5) == {"query_acc": 0.4, "support_acc_after": 0.3}
    assert read_train_log(tmp_path / "absent.jsonl") == []
