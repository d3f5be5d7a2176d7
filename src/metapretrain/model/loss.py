"""Language-model head and cross-entropy fused into one autograd function.

The unfused path (`F.cross_entropy(lm_head(h))`) materialises the [N, V]
logits and walks them many times, allocating several more tensors of that
size on the way: the log-softmax output, its gradient, the one-hot gradient
of the gather. On the CPU presets that vocabulary-sized work costs as much
as every transformer block together, and at the paper's vocabulary (50,304)
and context (2,048) the fp32 logits of one micro-batch of 8 take 3.3 GB.

Here the rows are processed in chunks of about `CHUNK_ELEMENTS` logits (and
at least `MIN_CHUNK_ROWS` rows), so
the [chunk, V] block stays in cache and nothing of size N·V is ever
allocated. Because the loss is a scalar mean, its gradients with respect
to the hidden states and to the head weight are known up to the incoming
scalar during the forward pass: each chunk turns its logits into
softmax - onehot in place and immediately multiplies them into dL/dh
(its rows) and dL/dW (accumulated). The backward only scales those two
by dLoss. No logits are kept, no exp is computed twice, and there is no
recomputation. When no input needs a gradient (evaluation), only the loss
is computed.

Numerics: max-shifted log-sum-exp in fp32; under bf16 autocast the matmuls
run in bf16, the softmax and the weight-gradient accumulator in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Logits per chunk: 2M fp32 values (8 MB, about an L2/L3 slice) on CPU; larger on GPUs.
CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 25}
# Every chunk reads and writes the whole [V, d] weight-gradient accumulator, so chunks need enough
# rows to amortise that traffic (at the paper's vocabulary, 20-row chunks ran 4x slower than 256-row ones).
MIN_CHUNK_ROWS = 256


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


def chunk_rows(n_rows: int, vocab: int, device: torch.device) -> int:
    per_chunk = CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cuda"])
    return max(1, min(n_rows, max(MIN_CHUNK_ROWS, per_chunk // max(vocab, 1))))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        dtype = _compute_dtype(hidden)
        h, w = hidden.to(dtype), weight.to(dtype)
        acc = torch.promote_types(dtype, torch.float32)  # softmax precision: fp32, or fp64 for fp64 inputs
        n = h.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=acc, device=w.device) if need_w else None
        total_loss = torch.zeros((), dtype=acc, device=h.device)
        # One [rows, V] logits buffer, reused by every chunk (a fresh block per chunk costs page faults on CPU).
        buffer = torch.empty(min(rows, n), w.shape[0], dtype=dtype, device=h.device)
        for start in range(0, n, rows):
            hc, tc = h[start:start + rows], targets[start:start + rows, None]
            z = torch.mm(hc, w.t(), out=buffer[:hc.shape[0]]).to(acc)  # [c, V]
            target_logit = z.gather(1, tc)
            zmax = z.amax(1, keepdim=True)
            z.sub_(zmax).exp_()  # z := exp(z - max), in place
            denom = z.sum(1, keepdim=True)
            total_loss += (zmax + denom.log() - target_logit).sum()
            if not (need_h or need_w):
                continue
            # z := (softmax - onehot) / N, the gradient of the mean loss with respect to these logits.
            z.mul_(denom.reciprocal_().mul_(1.0 / n))
            z.scatter_add_(1, tc, torch.full(tc.shape, -1.0 / n, dtype=z.dtype, device=z.device))
            g = z.to(dtype)
            if need_h:
                torch.mm(g, w, out=grad_h[start:start + rows])
            if need_w:
                if dtype == acc:
                    grad_w.addmm_(g.t(), hc)
                else:
                    grad_w.add_(g.t() @ hc)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.input_dtypes, ctx.acc = (hidden.dtype, weight.dtype), acc
        return total_loss / n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        g = grad_loss.to(ctx.acc)
        out_h = (grad_h.to(ctx.acc) * g).to(ctx.input_dtypes[0]) if ctx.needs_input_grad[0] else None
        out_w = (grad_w * g).to(ctx.input_dtypes[1]) if ctx.needs_input_grad[1] else None
        return out_h, out_w, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`.

    hidden [..., d], weight [V, d], targets [...] (int64 class ids; no ignore
    index). Equals `F.cross_entropy(F.linear(hidden, weight).float(), targets)`
    and its gradients, computed chunk by chunk in eager mode. Under
    `torch.compile` the unfused form is traced instead and the compiler fuses it.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    if torch.compiler.is_compiling():
        return F.cross_entropy(F.linear(h, weight).float(), t)
    if t.numel() != h.shape[0]:
        raise ValueError(f"linear_cross_entropy: {h.shape[0]} hidden rows but {t.numel()} targets")
    return _LinearCrossEntropy.apply(h, weight, t, chunk_rows(h.shape[0], weight.shape[0], h.device))
