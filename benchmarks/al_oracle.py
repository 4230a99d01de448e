"""An upper bound for per-galaxy acquisition: what if the acquisition score were the model's true error?

Run after ``active_learning.py``, on its work folder (same release, pretrained model, seeds, splits and round 0):
    .venv/bin/python benchmarks/al_oracle.py --work /work/al_run [--seeds 0 1 2]

Registers a benchmark-only acquisition function, ``oracle_error``: a galaxy's excess NLL, the Dirichlet-Multinomial
NLL of its (hidden) simulated votes under the model's concentrations minus their NLL under the true answer
probabilities (clipped at 0), i.e. how wrong the current model is about that galaxy, which no real acquisition
function can know. The strategy ``power_oracle`` draws batches in proportion to it (power sampling, beta 1, as
``power_bald``), through the same rounds as the experiment (``al_experiment.run_experiment``, results in
``WORK/results_oracle``). Then the labels it saves against the experiment's own random curves of the same seeds
(``al_summary.summarise``).

If even this oracle saves few labels, no better estimate of per-galaxy uncertainty could: what limits active learning
is then how much a galaxy's labels teach the model about the others (the simulation's diversity and the model's
capacity to use a few hundred labels), not the estimator.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from al_experiment import ExperimentConfig, Strategy, run_experiment
from al_summary import summarise

from zoobot_pipeline.active.acquisition import register_acquisition
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.schemas import Schema, get_schema
from zoobot_pipeline.stats import dirichlet_multinomial_nll

ORACLE = "oracle_error"


def register_oracle(release: Path, schema: Schema) -> None:
    """Register ``oracle_error`` for ``release`` (its ``votes.parquet`` and ``truth.parquet``)."""
    votes = read_votes(release / "votes.parquet", schema)
    truth = pq.read_table(release / "truth.parquet")
    truth = truth.take(pc.index_in(votes["id_str"], value_set=truth["id_str"]))
    counts = vote_matrix(votes, schema)
    p = np.stack([truth[f"p_{c}"].to_numpy() for c in schema.label_cols], axis=1)
    truth_nll = dirichlet_multinomial_nll(counts, np.clip(p, 1e-9, None) * 1e9, schema).sum(axis=1)
    columns = [f"{c}_concentration" for c in schema.label_cols]

    def oracle_error(batch: pa.RecordBatch, questions: list[str], weights: np.ndarray, seed: int) -> np.ndarray:
        rows = pc.index_in(batch.column("id_str"), value_set=votes["id_str"]).to_numpy(zero_copy_only=False)
        alpha = np.stack([batch.column(c).to_numpy(zero_copy_only=False) for c in columns], axis=1)
        model_nll = dirichlet_multinomial_nll(counts[rows], alpha.astype(np.float64), schema).sum(axis=1)
        return np.clip(model_nll - truth_nll[rows], 0.0, None)

    register_acquisition(ORACLE, oracle_error, columns=columns, task="dirichlet", replace=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="active_learning.py's --work folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=None, help="also write the verdict here")
    args = parser.parse_args()
    experiment = json.loads((args.work / "results" / "experiment.json").read_text())
    main_config = ExperimentConfig.model_validate(experiment["config"])
    release = Path(experiment["release"])
    schema = get_schema(main_config.round.schema_name)
    register_oracle(release, schema)
    config = main_config.model_copy(update={
        "seeds": tuple(args.seeds),
        "strategies": (Strategy(name="power_oracle", acquisition=ORACLE, sampling="power"),)})
    started = time.perf_counter()
    oracle = run_experiment(release, args.work / "results_oracle", config, log=lambda line: print(
        f"[{time.perf_counter() - started:5.0f} s] {line}", flush=True))
    main_rows = pq.read_table(args.work / "results" / "results.parquet").to_pylist()
    rows = [r for r in main_rows if r["seed"] in args.seeds] + oracle.to_pylist()
    names = [s.name for s in main_config.strategies] + ["power_oracle"]
    verdict = summarise(rows, names, [q.name for q in schema.questions], config.n_rounds, ["power_oracle"])
    print(f"\nlabels saved against random at {verdict['budgets'][-1]} labels, seeds {verdict['seeds']} (paired 95% "
          "interval):")
    for name, entry in verdict["strategies"].items():
        if name != "random":
            saved = entry["labels_saved_vs_random_pct"]
            print(f"  {name:>20}: {saved['value']:+6.1f}% [{saved['ci95'][0]:+.1f}, {saved['ci95'][1]:+.1f}]; "
                  f"per seed {', '.join(f'{v:+.0f}%' for v in saved['per_seed'])}")
    if args.json is not None:
        args.json.write_text(json.dumps(verdict, indent=1))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
