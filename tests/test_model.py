"""The decoder: presets and parameter counts, RoPE and GQA against reference code, causality, FLOPs, init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_model_config
from metapretrain.model import PRESETS, ModelConfig
from metapretrain.model.decoder import Decoder
from metapretrain.model.flops import training_flops_per_token

SMALL = tiny_model_config(97, max_seq_len=32)


def preset(name: str, vocab: int = 1000) -> ModelConfig:
    values = dict(PRESETS[name])
    values["vocab_size"] = values["vocab_size"] or vocab
    return ModelConfig(**values)


def expected_params(cfg: ModelConfig) -> int:
    d, hd = cfg.d_model, cfg.head_dim
    attn = d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2  # q, o + k, v
    block = attn + 3 * d * cfg.ffn_hidden + 2 * d  # + SwiGLU + two RMSNorm gains
    return cfg.n_layers * block + 2 * cfg.vocab_size * d + d  # + untied embed/lm_head + final norm


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts_match_the_formula(name):
    cfg = preset(name)
    with torch.device("meta"):  # no memory for the large presets
        model = Decoder(cfg)
    assert model.num_parameters() == expected_params(cfg)
    assert model.num_parameters(embeddings=False) == expected_params(cfg) - cfg.vocab_size * cfg.d_model


@pytest.mark.parametrize("name,millions", [("tiny", 11), ("small", 65), ("medium", 181), ("large", 570)])
def test_paper_sizes(name, millions):
    """The paper's sizes (arXiv 2508.02189): 11M / 65M / 181M / 570M with the 50,304-token vocabulary."""
    cfg = preset(name)
    assert cfg.vocab_size == 50_304 and cfg.n_layers == 12 and cfg.n_heads == 12 and cfg.n_kv_heads == 4
    assert cfg.ffn_hidden == 4 * cfg.d_model and cfg.max_seq_len == 2048
    assert round(expected_params(cfg) / 1e6) == millions


def test_shapes_and_api():
    model = Decoder(SMALL)
    x = torch.randint(0, 97, (3, 10))
    hidden = model.hidden(x)
    assert hidden.shape == (3, 10, 32)
    assert torch.equal(model.lm_logits(hidden), model(x)) and model(x).shape == (3, 10, 97)
    attn = model.layers[0].attn
    assert attn.q_proj.weight.shape == (32, 32) and attn.k_proj.weight.shape == (16, 32)
    assert attn.v_proj.weight.shape == (16, 32) and attn.o_proj.weight.shape == (32, 32)
    assert model.layers[1].ffn.gate_proj.weight.shape == (64, 32)
    assert model.embed.weight.data_ptr() != model.lm_head.weight.data_ptr()
    assert all(p.bias is None for p in model.modules() if isinstance(p, torch.nn.Linear))
    probs = attn.scores(model.embed(x))
    assert probs.shape == (3, 4, 10, 10)
    assert torch.allclose(probs.sum(-1), torch.ones(3, 4, 10))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_rope_buffers_belong_to_each_attention_module():
    model = Decoder(SMALL)
    ropes = [layer.attn.rope for layer in model.layers]
    assert ropes[0].cos.data_ptr() != ropes[1].cos.data_ptr()
    assert ropes[0].cos.shape == (32, 4)
    assert "layers.0.attn.rope.cos" not in model.state_dict()  # derived, not saved
    if torch.cuda.is_available():
        model.cuda()
        assert all(r.cos.is_cuda for r in ropes)


