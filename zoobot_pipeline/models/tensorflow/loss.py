"""Dirichlet-Multinomial negative log-likelihood in TensorFlow, matching ``zoobot_pipeline.stats`` and the torch
backend's loss."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from zoobot_pipeline.schemas import Schema

__all__ = ["dirichlet_multinomial_loss", "dirichlet_multinomial_nll"]


def _answer_to_question(schema: Schema, dtype: tf.DType) -> tf.Tensor:
    """``(n_answers, n_questions)`` one-hot matrix: summing answers per question is a matmul with it."""
    matrix = np.zeros((schema.n_answers, len(schema.questions)))
    for question in schema.questions:
        for answer in question.answers:
            matrix[answer.index, question.index] = 1.0
    return tf.constant(matrix, dtype=dtype)


def dirichlet_multinomial_nll(votes: tf.Tensor, concentrations: tf.Tensor, schema: Schema) -> tf.Tensor:
    """Per-question NLL ``(batch, n_questions)`` of vote counts given concentrations, both ``(batch, n_answers)``.

    A question without votes contributes exactly 0 (and no gradient).
    """
    alpha = tf.convert_to_tensor(concentrations)
    if votes.shape[-1] != schema.n_answers or alpha.shape[-1] != schema.n_answers or len(votes.shape) != 2:
        raise ValueError(f"votes {tuple(votes.shape)} and concentrations {tuple(alpha.shape)} must both be "
                         f"(batch, {schema.n_answers}) for schema {schema.name!r}")
    k = tf.cast(votes, alpha.dtype)
    to_question = _answer_to_question(schema, alpha.dtype)
    total = k @ to_question
    alpha_sum = alpha @ to_question
    answer_terms = (tf.math.lgamma(k + alpha) - tf.math.lgamma(alpha) - tf.math.lgamma(k + 1)) @ to_question
    log_prob = tf.math.lgamma(total + 1) + tf.math.lgamma(alpha_sum) - tf.math.lgamma(total + alpha_sum) + answer_terms
    return tf.where(total == 0, tf.zeros_like(log_prob), -log_prob)


def dirichlet_multinomial_loss(votes: tf.Tensor, concentrations: tf.Tensor, schema: Schema) -> tf.Tensor:
    """Training loss: the NLL summed over questions, averaged over the batch (a scalar)."""
    return tf.reduce_mean(tf.reduce_sum(dirichlet_multinomial_nll(votes, concentrations, schema), axis=1))
