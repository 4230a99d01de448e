"""Merging returning volunteer votes into the labelled set: counts summed against an independent pandas sum, new
galaxies appended, bad columns named, the same file never merged twice, and the ``queue merge-votes`` command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from zoobot_pipeline.active.votes_merge import merge_votes
from zoobot_pipeline.cli import app
from zoobot_pipeline.data.votes import VotesError, read_votes
from zoobot_pipeline.schemas import get_schema

SCHEMA = get_schema("decals_dr5")
runner = CliRunner()


def votes_frame(ids: list[str], seed: int) -> pd.DataFrame:
    """Random votes that fit the tree: a question gets at most the votes of the answer it is asked after."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((len(ids), len(SCHEMA.label_cols)), dtype=np.int64)
    for question in SCHEMA.questions:  # built-in order lists every parent before its children
        totals = rng.integers(0, 30, len(ids)) if question.asked_after is None else \
            rng.integers(0, counts[:, question.asked_after.index] + 1)
        for row, total in enumerate(totals):
            counts[row, question.slice] = rng.multinomial(total, np.full(len(question.answers),
                                                                          1 / len(question.answers)))
    return pd.DataFrame(counts, columns=SCHEMA.label_cols).assign(id_str=ids)[["id_str", *SCHEMA.label_cols]]


def test_merge_adds_counts_and_appends_new_galaxies(tmp_path):
    old = votes_frame(["a", "b", "c", "d"], seed=0)
    new = votes_frame(["c", "x", "a", "y"], seed=1)
    pq.write_table(pa.Table.from_pandas(old, preserve_index=False), tmp_path / "votes.parquet")
    new.to_csv(tmp_path / "new.csv", index=False)  # returning votes may come as CSV

    merge_votes(tmp_path / "votes.parquet", tmp_path / "new.csv", tmp_path / "merged.parquet")
    merged = read_votes(tmp_path / "merged.parquet", SCHEMA).to_pandas()
    expected = pd.concat([old, new]).groupby("id_str", sort=False).sum().reset_index()
    assert merged["id_str"].tolist() == ["a", "b", "c", "d", "x", "y"]
    pd.testing.assert_frame_equal(merged, expected, check_dtype=False)
    assert all(merged[c].dtype == np.int64 for c in SCHEMA.label_cols)
    assert merged.loc[merged.id_str == "a", SCHEMA.label_cols[0]].item() == old[SCHEMA.label_cols[0]][0] + \
        new[SCHEMA.label_cols[0]][2]


def test_merging_in_place_and_never_twice(tmp_path):
    labelled = tmp_path / "votes.parquet"
    pq.write_table(pa.Table.from_pandas(votes_frame(["a", "b"], 2), preserve_index=False), labelled)
    pq.write_table(pa.Table.from_pandas(votes_frame(["b", "c"], 3), preserve_index=False), tmp_path / "round1.parquet")
    before = read_votes(labelled, SCHEMA).to_pandas()
    merge_votes(labelled, tmp_path / "round1.parquet", labelled)
    after = read_votes(labelled, SCHEMA).to_pandas()
    assert after["id_str"].tolist() == ["a", "b", "c"]
    assert (after.iloc[0, 1:] == before.iloc[0, 1:]).all()
    with pytest.raises(VotesError, match="round1.parquet: already merged"):
        merge_votes(labelled, tmp_path / "round1.parquet", labelled)
    assert read_votes(labelled, SCHEMA).to_pandas().equals(after)  # refused: file unchanged
    assert not list(tmp_path.glob(".tmp-*"))


def test_bad_votes_files_are_refused_naming_the_columns(tmp_path):
    pq.write_table(pa.Table.from_pandas(votes_frame(["a"], 0), preserve_index=False), tmp_path / "votes.parquet")
    extra = votes_frame(["b"], 1).assign(**{"bar-dr5_very-strong": 3})
    pq.write_table(pa.Table.from_pandas(extra, preserve_index=False), tmp_path / "extra.parquet")
    with pytest.raises(VotesError, match="extra.parquet: column.*not in schema 'decals_dr5': bar-dr5_very-strong"):
        merge_votes(tmp_path / "votes.parquet", tmp_path / "extra.parquet", tmp_path / "out.parquet")
    short = votes_frame(["b"], 1).drop(columns=["merging-dr5_merger"])
    pq.write_table(pa.Table.from_pandas(short, preserve_index=False), tmp_path / "short.parquet")
    with pytest.raises(VotesError, match="short.parquet: missing columns.*merging-dr5_merger"):
        merge_votes(tmp_path / "votes.parquet", tmp_path / "short.parquet", tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()

    result = runner.invoke(app, ["queue", "merge-votes", "--labelled", str(tmp_path / "votes.parquet"), "--new",
                                 str(tmp_path / "extra.parquet"), "--out", str(tmp_path / "out.parquet")])
    assert result.exit_code == 2 and "bar-dr5_very-strong" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_merge_votes_command(tmp_path):
    pq.write_table(pa.Table.from_pandas(votes_frame(["a", "b"], 0), preserve_index=False), tmp_path / "v.parquet")
    pq.write_table(pa.Table.from_pandas(votes_frame(["b", "c"], 1), preserve_index=False), tmp_path / "n.parquet")
    result = runner.invoke(app, ["queue", "merge-votes", "--labelled", str(tmp_path / "v.parquet"), "--new",
                                 str(tmp_path / "n.parquet"), "--out", str(tmp_path / "m.parquet")])
    assert result.exit_code == 0, result.output
    assert "3 galaxies" in " ".join(result.output.split())
    assert pq.read_table(tmp_path / "m.parquet")["id_str"].to_pylist() == ["a", "b", "c"]
