"""Vote-space mutual information: throughput over a whole tree and the sampled estimator's error.

Run: .venv/bin/python benchmarks/mutual_information.py [--galaxies 100000] [--draws 32]

Concentrations imitate MC dropout: per galaxy a base Dirichlet (random fractions, total concentration 3-100, each
within Zoobot's (1, 101) range), and S samples that scatter log-normally around it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import spearmanr

from zoobot_pipeline.schemas import get_schema
from zoobot_pipeline.stats import n_vote_outcomes, question_mutual_information, schema_vote_information


def mc_dropout_like(n: int, n_samples: int, n_answers: int, rng: np.random.Generator, spread: float) -> np.ndarray:
    """Concentrations ``(n, S, k)`` that scatter around a per-galaxy base like MC-dropout samples do."""
    fractions = rng.dirichlet(np.ones(n_answers), size=n)
    total = rng.uniform(3, 100, size=(n, 1))
    base = np.clip(fractions * total, 1.0, 101.0)[:, None, :]
    return np.clip(base * np.exp(rng.normal(0, spread, size=(n, n_samples, n_answers))), 1.0, 101.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--galaxies", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--volunteers", type=int, default=40)
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--error-galaxies", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    schema = get_schema("decals_dr5")

    warm = mc_dropout_like(8, args.samples, schema.n_answers, rng, 0.2)
    schema_vote_information(warm, schema, args.volunteers, n_draws=args.draws)  # compile (cached afterwards)

    alpha = mc_dropout_like(args.galaxies, args.samples, schema.n_answers, rng, 0.2)
    start = time.perf_counter()
    mi = schema_vote_information(alpha, schema, args.volunteers, n_draws=args.draws).mutual_information
    elapsed = time.perf_counter() - start
    print(f"throughput: {args.galaxies} galaxies x {schema.n_answers} answers ({len(schema.questions)} questions) "
          f"x S={args.samples}, N={args.volunteers}, draws={args.draws}: {elapsed:.2f} s "
          f"({args.galaxies / elapsed:,.0f} galaxies/s); mean MI per question {np.round(mi.mean(axis=0), 3)}")

    print(f"sampled estimator vs exact enumeration, {args.error_galaxies} galaxies, N={args.volunteers}:")
    for k in (3, 4):
        for spread in (0.1, 0.3):
            sample = mc_dropout_like(args.error_galaxies, args.samples, k, rng, spread)
            t0 = time.perf_counter()
            exact = question_mutual_information(sample, args.volunteers, method="exact")
            t_exact = time.perf_counter() - t0
            t0 = time.perf_counter()
            est = question_mutual_information(sample, args.volunteers, method="sampled", n_draws=args.draws)
            t_est = time.perf_counter() - t0
            error = est - exact
            print(f"  k={k} ({n_vote_outcomes(args.volunteers, k)} outcomes), spread {spread}:"
              f" mean MI {exact.mean():.4f}"
                  f" | abs error mean {np.abs(error).mean():.4f} p95 {np.quantile(np.abs(error), 0.95):.4f}"
                  f" bias {error.mean():+.5f} | rel error (median) {np.median(np.abs(error) / exact):.3f}"
                  f" | Spearman {spearmanr(exact, est).statistic:.4f} | time exact/sampled {t_exact / t_est:.1f}x")


if __name__ == "__main__":
    main()
