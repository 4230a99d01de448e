"""Dirichlet-Multinomial negative log-likelihood in torch, matching ``zoobot_pipeline.stats``."""

from __future__ import annotations

import torch

from zoobot_pipeline.schemas import Schema

__all__ = ["dirichlet_multinomial_loss", "dirichlet_multinomial_nll"]


def _question_of_answer(schema: Schema, device: torch.device) -> torch.Tensor:
    return torch.tensor([q.index for q in schema.questions for _ in q.answers], dtype=torch.long, device=device)


def dirichlet_multinomial_nll(votes: torch.Tensor, concentrations: torch.Tensor, schema: Schema) -> torch.Tensor:
    """Per-question NLL ``(batch, n_questions)`` of vote counts given concentrations, both ``(batch, n_answers)``.

    A question without votes contributes exactly 0 (and no gradient).
    """
    if votes.shape != concentrations.shape or concentrations.shape[-1] != schema.n_answers:
        raise ValueError(f"votes {tuple(votes.shape)} and concentrations {tuple(concentrations.shape)} must both be "
                         f"(batch, {schema.n_answers}) for schema {schema.name!r}")
    k = votes.to(concentrations.dtype)
    alpha = concentrations
    index = _question_of_answer(schema, concentrations.device)

    def per_question(values: torch.Tensor) -> torch.Tensor:
        zeros = values.new_zeros(values.shape[0], len(schema.questions))
        return zeros.index_add(1, index, values)

    total = per_question(k)
    alpha_sum = per_question(alpha)
    answer_terms = per_question(torch.lgamma(k + alpha) - torch.lgamma(alpha) - torch.lgamma(k + 1))
    log_prob = torch.lgamma(total + 1) + torch.lgamma(alpha_sum) - torch.lgamma(total + alpha_sum) + answer_terms
    return torch.where(total == 0, torch.zeros_like(log_prob), -log_prob)


def dirichlet_multinomial_loss(votes: torch.Tensor, concentrations: torch.Tensor, schema: Schema) -> torch.Tensor:
    """Training loss: the NLL summed over questions, averaged over the batch (a scalar)."""
    return dirichlet_multinomial_nll(votes, concentrations, schema).sum(dim=1).mean()
