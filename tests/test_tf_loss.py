"""The TensorFlow Dirichlet-Multinomial loss against ``zoobot_pipeline.stats`` and the torch loss on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("zoobot_pipeline.models.tensorflow")  # first: it loads triton before tensorflow (see there)
tf = pytest.importorskip("tensorflow")

from zoobot_pipeline import stats  # noqa: E402
from zoobot_pipeline.models.tensorflow.loss import (  # noqa: E402
    dirichlet_multinomial_loss,
    dirichlet_multinomial_nll,
)
from zoobot_pipeline.models.torch.loss import dirichlet_multinomial_nll as torch_nll  # noqa: E402
from zoobot_pipeline.schemas import get_schema  # noqa: E402

pytestmark = pytest.mark.tensorflow
SCHEMA = get_schema("decals_dr5")


def _inputs(n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Vote counts (some questions unasked: 0 votes) and concentrations in (1, 101), float64."""
    rng = np.random.default_rng(seed)
    votes = rng.integers(0, 30, size=(n, SCHEMA.n_answers)).astype(np.float64)
    question = SCHEMA.questions[-1]
    votes[: n // 2, question.answers[0].index: question.answers[-1].index + 1] = 0  # unasked for half the galaxies
    concentrations = 1.0 + 100.0 * rng.random((n, SCHEMA.n_answers))
    return votes, concentrations


def test_same_votes_and_concentrations_give_the_same_nll_in_stats_torch_and_tensorflow():
    votes, concentrations = _inputs()
    expected = stats.dirichlet_multinomial_nll(votes, concentrations, SCHEMA)
    from_tf = dirichlet_multinomial_nll(tf.constant(votes), tf.constant(concentrations), SCHEMA).numpy()
    from_torch = torch_nll(torch.from_numpy(votes), torch.from_numpy(concentrations), SCHEMA).numpy()
    assert from_tf.shape == expected.shape == (16, len(SCHEMA.questions)) and from_tf.dtype == np.float64
    assert (expected[: 8, -1] == 0).all() and (from_tf[: 8, -1] == 0).all()
    assert (expected[8:, -1] > 0).all()
    np.testing.assert_allclose(from_tf, expected, rtol=1e-6, atol=0)
    np.testing.assert_allclose(from_tf, from_torch, rtol=1e-6, atol=0)
    loss = float(dirichlet_multinomial_loss(tf.constant(votes), tf.constant(concentrations), SCHEMA))
    assert loss == pytest.approx(expected.sum(axis=1).mean(), rel=1e-6)


def test_float32_agrees_and_gradients_are_finite_and_match_torch():
    votes, concentrations = _inputs(seed=1)
    alpha = tf.Variable(concentrations.astype(np.float32))
    with tf.GradientTape() as tape:
        loss = dirichlet_multinomial_loss(tf.constant(votes.astype(np.float32)), alpha, SCHEMA)
    grad = tape.gradient(loss, alpha).numpy()
    expected = stats.dirichlet_multinomial_nll(votes, concentrations, SCHEMA).sum(axis=1).mean()
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
    question = SCHEMA.questions[-1]  # unasked questions give no gradient
    assert (grad[: 8, question.answers[0].index: question.answers[-1].index + 1] == 0).all()
    alpha_torch = torch.tensor(concentrations.astype(np.float32), requires_grad=True)
    torch_nll(torch.from_numpy(votes.astype(np.float32)), alpha_torch, SCHEMA).sum(dim=1).mean().backward()
    np.testing.assert_allclose(grad, alpha_torch.grad.numpy(), rtol=1e-3, atol=1e-6)


def test_shapes_that_do_not_fit_the_tree_are_refused():
    votes, concentrations = _inputs()
    with pytest.raises(ValueError, match="decals_dr5"):
        dirichlet_multinomial_nll(tf.constant(votes[:, :-1]), tf.constant(concentrations[:, :-1]), SCHEMA)
