"""Distillation losses: temperature-scaled KL on response tokens, and MSE on a late hidden layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
            temperature: float = 2.0) -> torch.Tensor:
    """KL(teacher_T || student_T) × T², averaged over the positions where `mask` is 1 (Hinton et al.)."""
    t = temperature
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    per_token = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0) * t * t


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the residual streams on the masked positions, relative to the teacher's mean square
    (scale-free, so one weight works for models whose late streams differ in magnitude)."""
    diff = (student.float() - teacher.float()).pow(2).mean(-1)
    scale = teacher.float().pow(2).mean(-1).detach().clamp_min(1e-6)
    return ((diff / scale) * mask).sum() / mask.sum().clamp_min(1.0)


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """(positions where the argmax tokens agree, positions counted) over the masked positions."""
    same = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float() * mask
    return int(same.sum().item()), int(mask.sum().item())
