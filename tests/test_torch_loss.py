from __future__ import annotations

import numpy as np
import pytest
import torch

from zoobot_pipeline.models.torch.loss import dirichlet_multinomial_loss, dirichlet_multinomial_nll
from zoobot_pipeline.schemas import get_schema
from zoobot_pipeline.stats import dirichlet_multinomial_nll as numpy_nll

torch.set_num_threads(2)


def _random_inputs(schema, n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    votes = rng.integers(0, 30, size=(n, schema.n_answers))
    unasked = rng.random((n, len(schema.questions))) < 0.3
    for q in schema.questions:
        votes[unasked[:, q.index], q.slice] = 0
    concentrations = rng.uniform(1.0, 101.0, size=(n, schema.n_answers))
    return votes, concentrations


@pytest.mark.parametrize("schema_name", ["decals_dr5", "gz2"])
def test_loss_matches_numpy_reference(schema_name):
    schema = get_schema(schema_name)
    votes, concentrations = _random_inputs(schema)
    expected = numpy_nll(votes, concentrations, schema)
    per_question = dirichlet_multinomial_nll(torch.from_numpy(votes), torch.from_numpy(concentrations), schema)
    np.testing.assert_allclose(per_question.numpy(), expected, rtol=1e-6, atol=1e-9)
    loss = dirichlet_multinomial_loss(torch.from_numpy(votes), torch.from_numpy(concentrations), schema)
    np.testing.assert_allclose(loss.item(), expected.sum(1).mean(), rtol=1e-6)


def test_unasked_question_contributes_exactly_zero_and_gradients_are_finite():
    schema = get_schema("decals_dr5")
    votes, concentrations = _random_inputs(schema, n=16, seed=1)
    votes[:, schema.questions[-1].slice] = 0
    alpha = torch.tensor(concentrations, requires_grad=True)
    nll = dirichlet_multinomial_nll(torch.from_numpy(votes), alpha, schema)
    assert torch.all(nll[:, -1] == 0)
    nll.sum(1).mean().backward()
    assert torch.isfinite(alpha.grad).all()
    assert torch.all(alpha.grad[:, schema.questions[-1].slice] == 0)


def test_shape_mismatch_is_an_error():
    schema = get_schema("decals_dr5")
    with pytest.raises(ValueError, match="must both be"):
        dirichlet_multinomial_nll(torch.zeros(2, 3), torch.ones(2, 3), schema)
