"""Simulated Galaxy Zoo volunteers: answer probabilities from the true morphology, and votes that follow the tree.

The reference tree is GZ DECaLS (``decals_dr5``; ``decals_dr8`` and ``desi`` are the same tree). Questions of other
trees are matched by their name without the campaign suffix (``bar-gz2`` -> ``bar``) and answers by name, with a few
synonyms (``gz2``'s ``bar`` yes/no, ``bulge-size`` obvious/just-noticeable, Euclid's ``problem``). A question that
cannot be matched gets a uniform mean. Every galaxy's probabilities are then drawn from a Dirichlet around the mean
(overdispersion: real ambiguity between volunteers that a model can learn).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from zoobot_pipeline.schemas import Question, Schema

__all__ = ["answer_probabilities", "mean_answer_probabilities", "simulate_votes"]

_FLOOR = 0.01  # smallest mean probability of any answer, so every answer is possible


def _ordinal(position: np.ndarray, width: np.ndarray, n: int) -> np.ndarray:
    """Weights ``(n_galaxies, n)`` of a Gaussian over ordinal answers 0..n-1 centred on ``position``."""
    k = np.arange(n)
    w = np.exp(-0.5 * ((k[None, :] - position[:, None]) / width[:, None]) ** 2)
    return w / w.sum(axis=1, keepdims=True)


def _mix(weight: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``weight * a + (1 - weight) * b`` row-wise."""
    return weight[:, None] * a + (1.0 - weight[:, None]) * b


def _select(conditions: list[np.ndarray], choices: list[np.ndarray], default: np.ndarray) -> np.ndarray:
    """Row-wise ``np.select`` for ``(n, k)`` choices (each choice may be a length-k row)."""
    n = len(conditions[0])
    out = np.broadcast_to(np.asarray(default, dtype=np.float64), (n, len(default))).copy()
    for cond, choice in zip(conditions[::-1], choices[::-1], strict=True):
        out[cond] = np.broadcast_to(choice, out.shape)[cond]
    return out


