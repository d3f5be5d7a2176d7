"""CUDA-only paths; every test here skips cleanly on a machine without a CUDA GPU.

Run them on a GPU machine with `pytest tests/test_cuda.py` (they need no data mirror).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metapretrain.model import ModelConfig
from metapretrain.model.decoder import Decoder
from metapretrain.model.loss import linear_cross_entropy
from metapretrain.train import runtime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CFG = ModelConfig(d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=256, vocab_size=1000, max_seq_len=128)


def test_pinned_non_blocking_transfer():
    batch = torch.randint(0, 1000, (4, 65))
    moved = runtime.to_device(batch, torch.device("cuda"))
    assert moved.is_cuda and torch.equal(moved.cpu(), batch)


def test_fused_loss_under_bf16_autocast_matches_fp32_on_gpu():
    gen = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(512, 128, device="cuda", generator=gen, requires_grad=True)
    w = (0.05 * torch.randn(5000, 128, device="cuda", generator=gen)).requires_grad_()
    t = torch.randint(0, 5000, (512,), device="cuda", generator=gen)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ours = linear_cross_entropy(h, w, t)
    g_h, g_w = torch.autograd.grad(ours, (h, w))
    ref = F.cross_entropy(F.linear(h, w), t)
    r_h, r_w = torch.autograd.grad(ref, (h, w))
    assert ours.dtype == torch.float32 and abs(ours.item() - ref.item()) < 2e-2
    assert g_w.dtype == torch.float32 and torch.allclose(g_w, r_w, atol=2e-3) and torch.allclose(g_h, r_h, atol=2e-3)


def test_bf16_forward_matches_fp32_and_flash_sdpa_runs():
    torch.manual_seed(0)
    model = Decoder(CFG).cuda()
    x = torch.randint(0, 1000, (2, 128), device="cuda")
    ref = model(x).float()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x).float()
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_a_few_compiled_bf16_steps_with_fused_adamw_lower_the_loss():
    torch.manual_seed(0)
    runtime.configure_backends(torch.device("cuda"), tf32=True)
    model = Decoder(CFG).cuda()
    model.compile_blocks()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    batch = torch.randint(0, 50, (8, 65), device="cuda")  # a small vocabulary subset: learnable in a few steps
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch[:, :-1], output="loss", targets=batch[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 1.0


def test_activation_checkpointing_gives_the_same_gradients_on_gpu():
    torch.manual_seed(0)
    model = Decoder(CFG).cuda()
    x = torch.randint(0, 1000, (2, 65), device="cuda")
    grads = []
    for recompute in (False, True):
        model.activation_checkpointing = recompute
        loss = model(x[:, :-1], output="loss", targets=x[:, 1:])
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
