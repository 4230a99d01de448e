"""Acquisition functions against independent sums, and the streaming ranking against a full sort of the catalogue:
exclusions (flags, votes, queue history), quotas, reruns, errors and the ``rank`` command."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from zoobot_pipeline.active import acquisition as acq
from zoobot_pipeline.active.ranking import KEYS_DIR, QUEUE_FILE, _Best, rank_catalogue, rank_settings, run_id_of
from zoobot_pipeline.catalogue import catalogue_files, catalogue_questions
from zoobot_pipeline.cli import app
from zoobot_pipeline.errors import UnknownNameError, ZoobotPipelineError
from zoobot_pipeline.schemas import get_schema

# these tests check the ranking's mechanics against an independent full sort: the deterministic top K
rank_top_k = partial(rank_catalogue, sampling="top_k")

SCHEMA = get_schema("decals_dr5")
QUESTIONS = [q.name for q in SCHEMA.questions]
META = {"model_sha256": "c0ffee" * 10 + "beef", "schema": "decals_dr5", "release": "synthetic-dr1"}
runner = CliRunner()


def catalogue_table(ids: list[str], tiles: list[str], seed: int, flagged: set[str] = frozenset(),
                    mags: np.ndarray | None = None, meta: dict[str, str] | None = None,
                    mi_scale: float = 1.0) -> pa.Table:
    """A catalogue in the scoring layout: random fractions and per-question values (mutual information times
    ``mi_scale``); flagged rows have nulls."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    scored = np.array([i not in flagged for i in ids])

    def model_column(values: np.ndarray) -> pa.Array:
        return pa.array(values.astype(np.float32), mask=~scored)

    columns: dict[str, pa.Array] = {
        "id_str": pa.array(ids, pa.string()),
        "ra": pa.array(rng.uniform(150, 151, n)),
        "dec": pa.array(rng.uniform(2, 3, n)),
        "tile_id": pa.array(tiles, pa.string()),
    }
    for q in SCHEMA.questions:
        fractions = rng.dirichlet(np.ones(len(q.answers)), n)
        for j, label in enumerate(q.label_cols):
            columns[f"{label}_fraction"] = model_column(fractions[:, j])
    acquisition = np.zeros(n)
    for q in QUESTIONS:
        mi, ent, asked = (rng.random(n).astype(np.float32) for _ in range(3))
        mi *= np.float32(mi_scale)
        # a few exact ties across rows and files, so tie-breaking by id_str matters
        mi[::5] = np.float32(0.5)
        asked[::5] = np.float32(1.0)
        columns[f"{q}_mutual_information"] = model_column(mi)
        columns[f"{q}_entropy"] = model_column(ent)
        columns[f"{q}_probability_asked"] = model_column(asked)
        acquisition += mi.astype(np.float64) * asked.astype(np.float64)
    columns["acquisition"] = model_column(acquisition)
    columns["edge"] = pa.array(np.zeros(n, dtype=bool))
    columns["nan_fraction"] = model_column(np.zeros(n))
    columns["flag"] = pa.array([None if s else "off_tile" for s in scored], pa.string())
    if mags is not None:
        columns["mag_r"] = pa.array(mags)
    return pa.table(columns).replace_schema_metadata(meta or META)


def write_with_nan(path: Path, column: str, row: int, n: int = 8) -> Path:
    """A one-file catalogue of ``n`` galaxies ``g0``... whose ``column`` is NaN in ``row``."""
    table = catalogue_table([f"g{i}" for i in range(n)], ["t"] * n, seed=5)
    values = table[column].to_numpy(zero_copy_only=False).copy()
    values[row] = np.nan
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, pa.array(values)), path)
    return path


