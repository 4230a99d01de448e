"""Model outputs ``(n, S, n_outputs)`` (S MC-dropout samples per galaxy) to catalogue columns; numpy and pyarrow only.

Decision tree (``dirichlet``): ``{label}_fraction`` (expected vote fraction, the mean over samples of ``a / A``
within each question), ``{label}_concentration`` (mean over samples), per question ``{question}_mutual_information``
and ``{question}_entropy`` (of ``n_volunteers`` votes, in nats: :func:`zoobot_pipeline.stats.schema_vote_information`)
and ``{question}_probability_asked`` (from the fractions), and ``acquisition`` = sum over questions of
mutual information times probability asked (:func:`zoobot_pipeline.stats.acquisition_score`).

Classification: ``p_{class}`` (mean over samples), ``predicted`` (the most probable class), ``entropy`` of the mean
and ``mutual_information`` = entropy of the mean minus the mean entropy (BALD over classes, nats); ``acquisition`` is
that mutual information (:func:`zoobot_pipeline.stats.class_mutual_information`). Regression: ``{name}`` (mean over
samples) and ``{name}_std`` (standard deviation over samples, ``ddof=0``).

Numbers are computed in float64 and stored as float32. Column names: :mod:`zoobot_pipeline.catalogue`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from zoobot_pipeline.catalogue import (
    ACQUISITION,
    ENTROPY,
    MUTUAL_INFORMATION,
    PREDICTED,
    PROBABILITY_ASKED,
    class_column,
    concentration_column,
    fraction_column,
    question_column,
    std_column,
)
from zoobot_pipeline.errors import check_name
from zoobot_pipeline.runtime.package import TASKS, ModelPackage
from zoobot_pipeline.schemas import Schema
from zoobot_pipeline.stats import (
    Seed,
    acquisition_score,
    class_entropy,
    class_mutual_information,
    expected_fractions,
    schema_vote_information,
)

__all__ = ["OutputColumns"]


def _field(name: str, description: str, unit: str | None = None, type_: pa.DataType | None = None) -> pa.Field:
    metadata = {"description": description} | ({"unit": unit} if unit else {})
    return pa.field(name, type_ or pa.float32(), metadata=metadata)


@dataclass(frozen=True)
class OutputColumns:
    """How one model's outputs become catalogue columns (see the module docstring)."""

    task: str
    output_names: tuple[str, ...]
    schema: Schema | None = None
    n_volunteers: int = 40

    def __post_init__(self) -> None:
        check_name(self.task, TASKS, "task")
        if self.task == "dirichlet" and (self.schema is None or tuple(self.schema.label_cols) != self.output_names):
            raise ValueError("a dirichlet model needs its schema, with label columns equal to the output names")

    @classmethod
    def for_package(cls, package: ModelPackage) -> OutputColumns:
        """The columns of a model package's outputs."""
        return cls(package.task, package.output_names, package.schema, package.n_volunteers)

    def fields(self) -> list[pa.Field]:
        """Arrow fields of the model columns, in catalogue order, with units and descriptions."""
        if self.task == "dirichlet":
            assert self.schema is not None
            questions = [q.name for q in self.schema.questions]
            return [
                *(_field(fraction_column(label), "expected vote fraction, mean over MC-dropout samples")
                  for label in self.output_names),
                *(_field(concentration_column(label), "Dirichlet concentration, mean over MC-dropout samples")
                  for label in self.output_names),
                *(_field(question_column(q, MUTUAL_INFORMATION), f"mutual information (BALD) of "
                         f"{self.n_volunteers} votes and the model", "nat") for q in questions),
                *(_field(question_column(q, ENTROPY), f"predictive entropy of {self.n_volunteers} votes", "nat")
                  for q in questions),
                *(_field(question_column(q, PROBABILITY_ASKED), "product of the expected fractions on the "
                         "question's path") for q in questions),
                _field(ACQUISITION, "sum over questions of mutual information x probability asked", "nat"),
            ]
        if self.task == "classification":
            return [
                *(_field(class_column(name), "class probability, mean over MC-dropout samples")
                  for name in self.output_names),
                _field(PREDICTED, "most probable class", type_=pa.string()),
                _field(ENTROPY, "entropy of the mean class probabilities", "nat"),
                _field(MUTUAL_INFORMATION, "mutual information (BALD) of the class and the model", "nat"),
                _field(ACQUISITION, MUTUAL_INFORMATION, "nat"),
            ]
        return [field for name in self.output_names
                for field in (_field(name, "mean over MC-dropout samples"),
                              _field(std_column(name), "standard deviation over MC-dropout samples (ddof=0)"))]

    def compute(self, outputs: np.ndarray, seed: Seed = 0) -> dict[str, np.ndarray]:
        """Column arrays (float32, or strings for ``predicted``) for outputs ``(n, S, n_outputs)``, keyed by field
        name. ``seed`` (one int, or one per galaxy) seeds the sampled vote-space estimates (see
        :mod:`zoobot_pipeline.stats`)."""
        outputs = np.asarray(outputs, dtype=np.float64)
        if outputs.ndim != 3 or outputs.shape[2] != len(self.output_names):
            raise ValueError(f"expected outputs (n, samples, {len(self.output_names)}), got {outputs.shape}")
        if self.task == "dirichlet":
            values = self._dirichlet(outputs, seed)
        elif self.task == "classification":
            values = self._classification(outputs)
        else:
            values = {}
            for j, name in enumerate(self.output_names):
                values[name] = outputs[:, :, j].mean(axis=1)
                values[std_column(name)] = outputs[:, :, j].std(axis=1)
        return {k: v if v.dtype.kind in "OU" else v.astype(np.float32) for k, v in values.items()}

    def _dirichlet(self, alpha: np.ndarray, seed: Seed) -> dict[str, np.ndarray]:
        assert self.schema is not None
        fractions = expected_fractions(alpha, self.schema)
        concentrations = alpha.mean(axis=1)
        info = schema_vote_information(alpha, self.schema, self.n_volunteers, seed=seed)
        asked = self.schema.probability_asked(fractions)
        values = {fraction_column(label): fractions[:, j] for j, label in enumerate(self.output_names)}
        values |= {concentration_column(label): concentrations[:, j] for j, label in enumerate(self.output_names)}
        for quantity, array in ((MUTUAL_INFORMATION, info.mutual_information), (ENTROPY, info.predictive_entropy),
                                (PROBABILITY_ASKED, asked)):
            values |= {question_column(q.name, quantity): array[:, q.index] for q in self.schema.questions}
        values[ACQUISITION] = acquisition_score(info.mutual_information, asked)
        return values

    def _classification(self, probabilities: np.ndarray) -> dict[str, np.ndarray]:
        mean = probabilities.mean(axis=1)
        mutual_information = class_mutual_information(probabilities)
        values = {class_column(name): mean[:, j] for j, name in enumerate(self.output_names)}
        values[PREDICTED] = np.asarray(self.output_names, dtype=object)[mean.argmax(axis=1)]
        values |= {ENTROPY: class_entropy(mean), MUTUAL_INFORMATION: mutual_information,
                   ACQUISITION: mutual_information}
        return values
