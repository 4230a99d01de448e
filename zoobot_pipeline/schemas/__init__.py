"""Galaxy Zoo decision trees: questions, answers, label columns and which answer leads to which question.

Label columns follow the Galaxy Zoo data releases: ``{question}_{answer}`` where the question name carries the campaign
suffix (``smooth-or-featured-dr5_smooth``). Built-in trees live as YAML next to this module and are loaded with the same
validating loader that users' own trees go through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from zoobot_pipeline._safe_load import MAX_YAML_BYTES, SafeYamlLoader, load_yaml
from zoobot_pipeline.errors import SchemaError, UnknownNameError

__all__ = ["Answer", "Question", "Schema", "SchemaError", "available_schemas", "get_schema", "load_schema"]


@dataclass(frozen=True)
class Answer:
    """One answer of a question; ``index`` is its position in ``Schema.label_cols``."""

    name: str
    question: str
    index: int

    @property
    def label_col(self) -> str:
        return f"{self.question}_{self.name}"


@dataclass(frozen=True)
class Question:
    """A question with its answers; ``start``/``stop`` slice its answers out of ``Schema.label_cols``."""

    name: str
    answers: tuple[Answer, ...]
    index: int
    asked_after: Answer | None = None

    @property
    def start(self) -> int:
        return self.answers[0].index

    @property
    def stop(self) -> int:
        """One past the index of the last answer (Python slice convention)."""
        return self.answers[-1].index + 1

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def label_cols(self) -> list[str]:
        return [a.label_col for a in self.answers]


@dataclass(frozen=True)
class Schema:
    """A validated Galaxy Zoo decision tree."""

    name: str
    questions: tuple[Question, ...]
    description: str = ""
    _by_label: dict[str, Answer] = field(init=False, repr=False, compare=False)
    _by_question: dict[str, Question] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_label", {a.label_col: a for q in self.questions for a in q.answers})
        object.__setattr__(self, "_by_question", {q.name: q for q in self.questions})

    @property
    def label_cols(self) -> list[str]:
        return [a.label_col for q in self.questions for a in q.answers]

    @property
    def n_answers(self) -> int:
        return sum(len(q.answers) for q in self.questions)

    def question(self, name: str) -> Question:
        try:
            return self._by_question[name]
        except KeyError:
            raise UnknownNameError(f"schema {self.name!r} has no question {name!r}") from None

    def answer(self, label_col: str) -> Answer:
        try:
            return self._by_label[label_col]
        except KeyError:
            raise UnknownNameError(f"schema {self.name!r} has no answer column {label_col!r}") from None

    def path(self, question: str | Question) -> list[Answer]:
        """The answers leading from the root to ``question``, root first."""
        q = question if isinstance(question, Question) else self.question(question)
        chain: list[Answer] = []
        while q.asked_after is not None:
            chain.append(q.asked_after)
            q = self.question(q.asked_after.question)
        return chain[::-1]

    def probability_asked(self, fractions: np.ndarray) -> np.ndarray:
        """Probability that each question is asked, from expected vote fractions ``(..., n_answers)``.

        The product of the fractions of the answers on the question's path through the tree; root questions give 1.
        Returns ``(..., n_questions)``.
        """
        fractions = np.asarray(fractions, dtype=np.float64)
        if fractions.shape[-1] != self.n_answers:
            raise ValueError(
                f"expected {self.n_answers} answer columns for schema {self.name!r}, got {fractions.shape[-1]}"
            )
        prob = np.ones(fractions.shape[:-1] + (len(self.questions),))
        for q in self.questions:
            for answer in self.path(q):
                prob[..., q.index] *= fractions[..., answer.index]
        return prob

    def to_dict(self) -> dict[str, Any]:
        """A plain dict in the YAML layout that ``load_schema`` reads."""
        questions = []
        for q in self.questions:
            entry: dict[str, Any] = {"name": q.name, "answers": [a.name for a in q.answers]}
            if q.asked_after is not None:
                entry["asked_after"] = q.asked_after.label_col
            questions.append(entry)
        return {"name": self.name, "description": self.description, "questions": questions}


class _StringLoader(SafeYamlLoader):
    """YAML loader that keeps every plain scalar a string (``yes``, ``no``, ``1`` are answer names, not bools/ints);
    bounded like every YAML the project reads (no anchors or aliases, limited nesting: :mod:`.._safe_load`)."""


_StringLoader.yaml_implicit_resolvers = {}


def schema_from_dict(spec: dict[str, Any], source: str = "<dict>") -> Schema:
    """Build and validate a schema from ``{"name", "questions": [{"name", "answers", "asked_after"?}]}``."""
    if not isinstance(spec, dict) or "questions" not in spec:
        raise SchemaError(f"{source}: a schema needs a 'questions' list")
    raw_questions = spec["questions"]
    if not isinstance(raw_questions, list) or not raw_questions:
        raise SchemaError(f"{source}: 'questions' must be a non-empty list")

    questions_raw: list[tuple[str, list[str], str | None]] = []
    seen_questions: set[str] = set()
    seen_cols: set[str] = set()
    for position, raw in enumerate(raw_questions):
        if not isinstance(raw, dict) or not raw.get("name"):
            raise SchemaError(f"{source}: question #{position + 1} has no name")
        name = str(raw["name"])
        if name in seen_questions:
            raise SchemaError(f"{source}: question {name!r} is defined twice")
        seen_questions.add(name)
        answers = raw.get("answers") or []
        if not isinstance(answers, list) or not answers:
            raise SchemaError(f"{source}: question {name!r} has no answers")
        answers = [str(a) for a in answers]
        for a in answers:
            col = f"{name}_{a}"
            if col in seen_cols:
                raise SchemaError(f"{source}: question {name!r} repeats label column {col!r}")
            seen_cols.add(col)
        parent = raw.get("asked_after")
        parent = None if parent in (None, "", "null", "~", "None") else str(parent)
        questions_raw.append((name, answers, parent))

    for name, _, parent in questions_raw:
        if parent is not None and parent not in seen_cols:
            raise SchemaError(f"{source}: question {name!r} is asked after unknown answer {parent!r}")

    col_to_question = {f"{n}_{a}": n for n, answers, _ in questions_raw for a in answers}
    parent_of = {n: (col_to_question[p] if p else None) for n, _, p in questions_raw}
    for name in parent_of:
        visited = [name]
        current = parent_of[name]
        while current is not None:
            if current in visited:
                cycle = " -> ".join(visited + [current])
                raise SchemaError(f"{source}: question {name!r} is in a dependency cycle: {cycle}")
            visited.append(current)
            current = parent_of[current]

    answers_by_col: dict[str, Answer] = {}
    index = 0
    built: list[tuple[str, tuple[Answer, ...], str | None]] = []
    for name, answers, parent in questions_raw:
        objs = tuple(Answer(name=a, question=name, index=index + i) for i, a in enumerate(answers))
        index += len(objs)
        answers_by_col.update({o.label_col: o for o in objs})
        built.append((name, objs, parent))
    questions = tuple(
        Question(name=name, answers=objs, index=i, asked_after=answers_by_col[parent] if parent else None)
        for i, (name, objs, parent) in enumerate(built)
    )
    return Schema(name=str(spec.get("name", Path(source).stem)), questions=questions,
                  description=str(spec.get("description", "")))


def load_schema(path: str | Path) -> Schema:
    """Load and validate a decision tree from a YAML file (layout as in ``schemas/builtin/*.yaml``).

    The file must be UTF-8, at most 1 MiB, without YAML anchors or aliases; anything else is a :class:`SchemaError`
    naming it."""
    path = Path(path)
    try:
        spec = load_yaml(path, SchemaError, "schema", loader=_StringLoader, max_bytes=MAX_YAML_BYTES)
    except FileNotFoundError as err:
        raise SchemaError(f"{path}: cannot read schema file: {err.strerror}") from None
    return schema_from_dict(spec, source=str(path))


def available_schemas() -> list[str]:
    """Names accepted by ``get_schema``."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__package__).joinpath("builtin").iterdir()
                  if p.name.endswith(".yaml"))


@cache
def get_schema(name: str) -> Schema:
    """A built-in Galaxy Zoo tree by name (gz2, decals_dr5, decals_dr8, desi, euclid) or the path of a YAML tree."""
    if name.endswith((".yaml", ".yml")):
        return load_schema(name)
    if name not in available_schemas():
        raise UnknownNameError(f"unknown schema {name!r}; built-in schemas: {', '.join(available_schemas())}")
    with resources.as_file(resources.files(__package__).joinpath("builtin", f"{name}.yaml")) as path:
        return load_schema(path)