def _semantic_means(truth: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Mean answer probabilities per base question name, keyed by answer name (synonyms included)."""
    kind = np.asarray(truth["kind"], dtype=object)
    n = len(kind)
    is_ = {k: kind == k for k in ("smooth", "featured", "edge_on", "merger", "star", "artifact")}
    vis = np.clip(np.asarray(truth["visibility"], dtype=np.float64), 0.0, 1.0)
    vis_edge = np.sqrt(vis)  # a thin disc is recognisable even when small
    q = np.nan_to_num(np.asarray(truth["axis_ratio"], dtype=np.float64), nan=0.7)
    bulge_fraction = np.nan_to_num(np.asarray(truth["bulge_fraction"], dtype=np.float64), nan=0.5)
    bar = np.asarray(truth["bar"], dtype=object)
    n_arms = np.asarray(truth["n_arms"], dtype=np.int64)
    arm_strength = np.asarray(truth["arm_strength"], dtype=np.float64)
    tidal = np.asarray(truth["tidal"], dtype=bool)
    winding = np.asarray(truth["arm_winding"], dtype=object)
    edge_bulge = np.asarray(truth["edge_on_bulge"], dtype=object)
    artifact_type = np.asarray(truth["artifact_type"], dtype=object)
    has_arms = n_arms > 0
    means: dict[str, dict[str, np.ndarray]] = {}

    strength = np.clip(0.35 + 1.5 * arm_strength + 0.25 * (bar == "strong") + 0.1 * (bar == "weak")
                       - 0.3 * bulge_fraction, 0.1, 1.0)
    featured = np.select(
        [is_["smooth"], is_["featured"], is_["edge_on"], is_["merger"], is_["star"], is_["artifact"]],
        [0.06 + 0.1 * tidal * vis, 0.1 + 0.85 * vis * strength, 0.15 + 0.8 * vis_edge, 0.45 + 0.2 * vis,
         np.full(n, 0.04), np.full(n, 0.08)])
    artifact = np.select([is_["star"], is_["artifact"]], [np.full(n, 0.75), np.full(n, 0.85)], 0.015)
    smooth = np.clip(1.0 - featured - artifact, _FLOOR, None)
    means["smooth-or-featured"] = {"smooth": smooth, "featured-or-disk": featured, "artifact": artifact,
                                   "problem": artifact}

    edge_yes = np.select(
        [is_["edge_on"], is_["featured"], is_["smooth"]],
        [0.55 + 0.42 * vis_edge, 0.04 + 0.6 * np.clip((0.4 - q) / 0.2, 0.0, 1.0), 0.05 + 0.3 * (q < 0.4)],
        0.15)
    means["disk-edge-on"] = {"yes": edge_yes, "no": 1.0 - edge_yes}

    spiral_yes = np.where(is_["featured"] & has_arms, 0.2 + 0.75 * vis * np.clip(arm_strength / 0.3, 0.0, 1.0),
                          np.where(is_["featured"], 0.12, 0.15))
    means["has-spiral-arms"] = {"yes": spiral_yes, "no": 1.0 - spiral_yes}

    unseen_bar = np.array([0.03, 0.12, 0.85])
    bar_seen = _select([bar == "strong", bar == "weak"], [np.array([0.7, 0.22, 0.08]), np.array([0.15, 0.5, 0.35])],
                       unseen_bar)
    bar_p = _mix(vis, bar_seen, unseen_bar[None, :])
    means["bar"] = {"strong": bar_p[:, 0], "weak": bar_p[:, 1], "no": bar_p[:, 2], "yes": bar_p[:, 0] + bar_p[:, 1]}

    # bulge-size: 0 dominant .. 4 none; faint discs look more bulge-dominated and get more scattered answers
    position = np.interp(bulge_fraction, [0.0, 0.07, 0.2, 0.4, 0.6], [4.0, 3.0, 2.0, 1.0, 0.0])
    position = np.where(is_["featured"], position - 1.2 * (1.0 - vis), np.where(is_["smooth"], 0.5, 2.0))
    bulge = _ordinal(position, 0.6 + 1.0 * (1.0 - vis), 5)
    means["bulge-size"] = {"dominant": bulge[:, 0], "large": bulge[:, 1], "moderate": bulge[:, 2],
                           "small": bulge[:, 3], "none": bulge[:, 4], "obvious": bulge[:, 1] + bulge[:, 2],
                           "just-noticeable": bulge[:, 3], "no": bulge[:, 4]}

    rounded = _ordinal(np.interp(q, [0.2, 0.45, 0.6, 0.8, 1.0], [2.0, 1.5, 1.0, 0.3, 0.0]), 0.45 + 0.3 * (1 - vis), 3)
    means["how-rounded"] = {"round": rounded[:, 0], "in-between": rounded[:, 1], "cigar-shaped": rounded[:, 2],
                            "cigar": rounded[:, 2]}

    unseen_edge_bulge = np.array([0.15, 0.45, 0.40])  # boxy, none, rounded
    eb = _select([edge_bulge == "boxy", edge_bulge == "none", edge_bulge == "rounded"],
                 [np.array([0.6, 0.15, 0.25]), np.array([0.08, 0.8, 0.12]), np.array([0.12, 0.13, 0.75])],
                 unseen_edge_bulge)
    eb = _mix(np.where(is_["edge_on"], vis_edge, 0.0), eb, unseen_edge_bulge[None, :])
    means["edge-on-bulge"] = {"boxy": eb[:, 0], "none": eb[:, 1], "rounded": eb[:, 2]}
    means["bulge-shape"] = {"boxy": eb[:, 0], "no-bulge": eb[:, 1], "round": eb[:, 2]}

    wind_pos = np.select([winding == "tight", winding == "medium", winding == "loose"], [0.0, 1.0, 2.0], 1.0)
    wind = _ordinal(wind_pos, np.where(has_arms, 0.5 + 0.7 * (1.0 - vis), 1.0), 3)
    means["spiral-winding"] = {"tight": wind[:, 0], "medium": wind[:, 1], "loose": wind[:, 2]}

    counted = _ordinal(np.where(has_arms, np.minimum(n_arms, 5) - 1.0, 1.5), np.where(has_arms, 0.5, 2.0), 5)
    cant_tell = np.where(has_arms, 0.06 + 0.75 * (1.0 - vis), 0.5)
    counts = counted * (1.0 - cant_tell)[:, None]
    means["spiral-arm-count"] = {"1": counts[:, 0], "2": counts[:, 1], "3": counts[:, 2], "4": counts[:, 3],
                                 "more-than-4": counts[:, 4], "cant-tell": cant_tell}

    calm = np.array([0.88, 0.08, 0.03, 0.01])
    merging = _select([is_["merger"], tidal], [np.array([0.05, 0.15, 0.3, 0.5]), np.array([0.3, 0.4, 0.25, 0.05])],
                      calm)
    merging = _mix(np.where(is_["merger"], 1.0, np.where(tidal, vis, 0.0)), merging, calm[None, :])
    means["merging"] = {"none": merging[:, 0], "minor-disturbance": merging[:, 1],
                        "major-disturbance": merging[:, 2], "merger": merging[:, 3]}

    odd = np.select([is_["merger"], tidal, is_["artifact"]], [np.full(n, 0.85), 0.1 + 0.5 * vis, np.full(n, 0.3)], 0.08)
    means["something-odd"] = {"yes": odd, "no": 1.0 - odd}

    clumps = np.where(is_["featured"], 0.08 + 0.4 * vis * arm_strength, 0.05)
    means["clumps"] = {"yes": clumps, "no": 1.0 - clumps}

    problem = _select([is_["star"], is_["artifact"]], [np.array([0.85, 0.1, 0.05]), np.array([0.1, 0.8, 0.1])],
                      np.array([0.3, 0.3, 0.4]))
    means["problem"] = {"star": problem[:, 0], "artifact": problem[:, 1], "zoom": problem[:, 2]}

    # satellite, scattered, diffraction, ray, saturation, other, ghost
    art = _select([artifact_type == "satellite_trail", is_["artifact"], is_["star"]],
                  [np.array([0.8, 0.04, 0.03, 0.05, 0.02, 0.04, 0.02]),
                   np.array([0.05, 0.1, 0.03, 0.1, 0.12, 0.55, 0.05]),
                   np.array([0.02, 0.1, 0.45, 0.05, 0.3, 0.05, 0.03])],
                  np.full(7, 1 / 7))
    means["artifact"] = dict(zip(["satellite", "scattered", "diffraction", "ray", "saturation", "other", "ghost"],
                                 art.T, strict=True))
    return means


def _base_name(question: str, known: set[str]) -> str | None:
    """The reference question a (possibly campaign-suffixed) question name matches, e.g. ``bar-dr5`` -> ``bar``."""
    matches = [base for base in known if question == base or question.startswith(base + "-")]
    return max(matches, key=len) if matches else None


def _question_mean(question: Question, means: dict[str, dict[str, np.ndarray]], n: int) -> np.ndarray:
    base = _base_name(question.name, set(means))
    answers = means.get(base, {}) if base else {}
    names = [a.name for a in question.answers]
    if not any(name in answers for name in names):
        return np.full((n, len(names)), 1.0 / len(names))
    mean = np.stack([np.asarray(answers[name]) if name in answers else np.zeros(n) for name in names], axis=1)
    mean = np.clip(mean, 0.0, None) + _FLOOR
    return mean / mean.sum(axis=1, keepdims=True)


def mean_answer_probabilities(truth: Mapping[str, np.ndarray], schema: Schema) -> np.ndarray:
    """Mean answer probabilities ``(n_sources, n_answers)`` implied by the truth; each question's slice sums to 1.

    ``truth`` needs the columns of ``morphology.sample_truth`` plus ``visibility``.
    """
    means = _semantic_means(truth)
    n = len(truth["kind"])
    out = np.empty((n, schema.n_answers))
    for question in schema.questions:
        out[:, question.slice] = _question_mean(question, means, n)
    return out


def answer_probabilities(truth: Mapping[str, np.ndarray], schema: Schema, rng: np.random.Generator,
                         concentration: float = 30.0) -> np.ndarray:
    """Per-galaxy answer probabilities: Dirichlet draws with mean ``mean_answer_probabilities`` and total
    concentration ``concentration`` (smaller = more disagreement between galaxies of the same truth)."""
    mean = mean_answer_probabilities(truth, schema)
    gamma = rng.standard_gamma(concentration * mean)
    probs = np.empty_like(mean)
    for question in schema.questions:
        g = np.maximum(gamma[:, question.slice], 1e-300)
        probs[:, question.slice] = g / g.sum(axis=1, keepdims=True)
    return probs


def simulate_votes(probabilities: np.ndarray, schema: Schema, n_volunteers: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Vote counts ``(n_sources, n_answers)`` int32 from volunteers walking the decision tree.

    Each galaxy gets Poisson(``n_volunteers``) volunteers (at least one). They all answer the questions asked of
    everyone; a question asked after answer A is answered only by the volunteers who gave A, each choosing an answer
    with the galaxy's probabilities, so a child question never has more votes than its parent answer.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n = probabilities.shape[0]
    votes = np.zeros((n, schema.n_answers), dtype=np.int64)
    n_root = np.maximum(rng.poisson(n_volunteers, n), 1)
    for question in sorted(schema.questions, key=lambda q: (len(schema.path(q)), q.index)):
        asked = n_root if question.asked_after is None else votes[:, question.asked_after.index]
        p = probabilities[:, question.slice]
        votes[:, question.slice] = rng.multinomial(asked, p / p.sum(axis=1, keepdims=True))
    return votes.astype(np.int32)
