"""Distillation loss: KL(dense teacher || sparse student), per token, exact or from a compact top-k teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kl_per_token", "topk_teacher", "kl_topk", "complement_logsumexp"]


def kl_per_token(teacher_logp: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of sum_v p_t(v) (log p_t(v) - log p_s(v)).

    teacher_logp: [B, T, V] log-probabilities of the dense model; student_logits: [B, T, V] raw logits.
    """
    student_logp = F.log_softmax(student_logits.float(), dim=-1)
    kl = F.kl_div(student_logp, teacher_logp.float(), log_target=True, reduction="sum")
    return kl / (teacher_logp.numel() // teacher_logp.shape[-1])


def complement_logsumexp(logp: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside `indices`, as a logsumexp over the complement (no cancellation when the
    top-k mass is near 1, and a gradient for every outside token). logp: [..., V], indices: [..., k] -> [...]."""
    floor = torch.finfo(logp.dtype).min  # not -inf: an empty complement (k = V) must give mass 0, not a NaN gradient
    return logp.scatter(-1, indices, floor).logsumexp(-1).clamp_min(floor)


def topk_teacher(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compact teacher: the k largest log-probs, their token ids, and the log of the remaining mass.

    logits: [B, T, V] -> values [B, T, k] float32, indices [B, T, k] int64, log_rest [B, T] float32.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    values, indices = logp.topk(k, dim=-1)
    return values, indices, complement_logsumexp(logp, indices)


def kl_topk(values: torch.Tensor, indices: torch.Tensor, log_rest: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL between teacher and student over k+1 outcomes (the teacher's top k tokens and "all the rest").

    A lower bound of the full KL that equals it when the teacher's mass outside the top k is zero.
    Mean over tokens; student_logits: [B, T, V].
    """
    s_logp = F.log_softmax(student_logits.float(), dim=-1)
    s_top = s_logp.gather(-1, indices)
    kl = (values.exp() * (values - s_top)).sum(-1) + log_rest.exp() * (log_rest - complement_logsumexp(s_logp, indices))
    return kl.mean()
