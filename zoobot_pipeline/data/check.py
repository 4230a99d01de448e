"""A full read of a data release: every tile, band, WCS and cutout, and the votes against the decision tree."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from zoobot_pipeline.data.cutouts import release_cutouts
from zoobot_pipeline.data.release import Release
from zoobot_pipeline.data.votes import read_votes, tree_violations
from zoobot_pipeline.schemas import get_schema

__all__ = ["ReleaseCheck", "check_release"]


@dataclass
class ReleaseCheck:
    """What a full read of a release found."""

    release: str
    tiles: int
    sources: int
    sources_per_tile: dict[str, int]
    cutout_flags: dict[str, int] = field(default_factory=dict)
    labelled: int = 0
    tree_violations: int = 0


def check_release(path: str | Path, schema_name: str | None = None) -> ReleaseCheck:
    """Open every tile of a release, cut out every source, and check its votes (if any) against the tree.

    Raises ``ReleaseError`` / ``VotesError`` naming the file at fault; cutout problems and votes that break the tree
    are counted, not fatal (every other reader of votes refuses the latter).
    """
    release = Release.open(path)
    flags: Counter[str] = Counter(edge=0, off_tile=0, rejected=0)
    for _, cut in release_cutouts(release):
        flags.update(edge=int(cut.edge), off_tile=int(cut.off_tile), rejected=int(cut.rejected))
    per_tile = {tile_id: release.tile_sources(tile_id).num_rows for tile_id in release.tile_ids}
    check = ReleaseCheck(str(release.path), len(per_tile), release.sources.num_rows, per_tile, dict(flags))
    votes_path = Path(path) / "votes.parquet"
    if votes_path.is_file():
        schema = get_schema(schema_name or release.info.schema_name or "decals_dr5")
        votes = read_votes(votes_path, schema, check_tree_counts=False)
        check.labelled = votes.num_rows
        check.tree_violations = len(tree_violations(votes, schema, limit=votes.num_rows or 1))
    return check
