"""The fused language-model head + cross-entropy against its unfused definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_model_config
from metapretrain.model import loss as loss_module
from metapretrain.model.decoder import Decoder
from metapretrain.model.loss import chunk_rows, linear_cross_entropy

SMALL = tiny_model_config(97, max_seq_len=32)


def _reference(h, w, t):
    logits = F.linear(h, w)
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), t)


@pytest.mark.parametrize("rows", [1, 7, 64, 1000])
def test_linear_cross_entropy_matches_unfused_loss_and_gradients(monkeypatch, rows):
    # Force chunking at `rows` rows (not dividing N = 50, so the last chunk is short).
    monkeypatch.setattr(loss_module, "MIN_CHUNK_ROWS", rows)
    monkeypatch.setitem(loss_module.CHUNK_ELEMENTS, "cpu", 1)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(50, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(301, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.randint(0, 301, (50,), generator=gen)
    ref = _reference(h, w, t)
    (2.5 * ref).backward()
    ref_grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ours = linear_cross_entropy(h, w, t)
    (2.5 * ours).backward()
    assert ours.dtype == torch.float64
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    assert torch.allclose(h.grad, ref_grads[0], rtol=0, atol=1e-12)
    assert torch.allclose(w.grad, ref_grads[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_cross_entropy_is_exact_when_the_target_probability_underflows(dtype):
    # Targets 500-2000 nats below the best logit: p(target) is 0 after the softmax in both
    # precisions, so those rows fall back to z[target] - logsumexp(z); ordinary rows stay exact.
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(12, 8, dtype=dtype, generator=gen)
    w = torch.randn(40, 8, dtype=dtype, generator=gen)
    h[:4] *= 300.0  # confident rows, with targets chosen as their least likely class
    t = torch.randint(0, 40, (12,), generator=gen)
    t[:4] = (h[:4] @ w.t()).argmin(1)
    h.requires_grad_(), w.requires_grad_()
    ref = _reference(h, w, t)
    assert ref.item() > 100.0
    ref_grads = torch.autograd.grad(ref, (h, w))
    ours = linear_cross_entropy(h, w, t)
    grads = torch.autograd.grad(ours, (h, w))
    assert torch.isfinite(ours)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    assert torch.allclose(ours, ref, rtol=tol, atol=0)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, rtol=tol, atol=tol)


def test_linear_cross_entropy_gradcheck_and_partial_gradients():
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(6, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(9, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.randint(0, 9, (6,), generator=gen)
    assert torch.autograd.gradcheck(lambda a, b: linear_cross_entropy(a, b, t), (h, w))
    # Only the weight needs a gradient (frozen features), then only the hidden states.
    (g_w,) = torch.autograd.grad(linear_cross_entropy(h.detach(), w, t), (w,))
    (ref_w,) = torch.autograd.grad(_reference(h.detach(), w, t), (w,))
    assert torch.allclose(g_w, ref_w, atol=1e-12)
    (g_h,) = torch.autograd.grad(linear_cross_entropy(h, w.detach(), t), (h,))
    (ref_h,) = torch.autograd.grad(_reference(h, w.detach(), t), (h,))
    assert torch.allclose(g_h, ref_h, atol=1e-12)


def test_linear_cross_entropy_without_grad_and_with_retained_graph():
    h, w = torch.randn(10, 8, requires_grad=True), torch.randn(20, 8, requires_grad=True)
    t = torch.randint(0, 20, (10,))
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(h, w, t), _reference(h, w, t), atol=1e-6)
    loss = linear_cross_entropy(h, w, t)
    loss.backward(retain_graph=True)
    first = w.grad.clone()
    loss.backward()  # the saved gradients are not consumed: a second backward adds the same again
    assert torch.allclose(w.grad, 2 * first, atol=1e-6)


def test_linear_cross_entropy_rejects_mismatched_targets():
    with pytest.raises(ValueError, match="3 hidden rows but 4 targets"):
        linear_cross_entropy(torch.randn(3, 2), torch.randn(5, 2), torch.zeros(4, dtype=torch.long))


def test_linear_cross_entropy_under_bf16_autocast_is_close_to_fp32():
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(64, 32, generator=gen, requires_grad=True)
    w = (0.1 * torch.randn(500, 32, generator=gen)).requires_grad_()
    t = torch.randint(0, 500, (64,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(h, w, t)
    ours.backward()
    assert ours.dtype == torch.float32 and w.grad.dtype == torch.float32 and h.grad.dtype == torch.float32
    ref_h, ref_w = torch.autograd.grad(_reference(h, w, t), (h, w))
    assert abs(ours.item() - _reference(h, w, t).item()) < 2e-2
    assert torch.allclose(w.grad, ref_w, atol=2e-3) and torch.allclose(h.grad, ref_h, atol=2e-3)


def test_chunk_rows_amortise_the_weight_gradient():
    cpu = torch.device("cpu")
    assert chunk_rows(1024, 8192, cpu) == 256
    assert chunk_rows(4096, 50_304, cpu) == loss_module.MIN_CHUNK_ROWS  # never tiny chunks at a large vocabulary
    assert chunk_rows(10, 50_304, cpu) == 10


def test_decoder_loss_output_equals_cross_entropy_of_logits_with_same_gradients():
    torch.manual_seed(0)
    model = Decoder(SMALL)
    batch = torch.randint(0, 97, (3, 13))
    ref = F.cross_entropy(model(batch[:, :-1]).reshape(-1, 97), batch[:, 1:].reshape(-1))
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    ours = model(batch[:, :-1], output="loss", targets=batch[:, 1:])
    grads = torch.autograd.grad(ours, list(model.parameters()))
    assert torch.allclose(ours, ref, atol=1e-6)
    for (name, _), a, b in zip(model.named_parameters(), grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    with pytest.raises(ValueError, match="targets are given exactly when"):
        model(batch, output="loss")
    with pytest.raises(ValueError, match="targets are given exactly when"):
        model(batch, targets=batch)



@pytest.mark.slow
def test_compiled_blocks_match_eager_and_keep_parameter_names():
    torch.manual_seed(0)
    eager = Decoder(SMALL)
    compiled = Decoder(SMALL)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks()
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints are unchanged by compiling
    batch = torch.randint(0, 97, (2, 17))
    losses, grads = [], []
    for model in (eager, compiled):
        loss = model(batch[:, :-1], output="loss", targets=batch[:, 1:])
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
