"""Token classification on a pretrained Decoder: a linear head, optionally under a linear-chain CRF.

The classifier works on words: it gathers the decoder's final hidden state at
each word's first subword ([B, W, d]) and maps it to label scores. With the
linear head the loss is the mean cross-entropy over words (the paper's code);
with `finetune.head_type: crf` (the paper's text) it is the CRF negative
log-likelihood and decoding is Viterbi.
"""

from __future__ import annotations

import torch
from torch import nn


class CRF(nn.Module):
    """Linear-chain CRF over label ids: start, end and transition scores (from row label to column label).

    Masks must be left-aligned (a sentence's words first, then padding) and
    every sequence must have at least one word.
    """

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.zeros(num_labels))
        self.end = nn.Parameter(torch.zeros(num_labels))
        self.transitions = nn.Parameter(torch.zeros(num_labels, num_labels))

    def score(self, emissions: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised score of the given label paths: [B]."""
        B, W, _ = emissions.shape
        m = mask.to(emissions.dtype)
        emit = emissions.gather(2, labels.unsqueeze(2)).squeeze(2)  # [B, W]
        s = self.start[labels[:, 0]] + (emit * m).sum(1)
        if W > 1:
            s = s + (self.transitions[labels[:, :-1], labels[:, 1:]] * m[:, 1:]).sum(1)
        last = labels.gather(1, (mask.sum(1) - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        return s + self.end[last]

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log Z by the forward algorithm: [B]."""
        alpha = self.start + emissions[:, 0]  # [B, L]
        for t in range(1, emissions.shape[1]):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + self.transitions + emissions[:, t].unsqueeze(1), dim=1)
            alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)
        return torch.logsumexp(alpha + self.end, dim=1)

    def log_likelihood(self, emissions: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(labels | emissions) per sequence: [B]."""
        return self.score(emissions, labels, mask) - self.log_partition(emissions, mask)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Viterbi: the best label path of each sequence (length = its number of words)."""
        score = self.start + emissions[:, 0]  # [B, L]
        back = []
        for t in range(1, emissions.shape[1]):
            cand = score.unsqueeze(2) + self.transitions  # [B, L_prev, L]
            best, idx = cand.max(dim=1)
            nxt = best + emissions[:, t]
            m = mask[:, t].unsqueeze(1)
            score = torch.where(m, nxt, score)
            # Padded steps point each label to itself, so backtracking passes through them unchanged.
            back.append(torch.where(m, idx, torch.arange(score.shape[1], device=score.device).expand_as(idx)))
        score = score + self.end
        lengths = mask.sum(1).tolist()
        last = score.argmax(1)
        paths = [last]
        for idx in reversed(back):
            last = idx.gather(1, last.unsqueeze(1)).squeeze(1)
            paths.append(last)
        full = torch.stack(paths[::-1], dim=1).tolist()  # [B, W]
        return [row[:n] for row, n in zip(full, lengths, strict=True)]


class TokenClassifier(nn.Module):
    """`backbone` (a Decoder) + `head` (Linear d → labels) [+ `crf`]."""

    def __init__(self, backbone: nn.Module, num_labels: int, head_type: str = "linear") -> None:
        super().__init__()
        if head_type not in ("linear", "crf"):
            raise ValueError(f"finetune.head_type must be 'linear' or 'crf', got {head_type!r}")
        self.backbone = backbone
        self.head = nn.Linear(backbone.cfg.d_model, num_labels)
        self.crf = CRF(num_labels) if head_type == "crf" else None

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters()) + (list(self.crf.parameters()) if self.crf is not None else [])

    def word_features(self, input_ids: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """Final hidden states at each word's first subword: [B, W, d]."""
        hidden = self.backbone.hidden(input_ids)
        return hidden.gather(1, starts.unsqueeze(2).expand(-1, -1, hidden.shape[2]))

    def emissions(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def loss(self, emissions: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n_words = mask.sum().clamp(min=1)
        if self.crf is None:
            ce = nn.functional.cross_entropy(emissions.transpose(1, 2).float(), labels, reduction="none")
            return (ce * mask).sum() / n_words
        return -self.crf.log_likelihood(emissions.float(), labels, mask).sum() / n_words

    @torch.no_grad()
    def predict(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        if self.crf is None:
            best = emissions.argmax(-1).tolist()
            return [row[:n] for row, n in zip(best, mask.sum(1).tolist(), strict=True)]
        return self.crf.decode(emissions.float(), mask)