def _reference_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as a complex rotation of (x[i], x[i + D/2]) pairs by angle pos * theta^(-2i/D)."""
    D, T = x.shape[-1], x.shape[-2]
    freqs = theta ** (-torch.arange(0, D // 2, dtype=torch.float64) * 2 / D)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * freqs[None, :]
    z = torch.complex(x[..., : D // 2].double(), x[..., D // 2:].double()) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], -1).float()


def test_rope_matches_reference_and_preserves_norms():
    model = Decoder(SMALL)
    x = torch.randn(2, 4, 12, 8)
    ours = model.layers[0].attn.rope(x)
    assert torch.allclose(ours, _reference_rope(x, 10_000.0), atol=1e-5)
    assert torch.allclose(ours.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    # Relative position: <rope(q)_m, rope(k)_n> depends on m - n only.
    q, k = torch.randn(8), torch.randn(8)
    seq_q, seq_k = q.expand(1, 1, 12, 8), k.expand(1, 1, 12, 8)
    rq, rk = model.layers[0].attn.rope(seq_q)[0, 0], model.layers[0].attn.rope(seq_k)[0, 0]
    assert torch.allclose(rq[5] @ rk[2], rq[9] @ rk[6], atol=1e-5)


def test_rope_rotate_interleaves_pairs_and_its_compiler_form_agrees(monkeypatch):
    """`rotate` (what attention uses) = the reference with the pairs (i, i + D/2) interleaved;
    the real-arithmetic form used under torch.compile gives the same values, also from bf16."""
    rope = Decoder(SMALL).layers[0].attn.rope
    x = torch.randn(2, 4, 12, 8).transpose(1, 2).contiguous().transpose(1, 2)  # strided, as q/k arrive
    ref = _reference_rope(x, 10_000.0)
    interleave = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])
    rotated = rope.rotate(x)
    assert rotated.is_contiguous() and torch.allclose(rotated, ref[..., interleave], atol=1e-5)
    # Scores are unchanged by the shared permutation.
    assert torch.allclose(rotated @ rotated.transpose(-1, -2), ref @ ref.transpose(-1, -2), atol=1e-4)
    bf16 = rope.rotate(x.bfloat16())
    assert bf16.dtype == torch.bfloat16 and torch.allclose(bf16.float(), rotated, atol=3e-2)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.allclose(rope.rotate(x), rotated, atol=1e-6)
    assert torch.allclose(rope(x), ref, atol=1e-5)


def _reference_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """GQA spelled out: repeat each KV head over its query group, masked softmax, weighted sum."""
    B, T, _ = x.shape
    H, K, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = attn.q_proj(x).view(B, T, H, D).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, K, D).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, K, D).transpose(1, 2)
    q, k = _reference_rope(q, 10_000.0), _reference_rope(k, 10_000.0)
    k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.o_proj(y.transpose(1, 2).reshape(B, T, H * D))


def test_gqa_attention_matches_reference():
    model = Decoder(SMALL)
    x = torch.randn(2, 11, 32)
    for layer in model.layers:
        assert torch.allclose(layer.attn(x), _reference_attention(layer.attn, x), atol=1e-5)


def test_causal_future_tokens_do_not_change_past_logits():
    model = Decoder(SMALL)
    x = torch.randint(0, 97, (2, 16))
    y = x.clone()
    y[:, 10:] = torch.randint(0, 97, (2, 6))
    a, b = model(x), model(y)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_init_scales():
    cfg = ModelConfig(d_model=256, n_layers=8, n_heads=4, n_kv_heads=2, ffn_hidden=512, vocab_size=512,
                      max_seq_len=16)
    torch.manual_seed(0)
    model = Decoder(cfg)
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.layers[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.layers[3].ffn.down_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.layers[3].attn.o_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.equal(model.norm.weight, torch.ones(256))


def test_flops_per_token_by_hand():
    cfg = SMALL
    d, L, V, F_, T = 32, 2, 97, 64, 16
    matmul = L * (d * 32 + 2 * d * 16 + 32 * d + 3 * d * F_) + d * V
    forward = 2 * matmul + 2 * L * d * (T + 1)
    assert Decoder(cfg).flops_per_token(T) == training_flops_per_token(cfg, T) == 3 * forward
    # Dominated by 6N for the paper's tiny preset at T = 2048 (attention adds the rest).
    tiny = preset("tiny")
    with torch.device("meta"):
        n = Decoder(tiny).num_parameters(embeddings=False)
    assert 6 * n < training_flops_per_token(tiny, 2048) < 6 * n * 1.6


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = Decoder(SMALL)
    x = torch.randint(0, 97, (2, 12))

    def grads():
        model.zero_grad()
        F.cross_entropy(model(x[:, :-1]).reshape(-1, 97), x[:, 1:].reshape(-1)).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.activation_checkpointing = True
    again = grads()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, again, strict=True))


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(d_model=32, n_layers=1, n_heads=4, n_kv_heads=3, ffn_hidden=8, vocab_size=10, max_seq_len=8)
    with pytest.raises(ValueError, match="n_heads"):
        ModelConfig(d_model=30, n_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden=8, vocab_size=10, max_seq_len=8)


@pytest.mark.parametrize("preset", ["micro", "mini", "tiny"])
def test_config_counts_the_parameters_without_building_the_model(preset):
    from metapretrain.model.presets import PRESETS

    values = {**PRESETS[preset], "vocab_size": PRESETS[preset]["vocab_size"] or 512}
    cfg = ModelConfig(**values)
    assert cfg.num_parameters() == Decoder(cfg).num_parameters()
