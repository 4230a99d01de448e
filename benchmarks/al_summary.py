"""The label-efficiency experiment's verdict in numbers: how many labels each strategy needs to reach random's test
NLL, with a paired 95% confidence interval over seeds, for the whole tree and per question (``active_learning.json``).

Framework-free (numpy, scipy); reads the experiment's ``results.parquet`` rows (``al_experiment.RESULT_COLUMNS`` plus
one ``nll_{question}`` column per question).

- A seed's curve is its test NLL against the number of labelled galaxies, round by round; every strategy of a seed
  starts from the same model, test set and initial labels, so strategies are compared seed by seed (paired).
- Labels needed: where the strategy's piecewise-linear curve first reaches random's NLL at the final budget. A curve
  that never gets there within the budget is extrapolated along its last segment (at most to twice the budget; a flat
  or rising last segment counts as twice the budget), and the JSON says how many seeds were extrapolated.
- Labels saved versus random: ``100 * (1 - needed / final budget)`` per seed; its mean over seeds with a Student-t 95%
  interval. The same for every question's own test NLL.
- Never worse than random beyond noise: at every budget, the paired difference of test NLL (strategy minus random) has
  a 95% interval whose lower end is not above zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["choose_default", "curve_table", "labels_needed", "labels_saved", "paired_differences", "summarise",
           "t_interval"]

REFERENCE = "random"
EXTRAPOLATION_LIMIT = 2.0  # labels needed are capped at this multiple of the final budget


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, standard error, lower, upper) of the mean of ``values`` with a Student-t interval; a single value has an
    infinite interval."""
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    if len(data) < 2:
        return mean, float("inf"), float("-inf"), float("inf")
    se = float(data.std(ddof=1) / np.sqrt(len(data)))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(data) - 1)) * se
    return mean, se, mean - half, mean + half


def labels_needed(labels: np.ndarray, nll: np.ndarray, target: float) -> tuple[float, bool]:
    """(labels at which the piecewise-linear curve first reaches ``target``, whether that was extrapolated past the
    last point); see the module docstring for the extrapolation."""
    if nll[0] <= target:
        return float(labels[0]), False
    for i in range(1, len(nll)):
        if nll[i] <= target:
            return float(labels[i - 1] + (nll[i - 1] - target) / (nll[i - 1] - nll[i]) * (labels[i] - labels[i - 1])), \
                False
    limit = EXTRAPOLATION_LIMIT * float(labels[-1])
    slope = (nll[-1] - nll[-2]) / (labels[-1] - labels[-2]) if len(nll) > 1 else 0.0
    if slope >= 0:
        return limit, True
    return min(limit, float(labels[-1] + (target - nll[-1]) / slope)), True


def curve_table(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """``{strategy: {seed: (labels, values)}}`` of ``metric``, rounds in order."""
    out: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for row in sorted(rows, key=lambda r: (r["strategy"], r["seed"], r["round"])):
        labels, values = out.setdefault(row["strategy"], {}).setdefault(row["seed"], ([], []))
        labels.append(row["n_labelled"])
        values.append(row[metric])
    return {s: {seed: (np.asarray(lv[0], float), np.asarray(lv[1], float)) for seed, lv in per_seed.items()}
            for s, per_seed in out.items()}


def labels_saved(curves: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]], strategy: str,
                 seeds: Sequence[int]) -> dict[str, Any]:
    """Labels ``strategy`` saves against random at random's final budget, per seed and as ``{"value", "ci95"}``."""
    saved, extrapolated = [], 0
    for seed in seeds:
        r_labels, r_values = curves[REFERENCE][seed]
        labels, values = curves[strategy][seed]
        needed, beyond = labels_needed(labels, values, float(r_values[-1]))
        extrapolated += beyond
        saved.append(100.0 * (1.0 - needed / float(r_labels[-1])))
    mean, se, lower, upper = t_interval(saved)
    return {"value": round(mean, 2), "ci95": [round(lower, 2), round(upper, 2)], "se": round(se, 2),
            "per_seed": [round(v, 2) for v in saved], "seeds_extrapolated": extrapolated}


def paired_differences(curves: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]], strategy: str,
                       seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Per budget: the strategy's test NLL minus random's, seed by seed, as mean, standard error and 95% interval."""
    out = []
    labels = curves[strategy][seeds[0]][0]
    for i, n in enumerate(labels):
        differences = [curves[strategy][s][1][i] - curves[REFERENCE][s][1][i] for s in seeds]
        mean, se, lower, upper = t_interval(differences)
        out.append({"labels": int(n), "mean": round(mean, 4), "se": round(se, 4),
                    "ci95": [round(lower, 4), round(upper, 4)]})
    return out


def _finished_seeds(rows: list[dict[str, Any]], strategies: Sequence[str], n_rounds: int) -> list[int]:
    """Seeds whose every strategy has all its rounds."""
    done = []
    for seed in sorted({r["seed"] for r in rows}):
        counts = [sum(r["seed"] == seed and r["strategy"] == s for r in rows) for s in strategies]
        if all(c == n_rounds + 1 for c in counts):
            done.append(seed)
    return done


def summarise(rows: list[dict[str, Any]], strategies: Sequence[str], questions: Sequence[str], n_rounds: int,
              candidates: Sequence[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The machine-readable result (``active_learning.json``) from the experiment's result rows; its
    ``default_strategy`` is :func:`choose_default` among ``candidates`` (the general-purpose strategies)."""
    seeds = _finished_seeds(rows, strategies, n_rounds)
    if REFERENCE not in strategies:
        raise ValueError(f"the summary compares with {REFERENCE!r}, which is not among the strategies {strategies}")
    if not seeds:
        raise ValueError("no seed has finished every strategy's rounds yet")
    rows = [r for r in rows if r["seed"] in seeds]
    whole = curve_table(rows, "test_nll")
    per_question = {q: curve_table(rows, f"nll_{q}") for q in questions}
    budgets = [int(n) for n in whole[REFERENCE][seeds[0]][0]]
    result: dict[str, Any] = {
        "seeds": seeds, "budgets": budgets, "default_strategy": REFERENCE, "strategies": {},
        **(extra or {}),
    }
    for strategy in strategies:
        mean_curve = np.mean([whole[strategy][s][1] for s in seeds], axis=0)
        entry: dict[str, Any] = {"test_nll_mean": [round(float(v), 4) for v in mean_curve]}
        if strategy != REFERENCE:
            entry["labels_saved_vs_random_pct"] = labels_saved(whole, strategy, seeds)
            differences = paired_differences(whole, strategy, seeds)
            entry["paired_difference_vs_random"] = differences
            entry["never_worse_than_random"] = all(d["ci95"][0] <= 0 for d in differences)
            entry["per_question"] = {
                q: {"labels_saved_vs_random_pct": labels_saved(curves, strategy, seeds),
                    "final_paired_difference": paired_differences(curves, strategy, seeds)[-1]}
                for q, curves in per_question.items()}
        result["strategies"][strategy] = entry
    result["default_strategy"] = choose_default(result["strategies"], candidates)
    return result


def choose_default(strategies: dict[str, Any], candidates: Sequence[str]) -> str:
    """The production default: of the ``candidates`` never worse than random beyond noise at any budget, the one that
    saves the most labels at the final budget (mean over seeds); random itself when none saves any."""
    eligible = [(strategies[name]["labels_saved_vs_random_pct"]["value"], name) for name in candidates
                if name != REFERENCE and strategies[name]["never_worse_than_random"]]
    best = max(eligible, default=(0.0, REFERENCE))
    return best[1] if best[0] > 0 else REFERENCE
