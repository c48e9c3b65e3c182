"""Distillation loss: KL(dense teacher || sparse student), per token."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kl_per_token"]


def kl_per_token(teacher_logp: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of sum_v p_t(v) (log p_t(v) - log p_s(v)).

    teacher_logp: [B, T, V] log-probabilities of the dense model; student_logits: [B, T, V] raw logits.
    """
    student_logp = F.log_softmax(student_logits.float(), dim=-1)
    kl = F.kl_div(student_logp, teacher_logp.float(), log_target=True, reduction="sum")
    return kl / (teacher_logp.numel() // teacher_logp.shape[-1])
