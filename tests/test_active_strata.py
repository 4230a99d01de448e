"""Stratified batches: shares proportional to each predicted kind's eligible galaxies, each stratum's picks its best by
the sampling key; checked against an independent computation (pandas argmax, Hamilton's method written again, hashlib
Gumbel keys), across file layouts, with the random fraction, in the CLI, and on bad input."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_checks import error_line
from test_active_ranking import independent_scores, write_catalogue, write_with_nan
from test_active_sampling import expected_sampled, relayout
from typer.testing import CliRunner

from zoobot_pipeline.active import acquisition as acq
from zoobot_pipeline.active.ranking import rank_catalogue, rank_settings
from zoobot_pipeline.active.strata import allocate, resolve_strata
from zoobot_pipeline.cli import app
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.schemas import get_schema

runner = CliRunner()
TREE = get_schema("decals_dr5")
STRATA = ("smooth-or-featured-dr5", "disk-edge-on-dr5")


def hamilton(eligible: dict[str, int], total: int) -> dict[str, int]:
    """Largest-remainder shares of ``total`` in proportion to ``eligible`` (ties: the earlier key), no caps."""
    n = sum(eligible.values())
    exact = {k: total * v / n for k, v in eligible.items()}
    given = {k: int(np.floor(x)) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: (-(exact[k] - given[k]), list(exact).index(k)))[: total - sum(given.values())]:
        given[k] += 1
    return given


def predicted_strata(frame: pd.DataFrame, questions: tuple[str, ...]) -> pd.Series:
    """Each row's stratum name from the argmax of its questions' expected vote fractions."""
    names = []
    for _, row in frame.iterrows():
        parts = []
        for name in questions:
            question = TREE.question(name)
            fractions = [float(row[f"{label}_fraction"]) for label in question.label_cols]
            parts.append(f"{name}={question.answers[int(np.argmax(fractions))].name}")
        names.append(",".join(parts))
    return pd.Series(names, index=frame.index)


def test_allocation_is_proportional_with_largest_remainders_and_respects_capacity():
    assert allocate(np.array([50, 30, 20]), np.array([99, 99, 99]), 10).tolist() == [5, 3, 2]
    assert allocate(np.array([1, 1, 1]), np.array([9, 9, 9]), 2).tolist() == [1, 1, 0]
    assert allocate(np.array([10, 20, 5]), np.array([9, 9, 9]), 7).tolist() == [2, 4, 1]
    # a full stratum passes what it cannot take on, in proportion
    assert allocate(np.array([90, 5, 5]), np.array([3, 50, 50]), 10).tolist() == [3, 4, 3]
    assert allocate(np.array([4, 4]), np.array([1, 2]), 10).tolist() == [1, 2]
    rng = np.random.default_rng(0)
    for _ in range(300):
        eligible = rng.integers(1, 200, rng.integers(1, 8))
        capacity = np.minimum(eligible, rng.integers(0, 40, len(eligible)))
        total = int(rng.integers(0, 60))
        given = allocate(eligible, capacity, total)
        assert given.sum() == min(total, capacity.sum()) and np.all(given <= capacity) and np.all(given >= 0)
        if np.all(capacity >= total):  # nothing capped: Hamilton's method, within one of the exact share
            keys = [str(i) for i in range(len(eligible))]
            want = hamilton(dict(zip(keys, eligible.tolist(), strict=True)), total)
            assert given.tolist() == [want[k] for k in keys]


def test_a_stratified_queue_shares_the_batch_by_predicted_kind(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=4, rows=60)
    scores, _ = independent_scores(frame)
    frame["stratum"] = predicted_strata(frame, STRATA)
    keyed = expected_sampled(frame, scores, "power", 1.0, seed=5)
    eligible = Counter(keyed["stratum"])
    shares = hamilton({s: eligible[s] for s in sorted(eligible, key=strata_code)}, 24)
    assert len(eligible) >= 4

    queue = rank_catalogue(tmp_path / "cat", 24, acquisition="power_bald", seed=5, stratify_by=STRATA,
                           batch_size=11).to_pandas()
    assert queue["id_str"].is_unique and len(queue) == 24
    for stratum, share in shares.items():
        want = keyed.loc[keyed["stratum"] == stratum, "id_str"].head(share).tolist()
        got = queue.loc[queue["stratum"] == stratum, "id_str"].tolist()
        assert got == want, stratum  # the stratum's best by the power key, in key order
    assert queue["stratum"].tolist() == frame.set_index("id_str").loc[queue["id_str"], "stratum"].tolist()
    info = rank_settings(queue_table := rank_catalogue(tmp_path / "cat", 24, acquisition="power_bald", seed=5,
                                                       stratify_by=STRATA))
    assert info["stratify_by"] == list(STRATA)
    assert info["strata"] == {s: {"eligible": eligible[s], "drawn": shares[s]} for s in shares}
    # every prefix of the queue holds about each stratum's share
    biggest = max(shares, key=shares.get)
    prefix = np.cumsum(queue["stratum"] == biggest) / np.arange(1, 25)
    assert np.all(np.abs(prefix[5:] - shares[biggest] / 24) <= 0.15)
    # the queue depends on the galaxies, the seed and the strata only, not on files or batches
    moved = relayout(tmp_path / "cat", tmp_path / "moved", 3, seed=8)
    assert rank_catalogue(moved, 24, acquisition="power_bald", seed=5, stratify_by=STRATA,
                          batch_size=1000)["id_str"].to_pylist() == queue_table["id_str"].to_pylist()
    # the test can fail: without strata the batch is another one
    plain = rank_catalogue(tmp_path / "cat", 24, acquisition="power_bald", seed=5)
    assert plain["id_str"].to_pylist() == keyed["id_str"].head(24).tolist() != queue["id_str"].tolist()
    assert "stratum" not in plain.column_names and rank_settings(plain)["strata"] == {}


def strata_code(name: str) -> tuple[int, ...]:
    """A stratum name's answer indices, question by question (the order strata are numbered in)."""
    return tuple(TREE.question(q).answers.index(next(a for a in TREE.question(q).answers if a.name == answer))
                 for q, answer in (part.split("=") for part in name.split(",")))


