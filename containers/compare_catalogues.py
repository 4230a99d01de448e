"""Compare two scored catalogues (check_scoring_image.sh: the container's against the host's): the same ids with the
same columns, strings and flags equal, numbers within a tolerance. Prints one line with the row count and the largest
difference; exits 1 with the reason if they differ.

Usage: python containers/compare_catalogues.py EXPECTED ACTUAL [--atol 1e-6]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow as pa

from zoobot_pipeline.catalogue import read_catalogue


def compare(expected: pa.Table, actual: pa.Table, atol: float) -> tuple[float, list[str]]:
    """The largest absolute difference over the numeric columns, and every difference beyond ``atol`` or in the
    ids, columns and non-numeric values (empty when the catalogues agree)."""
    problems = []
    if expected.schema.names != actual.schema.names:
        return np.inf, [f"columns differ: {expected.schema.names} != {actual.schema.names}"]
    expected, actual = (table.sort_by("id_str") for table in (expected, actual))
    if expected["id_str"] != actual["id_str"]:
        missing = set(expected["id_str"].to_pylist()) ^ set(actual["id_str"].to_pylist())
        return np.inf, [f"ids differ: {expected.num_rows} != {actual.num_rows} rows, {len(missing)} ids in one only"]
    largest = 0.0
    for name in expected.schema.names:
        want, got = expected[name], actual[name]
        if pa.types.is_floating(want.type) or pa.types.is_integer(want.type):
            a, b = (column.to_numpy(zero_copy_only=False).astype(np.float64) for column in (want, got))
            if not np.array_equal(np.isnan(a), np.isnan(b)):
                problems.append(f"{name}: NaN in different rows")
                continue
            both = ~np.isnan(a)
            difference = float(np.max(np.abs(a[both] - b[both]), initial=0.0))
            largest = max(largest, difference)
            if difference > atol:
                problems.append(f"{name}: differs by up to {difference:.3g} (> {atol:g})")
        elif want != got:
            problems.append(f"{name}: values differ")
    return largest, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("expected")
    parser.add_argument("actual")
    parser.add_argument("--atol", type=float, default=1e-6)
    args = parser.parse_args()
    expected, actual = read_catalogue(args.expected), read_catalogue(args.actual)
    largest, problems = compare(expected, actual, args.atol)
    for problem in problems:
        print(f"catalogues differ: {problem}", file=sys.stderr)
    print(f"{actual.num_rows} rows, {actual.num_columns} columns vs {expected.num_rows} x {expected.num_columns}; "
          f"largest difference {largest:.3g} (tolerance {args.atol:g}): {'DIFFERENT' if problems else 'same'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
