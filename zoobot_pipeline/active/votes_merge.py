"""Fold a new votes catalogue (volunteer classifications of queued galaxies) into the labelled set.

Both files are votes catalogues (``id_str`` plus one whole-count column per label column of the tree, see
:mod:`zoobot_pipeline.data.votes`); a file with a column the tree does not know, or without one it needs, is refused
with the columns named, and so are votes that break the tree, in either file or in the sum
(:func:`~zoobot_pipeline.data.votes.check_tree`, as every reader of votes). Counts of galaxies already labelled are
added; new galaxies are appended after the labelled ones, in the new file's order. The output is written atomically
(it may replace the labelled file itself) and its Parquet metadata lists the sha256 of every votes file merged into
it, so merging the same file twice is refused instead of counting its votes twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from zoobot_pipeline.data.votes import VotesError, check_tree, read_votes, vote_matrix
from zoobot_pipeline.io import file_sha256, write_parquet_atomic
from zoobot_pipeline.schemas import Schema, get_schema

__all__ = ["MERGED_KEY", "merge_votes"]

MERGED_KEY = b"zoobot_pipeline.merged_votes"


def _columns(path: Path) -> list[str]:
    try:
        if path.suffix.lower() == ".csv":
            return pacsv.open_csv(path).schema.names
        return pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid) as err:
        raise VotesError(f"{path}: cannot read votes catalogue: {err}") from err


def _read(path: Path, schema: Schema) -> pa.Table:
    """Read and validate a votes catalogue, refusing columns the tree does not know (missing ones: read_votes)."""
    unknown = [c for c in _columns(path) if c != "id_str" and c not in schema.label_cols]
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise VotesError(f"{path}: column(s) not in schema {schema.name!r}: {shown}")
    return read_votes(path, schema)


def _merged_sources(path: Path) -> list[str]:
    if path.suffix.lower() != ".parquet":
        return []
    metadata = pq.read_schema(path).metadata or {}
    if MERGED_KEY not in metadata:
        return []
    try:
        sources = json.loads(metadata[MERGED_KEY])
    except ValueError as err:
        raise VotesError(f"{path}: unreadable {MERGED_KEY.decode()!r} metadata ({err})") from err
    if not isinstance(sources, list) or not all(isinstance(digest, str) for digest in sources):
        raise VotesError(f"{path}: {MERGED_KEY.decode()!r} metadata is not a list of sha256 digests")
    return sources


def merge_votes(labelled: str | Path, new: str | Path, out: str | Path,
                schema: str | Schema = "decals_dr5") -> pa.Table:
    """Add ``new``'s votes to ``labelled``'s and write the result to ``out`` (Parquet); returns the merged table."""
    tree = schema if isinstance(schema, Schema) else get_schema(schema)
    labelled, new, out = Path(labelled), Path(new), Path(out)
    old_table, new_table = _read(labelled, tree), _read(new, tree)
    digest = file_sha256(new)
    if labelled.resolve() == new.resolve() or digest == file_sha256(labelled):
        raise VotesError(f"{new}: is the labelled votes catalogue {labelled} itself (same content); merging it would "
                         "count its votes twice")
    merged_sources = _merged_sources(labelled)
    if digest in merged_sources:
        raise VotesError(f"{new}: already merged into {labelled} (sha256 {digest[:12]}...); its votes would count "
                         "twice")

    old_ids = old_table.column("id_str").combine_chunks()
    new_ids = new_table.column("id_str").combine_chunks()
    counts = vote_matrix(old_table, tree)
    new_counts = vote_matrix(new_table, tree)
    index = pc.index_in(new_ids, value_set=old_ids)
    known = pc.is_valid(index).to_numpy(zero_copy_only=False)
    counts[pc.fill_null(index, -1).to_numpy()[known]] += new_counts[known]
    ids = pa.concat_arrays([old_ids, new_ids.filter(pa.array(~known))])
    counts = np.concatenate([counts, new_counts[~known]])

    columns = {"id_str": ids, **{c: pa.array(counts[:, j]) for j, c in enumerate(tree.label_cols)}}
    table = pa.table(columns).replace_schema_metadata({MERGED_KEY: json.dumps([*merged_sources, digest])})
    check_tree(table, tree, f"{out} (the sum of {labelled} and {new})")
    write_parquet_atomic(table, out)
    return table
