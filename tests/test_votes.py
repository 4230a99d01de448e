"""Votes catalogues: validation names the file and column; tree consistency is checked per galaxy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zoobot_pipeline.data.votes import VotesError, read_votes, tree_violations, vote_matrix
from zoobot_pipeline.schemas import get_schema

SCHEMA = get_schema("decals_dr5")


def _votes_table(counts: np.ndarray) -> pa.Table:
    columns = {"id_str": [f"g{i}" for i in range(len(counts))]}
    columns.update({col: counts[:, i] for i, col in enumerate(SCHEMA.label_cols)})
    return pa.table(columns)


def _replace(table: pa.Table, column: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(column), column, values)


def _consistent_counts(n: int, rng: np.random.Generator) -> np.ndarray:
    """Votes that follow the tree: each child question gets exactly its parent answer's count, split at random."""
    counts = np.zeros((n, SCHEMA.n_answers), dtype=np.int64)
    for q in SCHEMA.questions:  # built-in order lists every parent before its children
        total = np.full(n, 40) if q.asked_after is None else counts[:, q.asked_after.index]
        for g in range(n):
            counts[g, q.slice] = rng.multinomial(total[g], np.ones(len(q.answers)) / len(q.answers))
    return counts


def test_read_votes_round_trip_and_matrix(tmp_path):
    counts = _consistent_counts(5, np.random.default_rng(0))
    path = tmp_path / "votes.parquet"
    pq.write_table(_votes_table(counts), path)
    votes = read_votes(path, SCHEMA)
    assert votes.column_names == ["id_str", *SCHEMA.label_cols]
    np.testing.assert_array_equal(vote_matrix(votes, SCHEMA), counts)
    assert tree_violations(votes, SCHEMA) == []


def test_csv_votes_are_accepted(tmp_path):
    counts = _consistent_counts(3, np.random.default_rng(1))
    path = tmp_path / "votes.csv"
    _votes_table(counts).to_pandas().to_csv(path, index=False)
    np.testing.assert_array_equal(vote_matrix(read_votes(path, SCHEMA), SCHEMA), counts)


def test_tree_violation_names_galaxy_question_and_parent():
    counts = _consistent_counts(4, np.random.default_rng(2))
    bar = SCHEMA.question("bar-dr5")
    counts[2, bar.start] += 3  # more bar votes than "not edge-on" answers
    found = tree_violations(_votes_table(counts), SCHEMA)
    assert [(v.id_str, v.question, v.parent_answer) for v in found] == [("g2", "bar-dr5", "disk-edge-on-dr5_no")]
    assert found[0].question_votes == found[0].parent_votes + 3


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.drop_columns(["bar-dr5_weak", "merging-dr5_merger"]), "missing columns.*bar-dr5_weak"),
        (lambda t: t.set_column(0, "id_str", pa.array(["a", "a", "b"])), "duplicate id_str"),
        (lambda t: _replace(t, "disk-edge-on-dr5_yes", pa.array([1, -2, 0])),
         "'disk-edge-on-dr5_yes' has a negative count at row 1"),
        (lambda t: _replace(t, "disk-edge-on-dr5_yes", pa.array([1.5, 0.0, 0.0])), "whole vote counts"),
        (lambda t: _replace(t, "disk-edge-on-dr5_yes", pa.array([1, None, 0])), "empty at row 1"),
    ],
)
def test_bad_votes_name_file_and_column(tmp_path, mutate, message):
    path = tmp_path / "votes.parquet"
    pq.write_table(mutate(_votes_table(_consistent_counts(3, np.random.default_rng(3)))), path)
    with pytest.raises(VotesError, match=message) as err:
        read_votes(path, SCHEMA)
    assert str(path) in str(err.value)


def test_unreadable_votes_file(tmp_path):
    path = tmp_path / "votes.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(VotesError, match="cannot read votes catalogue"):
        read_votes(path, SCHEMA)