def write_catalogue(root: Path, n_files: int = 4, rows: int = 60, seed: int = 0, flagged_every: int = 9,
                    with_mags: bool = False, mi_scales: dict[int, float] | None = None) -> pd.DataFrame:
    """One Parquet file per tile (one nested a folder down) plus files the ranking must ignore; returns every
    catalogue row as a DataFrame (``flagged`` marks flagged rows). ``mi_scales`` scales tile ``t``'s MI."""
    frames = []
    for t in range(n_files):
        ids = [f"gal_{t}_{i:03d}" for i in range(rows)]
        flagged = set(ids[::flagged_every])
        mags = np.random.default_rng(seed + 100 + t).uniform(16, 22, rows) if with_mags else None
        if mags is not None:
            mags[3] = np.nan
        table = catalogue_table(ids, [f"tile_{t}"] * rows, seed + t, flagged, mags,
                                mi_scale=(mi_scales or {}).get(t, 1.0))
        path = root / ("nested" if t == 0 else "") / f"tile_{t}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=17)
        frame = table.to_pandas()
        frame["flagged"] = frame["id_str"].isin(flagged)
        frames.append(frame)
    # files a reader must skip: leftovers of atomic writes, private files and the failure list
    decoy = catalogue_table(["decoy_a", "decoy_b"], ["tile_x", "tile_x"], seed=99)
    decoy = decoy.set_column(decoy.schema.get_field_index(f"{QUESTIONS[0]}_mutual_information"),
                             f"{QUESTIONS[0]}_mutual_information", pa.array([1e6, 1e6], pa.float32()))
    for name in (".tmp-tile_9.parquet", "_partial.parquet", "failures.parquet", "_staging/tile_8.parquet",
                 ".hidden/tile_7.parquet"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(decoy, root / name)
    return pd.concat(frames, ignore_index=True)


def independent_scores(frame: pd.DataFrame, quantity: str = "mutual_information",
                       weights: dict[str, float] | None = None) -> tuple[np.ndarray, list[str]]:
    """Score and top question row by row in plain Python (float64)."""
    weights = weights or {}
    scores, tops = [], []
    for _, row in frame.iterrows():
        terms = {q: weights.get(q, 1.0) * float(row[f"{q}_{quantity}"]) * float(row[f"{q}_probability_asked"])
                 for q in QUESTIONS}
        scores.append(sum(terms.values()))
        tops.append(max(QUESTIONS, key=lambda q, t=terms: (t[q], -QUESTIONS.index(q))))
    return np.array(scores), tops


def full_sort(frame: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """The whole eligible catalogue sorted by score (descending), then id_str."""
    ranked = frame.assign(score=scores)[~frame["flagged"]]
    return ranked.sort_values(["score", "id_str"], ascending=[False, True], kind="stable").reset_index(drop=True)


def greedy_with_quota(ranked: pd.DataFrame, groups: pd.Series, quota: int, k: int) -> list[str]:
    taken: dict[object, int] = {}
    chosen = []
    for i, id_str in enumerate(ranked["id_str"]):
        group = groups.iloc[i]
        if taken.get(group, 0) < quota:
            taken[group] = taken.get(group, 0) + 1
            chosen.append(id_str)
        if len(chosen) == k:
            break
    return chosen


def test_acquisition_functions_match_an_independent_computation():
    ids = [f"g{i}" for i in range(40)]
    table = catalogue_table(ids, ["t"] * 40, seed=3)
    frame = table.to_pandas()
    weights = {"bar-dr5": 3.0, "merging-dr5": 0.0, "has-spiral-arms-dr5": 0.5}
    for quantity, function in (("mutual_information", acq.mutual_information), ("entropy", acq.entropy)):
        expected, expected_top = independent_scores(frame, quantity, weights)
        np.testing.assert_allclose(function(table, weights), expected, rtol=1e-12)
        scores, top = acq.score(table, quantity, QUESTIONS, weights)
        np.testing.assert_allclose(scores, expected, rtol=1e-12)
        assert [QUESTIONS[i] for i in top] == expected_top
    # with unit weights, MI is the catalogue's own acquisition column (written in float32)
    np.testing.assert_allclose(acq.mutual_information(table), frame["acquisition"], rtol=1e-6)
    assert catalogue_questions(table.schema) == QUESTIONS
    with pytest.raises(ValueError, match="unknown question.*bars"):
        acq.mutual_information(table, {"bars": 2.0})
    with pytest.raises(ValueError, match="non-negative"):
        acq.entropy(table, {"bar-dr5": -1.0})


def test_random_acquisition_depends_only_on_seed_and_id():
    ids = [f"syn_{i:06d}" for i in range(4000)]
    scores = acq.random(ids, seed=7)
    order = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(acq.random([ids[i] for i in order], seed=7), scores[order])
    batch = pa.record_batch({"id_str": pa.array(ids[:10])})
    np.testing.assert_array_equal(acq.random(batch, seed=7), scores[:10])
    assert not np.array_equal(acq.random(ids, seed=8), scores)
    assert scores.min() >= 0 and scores.max() < 1
    assert abs(scores.mean() - 0.5) < 0.02 and len(np.unique(scores)) == len(ids)
    assert np.histogram(scores, bins=10, range=(0, 1))[0].min() > 330  # about 400 per decile


def test_acquisition_functions_are_a_registry_users_can_extend(tmp_path, monkeypatch):
    monkeypatch.setattr(acq, "_REGISTRY", dict(acq._REGISTRY))  # registrations of this test end with it
    assert acq.available_acquisitions() == acq.ACQUISITION_FUNCTIONS == (
        "mutual_information", "entropy", "random", "class_mutual_information", "predictive_std")
    frame = write_catalogue(tmp_path / "cat", n_files=2, rows=30)
    column = "bar-dr5_strong_fraction"

    def strong_bars(batch, questions, weights, seed):
        return batch.column(column).to_numpy(zero_copy_only=False)

    acq.register_acquisition("strong_bars", strong_bars, columns=[column])
    assert acq.available_acquisitions()[-1] == "strong_bars"
    assert acq.required_columns("strong_bars", QUESTIONS) == ["id_str", column]
    queue = rank_top_k(tmp_path / "cat", 9, acquisition="strong_bars", batch_size=7)
    expected = full_sort(frame, frame[column].astype(np.float64).to_numpy())
    assert queue["id_str"].to_pylist() == expected["id_str"].head(9).tolist()
    assert set(queue["acquisition_function"].to_pylist()) == {"strong_bars"} and queue["top_question"].null_count == 9

    # a function can name the question driving each score, and read per-question columns
    def asked_most(batch, questions, weights, seed):
        asked = np.stack([batch.column(f"{q}_probability_asked").to_numpy(zero_copy_only=False) for q in questions],
                         axis=1) * weights
        return asked.max(axis=1), asked.argmax(axis=1)

    acq.register_acquisition("asked_most", asked_most, per_question=["probability_asked"])
    queue = rank_top_k(tmp_path / "cat", 5, acquisition="asked_most", weights={"bar-dr5": 2.0})
    asked = frame[[f"{q}_probability_asked" for q in QUESTIONS]].to_numpy(np.float64) * [
        2.0 if q == "bar-dr5" else 1.0 for q in QUESTIONS]
    expected = full_sort(frame.assign(top=[QUESTIONS[i] for i in asked.argmax(axis=1)]), asked.max(axis=1)).head(5)
    assert queue["id_str"].to_pylist() == expected["id_str"].tolist()
    assert queue["top_question"].to_pylist() == expected["top"].tolist()

    with pytest.raises(ZoobotPipelineError, match="'strong_bars' is already registered"):
        acq.register_acquisition("strong_bars", strong_bars)
    acq.register_acquisition("strong_bars", lambda batch, questions, weights, seed: np.zeros(2), replace=True)
    with pytest.raises(ZoobotPipelineError, match=r"'strong_bars' returned scores \(2,\)"):
        rank_top_k(tmp_path / "cat", 3, acquisition="strong_bars")
    with pytest.raises(UnknownNameError, match="unknown per-question quantity 'fraction'"):
        acq.register_acquisition("fractions", strong_bars, per_question=["fraction"])
    for call in (lambda: rank_top_k(tmp_path / "cat", 3, acquisition="bald"),
                 lambda: acq.required_columns("bald", QUESTIONS)):
        with pytest.raises(UnknownNameError, match="unknown acquisition function 'bald'; use one of "
                                                   "mutual_information, entropy, random, class_mutual_information, "
                                                   "predictive_std, strong_bars") as err:
            call()
        assert isinstance(err.value, KeyError)
    table = catalogue_table(["a", "b"], ["t", "t"], seed=4).drop_columns(["bar-dr5_entropy"])
    with pytest.raises(ZoobotPipelineError, match="no column 'bar-dr5_entropy'"):
        acq.entropy(table)


def test_bounded_selection_holds_at_most_k_rows_and_equals_greedy():
    rng = np.random.default_rng(1)
    ids = np.array([f"id{i:05d}" for i in range(3000)])
    scores = np.round(rng.random(3000), 2)  # many ties
    groups = rng.integers(0, 12, 3000)
    for quota in (None, 3):
        best = _Best(25, quota)
        for start in range(0, 3000, 97):
            part = slice(start, start + 97)
            best.offer({"key": scores[part], "id_str": ids[part], "group": groups[part]})
            assert len(best.rows["key"]) <= 25
        frame = pd.DataFrame({"id_str": ids, "score": scores, "group": groups})
        ranked = frame.sort_values(["score", "id_str"], ascending=[False, True]).reset_index(drop=True)
        expected = greedy_with_quota(ranked, ranked["group"], quota or 3000, 25)
        assert best.rows["id_str"].tolist() == expected


def test_streaming_top_k_equals_a_full_sort_of_the_catalogue(tmp_path):
    frame = write_catalogue(tmp_path / "cat")
    assert len(catalogue_files(tmp_path / "cat")) == 4
    scores, tops = independent_scores(frame)
    expected = full_sort(frame.assign(top=tops), scores).head(37)
    small = rank_top_k(tmp_path / "cat", 37, batch_size=7)
    large = rank_top_k(tmp_path / "cat", 37)
    assert small.drop_columns(["created", "run_id"]).equals(large.drop_columns(["created", "run_id"]))
    got = small.to_pandas()
    assert got["rank"].tolist() == list(range(1, 38))
    assert got["id_str"].tolist() == expected["id_str"].tolist()
    np.testing.assert_allclose(got["acquisition"], expected["score"], rtol=1e-12)
    assert got["top_question"].tolist() == expected["top"].tolist()
    np.testing.assert_array_equal(got["ra"], expected["ra"])
    assert got["tile_id"].tolist() == expected["tile_id"].tolist()
    assert set(got["model_sha256"]) == {META["model_sha256"]} and set(got["release"]) == {META["release"]}
    assert set(got["acquisition_function"]) == {"mutual_information"}
    info = json.loads(small.schema.metadata[b"zoobot_pipeline.rank"])
    assert info["rows_read"] == len(frame) and info["skipped_flagged"] == int(frame["flagged"].sum())
    # the ties in the catalogue really are broken by id_str
    assert (expected["score"].diff() == 0).sum() > 0

    weighted = rank_top_k(tmp_path / "cat", 10, weights={"bar-dr5": 4.0}, acquisition="entropy", batch_size=11)
    entropy_scores, _ = independent_scores(frame, "entropy", {"bar-dr5": 4.0})
    assert weighted["id_str"].to_pylist() == full_sort(frame, entropy_scores)["id_str"].head(10).tolist()

    chance = rank_top_k(tmp_path / "cat", 10, acquisition="random", seed=5, batch_size=13)
    eligible = frame[~frame["flagged"]]
    by_hash = eligible.assign(score=acq.random(eligible["id_str"].tolist(), seed=5))
    assert chance["id_str"].to_pylist() == by_hash.nlargest(10, "score")["id_str"].tolist()
    assert chance["top_question"].null_count == 10


def test_a_single_file_catalogue_and_flagged_rows(tmp_path):
    ids = [f"g{i:02d}" for i in range(30)]
    flagged = {"g03", "g07", "g11"}
    table = catalogue_table(ids, ["t0"] * 30, seed=2, flagged=flagged)
    pq.write_table(table, tmp_path / "one.parquet")
    queue = rank_top_k(tmp_path / "one.parquet", 100)
    assert queue.num_rows == 27 and not flagged & set(queue["id_str"].to_pylist())


def test_galaxies_with_enough_votes_are_excluded(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=2, rows=40)
    scores, _ = independent_scores(frame)
    ranked = full_sort(frame, scores)
    top = ranked["id_str"].head(6).tolist()
    first = SCHEMA.questions[0].label_cols
    counts = {top[0]: [2, 1, 0], top[1]: [0, 0, 3], top[2]: [1, 1, 0], top[3]: [20, 10, 10], "elsewhere": [5, 0, 0]}
    votes = {"id_str": list(counts)}
    for col in SCHEMA.label_cols:
        votes[col] = [c[first.index(col)] if col in first else 0 for c in counts.values()]
    pq.write_table(pa.table(votes), tmp_path / "votes.parquet")

    queue = rank_top_k(tmp_path / "cat", 5, exclude_votes=tmp_path / "votes.parquet")
    # top[0] (3 votes), top[1] (3) and top[3] (40) have enough; top[2] (2 votes) does not
    expected = [i for i in ranked["id_str"] if i not in {top[0], top[1], top[3]}][:5]
    assert queue["id_str"].to_pylist() == expected
    assert json.loads(queue.schema.metadata[b"zoobot_pipeline.rank"])["skipped_labelled"] == 3
    stricter = rank_top_k(tmp_path / "cat", 5, exclude_votes=tmp_path / "votes.parquet", min_votes=2)
    assert top[2] not in stricter["id_str"].to_pylist()


def test_reruns_never_queue_a_galaxy_twice(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=3, rows=20)
    scores, _ = independent_scores(frame)
    ranked = full_sort(frame, scores)["id_str"].tolist()
    queue_dir = tmp_path / "queue"
    runs = [rank_top_k(tmp_path / "cat", 12, queue_dir=queue_dir, batch_size=8) for _ in range(6)]
    queued = [run["id_str"].to_pylist() for run in runs]
    assert queued[0] == ranked[:12] and queued[1] == ranked[12:24]
    flat = [i for run in queued for i in run]
    assert len(flat) == len(set(flat)) == len(ranked)  # every eligible galaxy queued exactly once, then nobody
    assert len(ranked) == 51 and len(queued[4]) == 3 and queued[5] == []
    run_files = sorted((queue_dir / "runs").glob("*.parquet"))
    assert len(run_files) == 6
    assert [pq.read_table(p)["id_str"].to_pylist() for p in run_files] == queued
    latest = pq.read_table(queue_dir / "queue.parquet")
    assert latest.num_rows == 0 and latest.schema.names == runs[-1].schema.names
    second = pq.read_table(run_files[1])
    assert second["rank"].to_pylist() == list(range(1, 13)) and len(set(second["run_id"].to_pylist())) == 1
    info = json.loads(second.schema.metadata[b"zoobot_pipeline.rank"])
    assert info["skipped_queued"] == 12
    assert not list(queue_dir.rglob(".tmp-*"))


def test_a_run_key_queues_once(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=3, rows=20)
    scores, _ = independent_scores(frame)
    ranked = full_sort(frame, scores)["id_str"].tolist()
    queue_dir = tmp_path / "queue"
    runs = queue_dir / "runs"

    first = rank_top_k(tmp_path / "cat", 8, queue_dir=queue_dir, run_key="week-1", batch_size=9)
    again = rank_top_k(tmp_path / "cat", 8, queue_dir=queue_dir, run_key="week-1")
    assert first["id_str"].to_pylist() == ranked[:8]
    assert again.to_pylist() == first.to_pylist() and rank_settings(again) == rank_settings(first)
    assert len(list(runs.glob("*.parquet"))) == 1
    created = json.loads((queue_dir / KEYS_DIR / "week-1.json").read_text())["created"]
    assert rank_settings(first)["run_id"] == run_id_of(datetime.fromisoformat(created))

    second = rank_top_k(tmp_path / "cat", 8, queue_dir=queue_dir, run_key="week-2")
    assert second["id_str"].to_pylist() == ranked[8:16] and len(list(runs.glob("*.parquet"))) == 2
    second_file = runs / f"{rank_settings(second)['run_id']}.parquet"

    # killed between its run file and queue.parquet: the rerun restores queue.parquet from the run file
    pq.write_table(first, queue_dir / QUEUE_FILE)
    assert rank_top_k(tmp_path / "cat", 8, queue_dir=queue_dir, run_key="week-2").to_pylist() == second.to_pylist()
    assert pq.read_table(queue_dir / QUEUE_FILE).to_pylist() == second.to_pylist()
    # an earlier run under its key leaves the latest queue as it is
    rank_top_k(tmp_path / "cat", 8, queue_dir=queue_dir, run_key="week-1")
    assert pq.read_table(queue_dir / QUEUE_FILE).to_pylist() == second.to_pylist()
    # killed before its run file was written: the rerun ranks the same galaxies under the same run id
    second_file.unlink()
    redone = rank_top_k(tmp_path / "cat", 8, queue_dir=queue_dir, run_key="week-2")
    assert redone.to_pylist() == second.to_pylist() and second_file.is_file()

    # a key recorded by earlier versions (QUEUE/flow-keys) is still honoured
    legacy = queue_dir / "flow-keys" / "weekly-0.json"
    legacy.parent.mkdir()
    legacy.write_text(json.dumps({"run_key": "weekly-0", "created": first["created"][0].as_py().isoformat()}))
    assert rank_top_k(tmp_path / "cat", 8, queue_dir=queue_dir, run_key="weekly-0").to_pylist() == \
        first.to_pylist()
    assert len(list(runs.glob("*.parquet"))) == 2

    created = datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    later = rank_top_k(tmp_path / "cat", 8, queue_dir=queue_dir, run_key="week-3", created=created)
    assert later["id_str"].to_pylist() == ranked[16:24] and rank_settings(later)["run_id"] == run_id_of(created)
    with pytest.raises(ZoobotPipelineError, match="needs a queue directory"):
        rank_top_k(tmp_path / "cat", 8, run_key="week-4")
    with pytest.raises(ZoobotPipelineError, match="file name"):
        rank_top_k(tmp_path / "cat", 8, queue_dir=queue_dir, run_key="../week-4")
    (queue_dir / KEYS_DIR / "broken.json").write_text("{")
    with pytest.raises(ZoobotPipelineError, match="broken.json: not a run-key file"):
        rank_top_k(tmp_path / "cat", 8, queue_dir=queue_dir, run_key="broken")


def test_runs_at_once_on_one_queue_take_turns(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=4, rows=60)
    scores, _ = independent_scores(frame)
    ranked = full_sort(frame, scores)["id_str"].tolist()
    results: dict[int, list[str]] = {}

    def rank(i: int) -> None:
        results[i] = rank_top_k(tmp_path / "cat", 30, queue_dir=tmp_path / "queue", batch_size=5)[
            "id_str"].to_pylist()

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values()) == sorted([ranked[:30], ranked[30:60], ranked[60:90]])


def test_per_tile_quota_caps_each_tile_and_matches_the_greedy_ranking(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=4, rows=30, mi_scales={2: 100.0})
    scores, _ = independent_scores(frame)
    ranked = full_sort(frame, scores)
    assert ranked["tile_id"].head(20).eq("tile_2").all()  # one crowded tile would fill the queue on its own
    expected = greedy_with_quota(ranked, ranked["tile_id"], 5, 14)
    queue = rank_top_k(tmp_path / "cat", 14, per_tile_quota=5, batch_size=9).to_pandas()
    assert queue["id_str"].tolist() == expected
    assert queue["tile_id"].value_counts().max() == 5 and queue["tile_id"].nunique() == 3


def test_magnitude_bin_quota_matches_the_greedy_ranking(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=2, rows=50, with_mags=True)
    scores, _ = independent_scores(frame)
    ranked = full_sort(frame, scores)
    edges = [18.0, 20.0]
    groups = pd.Series(np.where(np.isnan(ranked["mag_r"]), -1, np.digitize(ranked["mag_r"], edges)))
    expected = greedy_with_quota(ranked, groups, 4, 13)
    queue = rank_top_k(tmp_path / "cat", 13, magnitude_bins=edges, per_bin_quota=4, batch_size=6)
    assert queue["id_str"].to_pylist() == expected
    assert "mag_r" in queue.column_names
    with pytest.raises(ValueError, match="not both"):
        rank_top_k(tmp_path / "cat", 5, per_tile_quota=2, magnitude_bins=edges, per_bin_quota=2)
    with pytest.raises(ValueError, match="increasing"):
        rank_top_k(tmp_path / "cat", 5, magnitude_bins=[20, 18], per_bin_quota=2)


def test_bad_catalogues_fail_naming_file_row_and_column(tmp_path):
    ids = [f"g{i}" for i in range(10)]
    table = catalogue_table(ids, ["t"] * 10, seed=1)
    column = f"{QUESTIONS[3]}_probability_asked"
    values = table[column].to_numpy(zero_copy_only=False).copy()
    values[6] = np.nan
    broken = table.set_column(table.schema.get_field_index(column), column, pa.array(values))
    pq.write_table(broken, tmp_path / "broken.parquet")
    with pytest.raises(ValueError, match=rf"broken.parquet: row 6 \(id_str g6\): column '{column}'"):
        rank_top_k(tmp_path / "broken.parquet", 3, batch_size=4)

    (tmp_path / "cat").mkdir()
    pq.write_table(table, tmp_path / "cat" / "a.parquet")
    pq.write_table(table.drop_columns(["tile_id"]), tmp_path / "cat" / "b.parquet")
    with pytest.raises(ValueError, match=r"b.parquet: missing catalogue column\(s\) tile_id"):
        rank_top_k(tmp_path / "cat", 3)
    pq.write_table(table.replace_schema_metadata({**META, "model_sha256": "other"}), tmp_path / "cat" / "b.parquet")
    with pytest.raises(ValueError, match="b.parquet: model_sha256 'other' differs"):
        rank_top_k(tmp_path / "cat", 3)
    with pytest.raises(FileNotFoundError):
        rank_top_k(tmp_path / "nowhere", 3)
    with pytest.raises(ValueError, match="unknown question"):
        rank_top_k(tmp_path / "broken.parquet", 3, weights={"bar": 1.0})


def test_rank_command_writes_the_queue(tmp_path):
    frame = write_catalogue(tmp_path / "cat", n_files=2, rows=30)
    scores, _ = independent_scores(frame, weights={"bar-dr5": 2.0})
    expected = full_sort(frame, scores)["id_str"].head(8).tolist()
    result = runner.invoke(app, ["rank", "--catalogue", str(tmp_path / "cat"), "--top", "8", "--out",
                                 str(tmp_path / "q"), "--weight", "bar-dr5=2", "--sampling", "top_k"])
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "q" / "queue.parquet")["id_str"].to_pylist() == expected
    assert "queued 8 of 60 catalogue rows" in " ".join(result.output.split())

    again = runner.invoke(app, ["rank", "--catalogue", str(tmp_path / "cat"), "--top", "8", "--out",
                                str(tmp_path / "q"), "--weight", "bar-dr5=2", "--sampling", "top_k"])
    assert again.exit_code == 0, again.output
    assert set(pq.read_table(tmp_path / "q" / "queue.parquet")["id_str"].to_pylist()).isdisjoint(expected)

    for bad, message in ((["--weight", "bar-dr5"], "QUESTION=WEIGHT"), (["--weight", "bars=2"], "unknown question"),
                         (["--top", "0"], "top_k must be at least 1")):
        args = ["rank", "--catalogue", str(tmp_path / "cat"), "--top", "3", "--out", str(tmp_path / "q2"), *bad]
        failed = runner.invoke(app, args)
        assert failed.exit_code == 2 and message in " ".join(failed.output.split()), failed.output
        assert "Traceback" not in failed.output


def test_queue_commands_have_help():
    for args in (["rank", "--help"], ["queue", "--help"], ["queue", "manifest", "--help"],
                 ["queue", "upload", "--help"], ["queue", "merge-votes", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output, (args, result.output)
