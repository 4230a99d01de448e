"""More strategies on the label-efficiency experiment's work folder: candidate acquisition scores, chosen on a held-out
seed, and the oracle that bounds what any per-galaxy score could buy.

Run after ``active_learning.py``, on its work folder (same release, pretrained model, round settings):
    .venv/bin/python benchmarks/al_candidates.py --work /work/al_run --name dev --seeds 5 \\
        --strategies random power_bald power_entropy power_oracle
    .venv/bin/python benchmarks/al_candidates.py --work /work/al_run --name oracle_234 --seeds 2 3 4 \\
        --strategies power_oracle --with oracle     (compared with the experiment's own random curves of the same
                                                     seeds; --with: seeds 0 and 1 of an earlier run join the summary)

Each ``--name`` is an experiment of its own in ``WORK/results_NAME`` (resumable like the main one: rerun the same
command); seeds the main experiment ran start from its round-0 models (``run_experiment``'s ``start_from``). Seeds the
main experiment did not run (e.g. 5, 6) hold test sets and starting sets that the reported seeds never see: choose
among candidates there, never on the reported seeds' test sets. The labels saved against random come from random
curves of the same seeds, this run's own when it ran ``random``, else the main experiment's.

Strategies: the experiment's presets (``al_experiment.preset_strategies``) and
- ``power_entropy``: power sampling (beta from ``--entropy-beta``) of the predictive-entropy score
  (``sum_q H_q * P(asked_q)``, the expected vote distribution's entropy), which tracks where the model is wrong far
  better than BALD does in this simulation (``al_estimators.py``: Spearman with per-galaxy excess NLL ~0.6 against
  ~0.1-0.2). Its scores span a narrow range (max/median ~1.5, BALD's ~6), so beta 1 is close to uniform sampling.
- ``power_oracle``: power sampling (beta 1) of ``oracle_error``, a benchmark-only acquisition: a galaxy's excess NLL,
  the Dirichlet-Multinomial NLL of its (hidden) simulated votes under the model's concentrations minus their NLL under
  the true answer probabilities (clipped at 0), i.e. how wrong the current model is about that galaxy, which no real
  acquisition function can know. If even this saves few labels, no better estimate of per-galaxy uncertainty could.
- ``topk_oracle``: the K galaxies of largest ``oracle_error``: whether a sharper batch than power sampling's would
  raise that bound (top K of BALD needs more labels than random, but BALD's top K is mostly stars).
- ``power_bald_stratified``, ``power_oracle_stratified``, ``topk_oracle_stratified``: power BALD, the power oracle
  and the top-K oracle with the batch shared among the model's predicted kinds (:data:`STRATA`) in proportion to the
  eligible pool (:mod:`zoobot_pipeline.active.strata`): the top K of the true error is 87-92% bright featured
  galaxies and needs more labels than random, so a batch that keeps the pool's make-up may be what pays. No
  parameter to tune.
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
from al_experiment import ExperimentConfig, Strategy, preset_strategies, run_experiment
from al_summary import REFERENCE, summarise
from pydantic import ValidationError

from zoobot_pipeline.active.acquisition import register_acquisition
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.schemas import Schema, get_schema
from zoobot_pipeline.stats import dirichlet_multinomial_nll

ORACLE = "oracle_error"
STRATA = {"decals_dr5": ("smooth-or-featured-dr5", "disk-edge-on-dr5")}
"""The questions a stratified candidate's strata come from, per tree: what the model thinks a galaxy is (smooth,
featured or artefact; edge-on or not)."""


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


def candidate_strategies(schema_name: str, targeted_question: str, entropy_beta: float) -> dict[str, Strategy]:
    """The presets and the candidates of the module docstring, by name."""
    strata = STRATA.get(schema_name)
    stratified = {} if strata is None else {
        "power_bald_stratified": Strategy(name="power_bald_stratified", sampling="power", stratify_by=strata),
        "power_oracle_stratified": Strategy(name="power_oracle_stratified", acquisition=ORACLE, sampling="power",
                                            stratify_by=strata),
        "topk_oracle_stratified": Strategy(name="topk_oracle_stratified", acquisition=ORACLE, stratify_by=strata)}
    return preset_strategies(schema_name, targeted_question) | {
        "power_entropy": Strategy(name="power_entropy", acquisition="entropy", sampling="power", beta=entropy_beta),
        "power_oracle": Strategy(name="power_oracle", acquisition=ORACLE, sampling="power"),
        "topk_oracle": Strategy(name="topk_oracle", acquisition=ORACLE),
    } | stratified


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="active_learning.py's --work folder")
    parser.add_argument("--name", required=True, help="this run's results folder: WORK/results_NAME")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--strategies", nargs="+", required=True)
    parser.add_argument("--entropy-beta", type=float, default=1.0, help="power_entropy's beta")
    parser.add_argument("--with", dest="also", nargs="*", default=[], metavar="NAME",
                        help="earlier runs (WORK/results_NAME) whose curves join the summary, e.g. the same "
                        "strategy's other seeds")
    parser.add_argument("--json", type=Path, default=None, help="also write the verdict here")
    args = parser.parse_args()
    needed = [args.work / "results" / "experiment.json", *(args.work / f"results_{name}" / "results.parquet"
                                                           for name in args.also)]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        parser.error(f"{missing[0]} does not exist: --work must be active_learning.py's work folder and each --with "
                     "NAME an earlier run of this script there")
    experiment = json.loads((args.work / "results" / "experiment.json").read_text())
    main_config = ExperimentConfig.model_validate(experiment["config"])
    release = Path(experiment["release"])
    schema = get_schema(main_config.round.schema_name)
    if not args.entropy_beta > 0:
        parser.error(f"--entropy-beta must be > 0, got {args.entropy_beta}")
    known = candidate_strategies(main_config.round.schema_name,
                                 main_config.targeted_question or main_config.question, args.entropy_beta)
    unknown = sorted(set(args.strategies) - set(known))
    if unknown:
        parser.error(f"unknown strategies {unknown}; known: {', '.join(known)}")
    if ORACLE in {known[name].acquisition for name in args.strategies}:
        register_oracle(release, schema)
    try:
        config = ExperimentConfig.model_validate(main_config.model_dump() | {
            "seeds": tuple(args.seeds), "strategies": tuple(known[name] for name in args.strategies)})
    except ValidationError as err:
        parser.error(f"--seeds/--strategies: {err.errors()[0]['msg']}")
    started = time.perf_counter()
    rows = run_experiment(release, args.work / f"results_{args.name}", config, log=lambda line: print(
        f"[{time.perf_counter() - started:5.0f} s] {line}", flush=True), start_from=args.work / "results").to_pylist()
    for name in args.also:
        rows += pq.read_table(args.work / f"results_{name}" / "results.parquet").to_pylist()
    names = list(args.strategies)
    if REFERENCE not in names:
        seeds = {r["seed"] for r in rows}
        main_rows = pq.read_table(args.work / "results" / "results.parquet").to_pylist()
        rows += [r for r in main_rows if r["seed"] in seeds and r["strategy"] == REFERENCE]
        names.insert(0, REFERENCE)
    verdict = summarise(rows, names, [q.name for q in schema.questions], config.n_rounds,
                        [n for n in names if n != REFERENCE])
    print(f"\nlabels saved against random at {verdict['budgets'][-1]} labels, seeds {verdict['seeds']} (paired 95% "
          "interval):")
    for name, entry in verdict["strategies"].items():
        if name != REFERENCE:
            saved = entry["labels_saved_vs_random_pct"]
            print(f"  {name:>20}: {saved['value']:+6.1f}% [{saved['ci95'][0]:+.1f}, {saved['ci95'][1]:+.1f}]; "
                  f"per seed {', '.join(f'{v:+.0f}%' for v in saved['per_seed'])}")
    if args.json is not None:
        args.json.write_text(json.dumps(verdict, indent=1))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
