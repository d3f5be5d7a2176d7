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

Each chunk goes through torch's fused softmax (one row-local pass) in place,
the loss is -log p(target), and the 1/N of the mean scales the two small
[*, d] gradients once, not the chunk. Rows whose target probability
underflowed (a loss above ~70 nats) are recomputed exactly from their logits.

Numerics: softmax in fp32; under bf16 autocast the matmuls run in bf16, the
softmax and the weight-gradient accumulator in fp32.
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


def _log_target_probability(p_target: torch.Tensor, h: torch.Tensor, w_t: torch.Tensor, targets: torch.Tensor,
                            acc: torch.dtype) -> torch.Tensor:
    """log p(target) per row [N, 1] from the softmax; exact also when p(target) underflowed.

    A target probability below `tiny` (a loss above ~70 nats in fp32) has lost its digits
    to underflow. Those rows, which only a diverging model produces, are recomputed from
    their logits as z[target] - logsumexp(z). Called once per loss, after the chunk loop:
    the check is the only host synchronisation.
    """
    logp = p_target.log()
    low = (p_target < torch.finfo(acc).tiny * 2**24).squeeze(1)
    if bool(low.any()):
        rows = low.nonzero().squeeze(1)
        z = (h[rows] @ w_t).to(acc)
        logp[rows] = z.gather(1, targets[rows]) - z.logsumexp(1, keepdim=True)
    return logp


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
        p_target = torch.empty(n, 1, dtype=acc, device=h.device)
        # The head as a contiguous [d, V] operand: the logits GEMM runs 15-20% faster on CPU than
        # with the transposed view of the [V, d] weight (one 4·V·d-byte copy per call, reused by every chunk).
        w_t = w.t().contiguous()
        # One [rows, V] logits buffer, reused by every chunk (a fresh block per chunk costs page faults on CPU).
        buffer = torch.empty(min(rows, n), w.shape[0], dtype=dtype, device=h.device)
        for start in range(0, n, rows):
            hc, tc = h[start:start + rows], targets[start:start + rows, None]
            z = torch.mm(hc, w_t, out=buffer[:hc.shape[0]]).to(acc)  # [c, V]
            # One fused, row-local pass (max, exp, sum, divide) instead of five passes over the chunk.
            torch.softmax(z, 1, out=z)
            torch.gather(z, 1, tc, out=p_target[start:start + rows])
            if not (need_h or need_w):
                continue
            # z := softmax - onehot, the gradient of the summed loss over these rows; the 1/N of the
            # mean is applied to the two small [*, d] results after the loop, not to the chunk.
            z.scatter_add_(1, tc, torch.full(tc.shape, -1.0, dtype=z.dtype, device=z.device))
            g = z.to(dtype)
            if need_h:
                torch.mm(g, w, out=grad_h[start:start + rows])
            if need_w:
                if dtype == acc:
                    grad_w.addmm_(g.t(), hc)
                else:
                    grad_w.add_(g.t() @ hc)
        if need_h:
            grad_h.mul_(1.0 / n)
        if need_w:
            grad_w.mul_(1.0 / n)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.input_dtypes, ctx.acc = (hidden.dtype, weight.dtype), acc
        return -_log_target_probability(p_target, h, w_t, targets[:, None], acc).sum() / n

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


def next_token_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The pretraining objective: mean cross-entropy of predicting batch[:, 1:] from batch[:, :-1], through a
    Decoder's fused head + loss (what training, evaluation and the dynamics probe all compute)."""
    return model(batch[:, :-1], output="loss", targets=batch[:, 1:])
