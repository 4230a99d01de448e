"""Galaxy Zoo decision trees: built-ins match galaxy-datasets, YAML validation names the question at fault."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from zoobot_pipeline.schemas import SchemaError, available_schemas, get_schema, load_schema, schema_from_dict


def _galaxy_datasets_label_metadata():
    """galaxy-datasets' label_metadata, loaded by file so that its package __init__ (torch imports) never runs."""
    spec = importlib.util.find_spec("galaxy_datasets")
    assert spec is not None, "galaxy-datasets is installed by `make test` (it is the reference for the trees)"
    path = Path(next(iter(spec.submodule_search_locations))) / "shared" / "label_metadata.py"
    module_spec = importlib.util.spec_from_file_location("gd_label_metadata", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


REFERENCE = {
    "gz2": ("gz2_ortho_pairs", "gz2_ortho_dependencies"),
    "decals_dr5": ("decals_dr5_ortho_pairs", "decals_ortho_dependencies"),
    "decals_dr8": ("decals_dr8_ortho_pairs", "decals_ortho_dependencies"),
    "desi": ("desi_pairs", "desi_dependencies"),
    "euclid": ("euclid_ortho_pairs", "euclid_ortho_dependencies"),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_builtin_trees_match_galaxy_datasets(name):
    metadata = _galaxy_datasets_label_metadata()
    pairs = getattr(metadata, REFERENCE[name][0])
    dependencies = getattr(metadata, REFERENCE[name][1])
    schema = get_schema(name)

    expected_cols = [question + answer for question, answers in pairs.items() for answer in answers]
    assert schema.label_cols == expected_cols
    assert [q.name for q in schema.questions] == list(pairs)
    for question in schema.questions:
        parent = question.asked_after.label_col if question.asked_after else None
        assert parent == dependencies[question.name], question.name


def test_required_trees_are_available_and_named_like_the_data_releases():
    assert {"gz2", "decals_dr5", "decals_dr8", "desi", "euclid"} <= set(available_schemas())
    schema = get_schema("decals_dr5")
    assert schema.label_cols[0] == "smooth-or-featured-dr5_smooth"
    assert schema.n_answers == 34 and len(schema.questions) == 10
    edge_on = schema.question("disk-edge-on-dr5")
    assert edge_on.label_cols == ["disk-edge-on-dr5_yes", "disk-edge-on-dr5_no"]
    assert (edge_on.start, edge_on.stop) == (3, 5)
    assert schema.answer("bar-dr5_weak").index == schema.label_cols.index("bar-dr5_weak")
    with pytest.raises(KeyError, match="no_such"):
        get_schema("no_such")


def test_question_ranges_tile_the_label_columns():
    for name in available_schemas():
        schema = get_schema(name)
        ranges = [(q.start, q.stop) for q in schema.questions]
        assert ranges[0][0] == 0 and ranges[-1][1] == len(schema.label_cols)
        assert all(stop == next_start for (_, stop), (next_start, _) in zip(ranges, ranges[1:], strict=False))
        for question in schema.questions:
            assert schema.label_cols[question.slice] == question.label_cols


def test_probability_asked_multiplies_fractions_along_the_path():
    schema = get_schema("decals_dr5")
    rng = np.random.default_rng(0)
    fractions = rng.uniform(0.05, 1, size=(7, schema.n_answers))
    prob = schema.probability_asked(fractions)
    col = schema.label_cols.index
    expected_arms = (
        fractions[:, col("smooth-or-featured-dr5_featured-or-disk")]
        * fractions[:, col("disk-edge-on-dr5_no")]
        * fractions[:, col("has-spiral-arms-dr5_yes")]
    )
    np.testing.assert_allclose(prob[:, schema.question("spiral-arm-count-dr5").index], expected_arms)
    np.testing.assert_allclose(prob[:, schema.question("smooth-or-featured-dr5").index], 1.0)
    np.testing.assert_allclose(prob[:, schema.question("merging-dr5").index], 1.0)
    np.testing.assert_allclose(
        prob[:, schema.question("how-rounded-dr5").index], fractions[:, col("smooth-or-featured-dr5_smooth")]
    )
    with pytest.raises(ValueError, match="34 answer columns"):
        schema.probability_asked(fractions[:, :5])


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tree.yaml"
    path.write_text(text)
    return path


def test_user_tree_from_yaml_keeps_yes_no_and_numbers_as_answer_names(tmp_path):
    schema = load_schema(_write(tmp_path, """
name: rings
questions:
  - name: ring
    answers: [yes, no]
  - name: ring-count
    answers: [1, 2, more]
    asked_after: ring_yes
"""))
    assert schema.label_cols == ["ring_yes", "ring_no", "ring-count_1", "ring-count_2", "ring-count_more"]
    assert schema.question("ring-count").asked_after.label_col == "ring_yes"
    assert schema_from_dict(schema.to_dict()) == schema


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("  - name: a\n    answers: [x, y]\n  - name: b\n    answers: [p]\n    asked_after: a_z\n",
         "question 'b' is asked after unknown answer 'a_z'"),
        ("  - name: a\n    answers: [x, y]\n    asked_after: b_p\n"
         "  - name: b\n    answers: [p, q]\n    asked_after: a_x\n",
         "question 'a' is in a dependency cycle"),
        ("  - name: a\n    answers: [x, x]\n", "question 'a' repeats label column 'a_x'"),
        ("  - name: a\n    answers: [x]\n  - name: b\n    answers: []\n", "question 'b' has no answers"),
        ("  - name: a\n    answers: [x]\n  - name: a\n    answers: [y]\n", "question 'a' is defined twice"),
    ],
)
def test_invalid_trees_name_the_question(tmp_path, body, message):
    path = _write(tmp_path, "name: bad\nquestions:\n" + body)
    with pytest.raises(SchemaError, match=message) as err:
        load_schema(path)
    assert str(path) in str(err.value)


def test_unreadable_or_malformed_yaml_names_the_file(tmp_path):
    with pytest.raises(SchemaError, match="cannot read"):
        load_schema(tmp_path / "missing.yaml")
    with pytest.raises(SchemaError, match="not valid YAML"):
        load_schema(_write(tmp_path, "questions: [\n"))
