"""The Ray Data path writes the in-process catalogue: on a local Ray, and on a simulated two-node cluster."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster
from test_scoring_support import assert_same_catalogue, make_package, make_release, truncate_tile

from zoobot_pipeline.catalogue import FAILURES_FILE, read_catalogue
from zoobot_pipeline.data.release import Release, TileRows
from zoobot_pipeline.export import ModelPackage
from zoobot_pipeline.scoring.chunks import ChunkConfig, open_tile, prepare_chunk
from zoobot_pipeline.scoring.local import Timeline
from zoobot_pipeline.scoring.pipeline import ScoringError, plan_jobs, score_release
from zoobot_pipeline.scoring.ray_data import _chunks, _read, chunk_items, pool_size

CHUNK = 8  # several chunks per tile, assembled on the driver


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A package, a release of four tiles (one truncated), and its in-process catalogue."""
    root = tmp_path_factory.mktemp("ray-scoring")
    package = make_package(root / "model")
    release = make_release(root / "release", 80, 4, seed=4)
    truncate_tile(release / "tiles" / "tile_0002.fits")
    score_release(release, package, root / "local", chunk_size=CHUNK, progress=False)
    return package, release, root / "local"


@pytest.fixture
def no_auth():
    os.environ["RAY_AUTH_MODE"] = "disabled"


def _check_same_as_local(out: Path, local: Path) -> None:
    assert_same_catalogue(read_catalogue(out), read_catalogue(local))
    assert pq.read_table(out / FAILURES_FILE).to_pylist() == pq.read_table(local / FAILURES_FILE).to_pylist()
    assert len(pq.read_table(out / FAILURES_FILE)) == 1


def test_ray_data_path_equals_in_process(setup, no_auth, tmp_path):
    package, release, local = setup
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    timeline = Timeline()
    try:
        result = score_release(release, package, tmp_path / "cat", chunk_size=CHUNK, use_ray=True, progress=False,
                               timeline=timeline)
    finally:
        ray.shutdown()
    assert result.executor == "ray" and result.tiles_scored == 4 and result.n_sources == 80
    _check_same_as_local(tmp_path / "cat", local)
    arrivals = timeline.stages
    per_tile = Counter(read_catalogue(tmp_path / "cat")["tile_id"].to_pylist()).values()
    assert {s.name for s in arrivals} == {"arrived"}
    assert len(arrivals) == sum(-(-n // CHUNK) for n in per_tile), "one arrival per chunk"
    assert sum(s.galaxies for s in arrivals) == 80
    assert all(a.end <= b.start for a, b in zip(arrivals, arrivals[1:], strict=False)), "in order, back to back"


def test_a_read_batch_ships_its_chunks_images_in_one_block_read_in_place(setup):
    """Several chunks per read call (flagged galaxies, a failed tile among them): one images buffer holding every
    chunk's images back to back, and each chunk as the actor reads it equals the chunk prepared on its own."""
    package_dir, release_dir, _ = setup
    package, release = ModelPackage.open(package_dir), Release.open(release_dir)
    config = ChunkConfig(release.bands, release.info.pixel_scale_arcsec, package.preprocessing)
    jobs, _ = plan_jobs(release, ["id_str", "ra", "dec", "tile_id"], {}, in_memory=False)
    items = list(chunk_items(jobs, CHUNK))
    shipped = _read(pa.Table.from_pylist(items), config)
    expected_images, n_flagged = [], 0
    for (row, chunk), item in zip(_chunks(shipped), items, strict=True):
        tile, error = open_tile(item["tile_id"], item["path"], config.bands)
        alone = prepare_chunk(tile, error, TileRows.from_json(item["rows"]).slice(item["offset"], item["length"]),
                              config)
        if tile is not None:
            tile.close()
        assert (row["tile_id"], row["chunk"]) == (item["tile_id"], item["chunk"])
        assert chunk.rows.equals(alone.rows) and chunk.tile_error == alone.tile_error
        assert chunk.images.shape == (len(alone.images), *package.input_shape)
        if len(alone.images):
            np.testing.assert_array_equal(chunk.images, np.stack(alone.images))
            expected_images.append(chunk.images)
        n_flagged += alone.rows["flag"].null_count < alone.rows.num_rows
    assert n_flagged > 1 and any(row["tile_error"] for row in shipped.drop_columns(["images"]).to_pylist())
    column = shipped.column("images")
    assert column.num_chunks == 1
    data = column.chunk(0).buffers()[2]
    assert data.size == sum(images.nbytes for images in expected_images), "every chunk's images, back to back"
    assert all(np.shares_memory(images, np.frombuffer(data, np.uint8)) for images in expected_images), "in place"


def test_two_node_cluster_equals_in_process(setup, no_auth, tmp_path):
    package, release, local = setup
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    try:
        cluster.wait_for_nodes()
        assert len(cluster.list_all_nodes()) == 2
        ray.init(address=cluster.address)
        nodes = ray.nodes()
        result = score_release(release, package, tmp_path / "cat", chunk_size=CHUNK, ray_address=cluster.address,
                               workers=2, progress=False)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert result.executor == "ray"
    node_ids = {node["NodeID"] for node in nodes}
    assert set(result.chunks_by_node) == node_ids  # both nodes scored chunks
    assert sum(result.chunks_by_node.values()) == sum(-(-n // CHUNK) for n in _tile_sizes(release))
    _check_same_as_local(tmp_path / "cat", local)


def test_gpu_request_is_checked_on_the_cluster_nodes(setup, no_auth, tmp_path):
    """A CPU-only onnxruntime on the node that would run GPU actors is refused with the reason, before scoring."""
    package, release, _ = setup
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)  # a GPU in Ray's accounting only
    try:
        address = ray.get_runtime_context().gcs_address
        with pytest.raises(ScoringError, match=r"on Ray node \w+: device 'cuda' needs onnxruntime's "
                                               r"CUDAExecutionProvider"):
            score_release(release, package, tmp_path / "cat", device="cuda", gpus_per_worker=1, ray_address=address,
                          progress=False)
    finally:
        ray.shutdown()
    assert not list((tmp_path / "cat").glob("tiles/*.parquet"))


def _tile_sizes(release: Path) -> list[int]:
    counts = pq.read_table(release / "sources.parquet", columns=["tile_id"]).group_by("tile_id").aggregate(
        [("tile_id", "count")])
    return counts["tile_id_count"].to_pylist()


def test_pool_size_from_cluster_resources():
    assert pool_size({"CPU": 2.0}, None, 0.0) == 1
    assert pool_size({"CPU": 16.0}, None, 0.0) == 8
    assert pool_size({"CPU": 16.0, "GPU": 4.0}, None, 0.5) == 8
    with pytest.raises(ValueError, match="plus one read task"):
        pool_size({"CPU": 2.0}, 3, 0.0)
    with pytest.raises(ValueError, match="do not fit the cluster's 0 GPU"):
        pool_size({"CPU": 8.0}, None, 1.0)