def test_strata_with_a_random_fraction_share_the_acquisitions_part(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=3, rows=50)
    scores, _ = independent_scores(frame)
    frame["stratum"] = predicted_strata(frame, STRATA[:1])
    eligible = frame[~frame["flagged"]]
    uniform = eligible.assign(u=acq.random(eligible["id_str"].tolist(), seed=2))
    random_part = uniform.sort_values(["u", "id_str"], ascending=[False, True])["id_str"].head(5).tolist()
    keyed = expected_sampled(frame, scores, "softmax", 2.0, seed=2)
    keyed = keyed[~keyed["id_str"].isin(random_part)]
    counts = Counter(eligible["stratum"])
    shares = hamilton({s: counts[s] for s in sorted(counts, key=strata_code)}, 15)

    queue = rank_catalogue(tmp_path / "cat", 20, sampling="softmax", beta=2.0, seed=2, random_fraction=0.25,
                           stratify_by=STRATA[:1], batch_size=9).to_pandas()
    assert queue.loc[queue["picked_by"] == "random", "id_str"].tolist() == random_part
    acquired = queue[queue["picked_by"] == "acquisition"]
    for stratum, share in shares.items():
        assert acquired.loc[acquired["stratum"] == stratum, "id_str"].tolist() == \
            keyed.loc[keyed["stratum"] == stratum, "id_str"].head(share).tolist()
    assert queue["stratum"].tolist() == frame.set_index("id_str").loc[queue["id_str"], "stratum"].tolist()


def test_classifier_strata_and_bad_strata(tmp_path):
    batch = pa.record_batch({"p_ring": [0.1, 0.7, np.nan], "p_spiral": [0.8, 0.2, 0.5], "p_other": [0.1, 0.1, 0.5]})
    strata = resolve_strata(["class"], batch.schema.names, None, "cat.parquet")
    codes = strata.codes(batch)
    assert codes.tolist()[:2] == [1, 0] and codes[2] == -1
    assert [strata.name(c) for c in codes[:2]] == ["class=spiral", "class=ring"]
    with pytest.raises(ZoobotPipelineError, match="cat.parquet: cannot stratify by bar-dr5; this catalogue can be "
                                                  "stratified by class"):
        resolve_strata(["bar-dr5"], batch.schema.names, None, "cat.parquet")

    write_catalogue(tmp_path / "cat", n_files=2, rows=20)
    with pytest.raises(ZoobotPipelineError, match="cannot stratify by bars; this catalogue can be stratified by "
                                                  "smooth-or-featured-dr5, disk-edge-on-dr5, "):
        rank_catalogue(tmp_path / "cat", 5, stratify_by=["bars"])
    with pytest.raises(ZoobotPipelineError, match="quotas .* or strata, not both"):
        rank_catalogue(tmp_path / "cat", 5, stratify_by=STRATA, per_tile_quota=2)
    column = "disk-edge-on-dr5_yes_fraction"
    broken = write_with_nan(tmp_path / "broken.parquet", column, 6)
    with pytest.raises(ZoobotPipelineError, match=rf"broken.parquet: row 6 \(id_str g6\): column '{column}'"):
        rank_catalogue(broken, 3, stratify_by=STRATA, batch_size=4)


def test_rank_command_stratifies(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=2, rows=40)
    frame["stratum"] = predicted_strata(frame, STRATA[:1])
    args = ["rank", "--catalogue", str(tmp_path / "cat"), "--top", "10", "--out", str(tmp_path / "q")]
    result = runner.invoke(app, [*args, "--stratify-by", STRATA[0]])
    assert result.exit_code == 0, result.output
    queue = pq.read_table(tmp_path / "q" / "queue.parquet").to_pandas()
    counts = Counter(frame.loc[~frame["flagged"], "stratum"])
    shares = hamilton({s: counts[s] for s in sorted(counts, key=strata_code)}, 10)
    assert Counter(queue["stratum"]) == Counter({s: n for s, n in shares.items() if n})
    for stratum, share in shares.items():
        assert f"{stratum}: {share} drawn of {counts[stratum]} eligible" in result.output
    failed = runner.invoke(app, [*args, "--stratify-by", "bar"])
    assert "cannot stratify by bar; this catalogue can be stratified by" in error_line(failed)
    assert not (tmp_path / "q" / "runs").is_dir() or len(list((tmp_path / "q" / "runs").iterdir())) == 1
