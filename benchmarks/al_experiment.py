"""The label-efficiency experiment: active-learning rounds on a simulated release, one curve per acquisition function.

A round is the production cycle's (:mod:`zoobot_pipeline.cycle`) with the volunteers simulated:
:func:`run_round` ranks the latest model's catalogue with an acquisition function into the queue directory
(``rank_catalogue``), skipping galaxies that had votes when the experiment started (``known_votes``), flagged cutouts,
and every galaxy an earlier round queued (the queue's history); gets the queued galaxies' votes from the simulated
volunteers (:func:`reveal_votes`); merges them into the labelled set (``merge_votes``); and retrains and rescores with
:func:`zoobot_pipeline.cycle.train_and_score` (finetune -> export the ONNX package -> score the whole release).

:func:`run_experiment`, on a simulated release where every source has simulated volunteer votes
(``labelled_fraction=1``; a galaxy's votes are used only once it is acquired) and a known truth:

- Splits, per seed: ``n_test`` galaxies drawn at random are the test set, never trained on and never acquired (they
  are in ``known_votes``); ``n_initial`` more drawn at random are the initial labelled set; the rest is the pool.
  The same seed gives the same test and initial sets to every strategy.
- Round 0 trains once per seed on the initial set; every strategy acquires its first ``top_k`` from that one
  catalogue, so all curves of a seed start from the same model. Then each strategy runs ``n_rounds`` rounds of
  acquire ``top_k`` -> reveal -> merge -> retrain -> rescore.
- Every round retrains from the same start (the pretrained checkpoint, or a fresh random encoder), not from the
  previous round's model, as Walmsley et al. (2020, MNRAS 491, 1554) retrain each round: a round's model depends
  only on its labelled set, not on the path that led to it. The training seed is the experiment seed.
- Measured after every round (:func:`evaluate_catalogue`, from the catalogue's columns): the test NLL (Dirichlet-
  Multinomial of the volunteers' votes given the catalogue's concentrations, summed over questions, mean over the
  test galaxies that were scored; their set does not depend on the model) with its standard error, and the accuracy
  on one question (most likely answer by the expected vote fractions against the truth's most likely answer) over
  test galaxies whose true answer is clear (true probability >= ``clear_threshold``).
- The start. From scratch, resnet18 at 64 px on 100-400 random labels stays worse than the best constant model
  (test NLL 36.4, 33.6, 34.4 against 33.1-33.2, measured while building this): with a few hundred labels a fresh
  encoder learns only population means, so no acquisition function could show anything. An encoder pretrained on
  many labels of the same distribution would leave extra labels little to teach. So the benchmark pretrains once, on
  the votes of 1000 galaxies of a separate simulated release (other seed, none of the experiment's galaxies), and
  every round finetunes a new Dirichlet head plus the top encoder block (``n_blocks=1``) from it, 10 epochs. Measured
  on random labels: test NLL 33.9 with 100 labels, 33.0 with 300, 32.3 with 500 (constant model 33.0-33.2; the
  pretrained model itself 32.1): labels matter over the whole range the experiment covers.
- Strategies (:class:`Strategy`, :func:`preset_strategies`) differ only in how a round ranks: acquisition function,
  sampling mode (top K, or a stochastic batch drawn in proportion to ``score**beta``), random fraction, answer
  exclusions, question weights. A round's draws are seeded by ``1000 * seed + round``: fresh noise every round, as
  stochastic batch acquisition draws anew at every acquisition.
- Sizes (the benchmark's defaults): 1000 test galaxies, 100 initial, K = 100 per round, 4 rounds (100 -> 500 labels),
  a pool of 10,000, 5 strategies, 5 seeds: 105 finetune + export + score rounds after the pretraining (run times in
  ``benchmarks/README.md``).

Output of :func:`run_experiment` (every file replaced atomically after every round, so a killed run keeps what it
measured): ``results.parquet`` (one row per seed, strategy and round; :func:`result_columns`), ``acquired.parquet``
(every acquired galaxy with its rank, score, driving question and true kind, for looking at what each acquisition
function picks) and ``experiment.json`` (the configuration and the splits' sizes). Work files live under
``out_dir/seed_{seed}/``; model checkpoints and packages are deleted after scoring unless ``keep_models``.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from zoobot_pipeline import __version__
from zoobot_pipeline.active.acquisition import available_acquisitions
from zoobot_pipeline.active.batch_sampling import STRATEGY_SHORTHANDS
from zoobot_pipeline.active.exclusions import NOT_GALAXY_ANSWERS
from zoobot_pipeline.active.ranking import rank_catalogue
from zoobot_pipeline.active.votes_merge import merge_votes
from zoobot_pipeline.catalogue import read_catalogue
from zoobot_pipeline.cycle import RoundConfig, TrainedModel, train_and_score
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.io import write_json_atomic, write_parquet_atomic
from zoobot_pipeline.models import ModelConfig, TrainingConfig
from zoobot_pipeline.schemas import Schema, get_schema
from zoobot_pipeline.stats import dirichlet_multinomial_nll

__all__ = [
    "DEFAULT_ROUND", "PRESET_NAMES", "RESULT_COLUMNS", "ExperimentConfig", "RoundResult", "Strategy",
    "evaluate_catalogue", "galaxy_nll", "preset_strategies", "result_columns", "reveal_votes", "run_experiment",
    "run_round",
]

RESULT_COLUMNS = (
    "seed", "strategy", "round", "n_labelled", "test_nll", "test_nll_se", "accuracy", "n_test", "n_clear",
    "best_epoch", "train_seconds", "score_seconds",
)


def result_columns(schema: Schema) -> list[str]:
    """The columns of ``results.parquet``: :data:`RESULT_COLUMNS`, then each question's test NLL ``nll_{question}``."""
    return [*RESULT_COLUMNS, *(f"nll_{q.name}" for q in schema.questions)]


RESULTS_FILE = "results.parquet"
ACQUIRED_FILE = "acquired.parquet"
EXPERIMENT_JSON = "experiment.json"
_TRUTH_COLUMNS = ("kind", "mag_r", "r50_arcsec", "visibility")

DEFAULT_ROUND = RoundConfig(model=ModelConfig(architecture="resnet18", input_size=64),
                            preprocessing=PreprocessingConfig.gz_decals(input_size=64),
                            training=TrainingConfig(epochs=10, batch_size=32, patience=4))
"""Every round's training when the experiment is not told otherwise: resnet18 at 64 px from scratch, 10 epochs."""


class Strategy(BaseModel):
    """How one curve of the experiment acquires: the options it passes to
    :func:`~zoobot_pipeline.active.ranking.rank_catalogue` (acquisition function, sampling mode, ``beta``, random
    fraction, answer exclusions, question weights, strata), under a name of its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    acquisition: str = "mutual_information"
    sampling: str = "top_k"
    beta: float = Field(default=1.0, gt=0)
    random_fraction: float = Field(default=0.0, ge=0, lt=1)
    exclude_answers: tuple[str, ...] = ()
    weights: dict[str, float] | None = None
    stratify_by: tuple[str, ...] = ()

    def rank_options(self) -> dict[str, Any]:
        """Keyword arguments of ``rank_catalogue`` for this strategy."""
        return {"acquisition": self.acquisition, "sampling": self.sampling, "beta": self.beta,
                "random_fraction": self.random_fraction, "exclude_answers": self.exclude_answers,
                "weights": self.weights, "stratify_by": self.stratify_by}


PRESET_NAMES = ("random", "topk_bald", "power_bald", "power_bald_curated", "targeted")


def preset_strategies(schema_name: str, targeted_question: str) -> dict[str, Strategy]:
    """The strategies the benchmark compares, by name: ``random``; ``topk_bald`` (the top K of mutual information);
    ``power_bald`` (Kirsch et al.'s stochastic batch, beta 1, their recommended default); ``power_bald_curated``
    (power BALD + excluding what the model calls star/artefact (>= 0.5) + 20% random, as Galaxy Zoo mixes random
    galaxies in); ``targeted`` (the curated strategy with ``targeted_question``'s term weighted 5x, the others 1). The
    production default is the general-purpose one the benchmark shows best (``al_summary.choose_default``)."""
    not_galaxy = tuple(f"{answer}>=0.5" for answer in NOT_GALAXY_ANSWERS.get(schema_name, ()))
    curated = {"acquisition": "mutual_information", "sampling": "power", "beta": 1.0, "random_fraction": 0.2,
               "exclude_answers": not_galaxy}
    questions = [q.name for q in get_schema(schema_name).questions]
    return {
        "random": Strategy(name="random", acquisition="random"),
        "topk_bald": Strategy(name="topk_bald"),
        "power_bald": Strategy(name="power_bald", sampling="power"),
        "power_bald_curated": Strategy(name="power_bald_curated", **curated),
        "targeted": Strategy(name="targeted", **curated,
                             weights={q: 5.0 if q == targeted_question else 1.0 for q in questions}),
    }


class ExperimentConfig(BaseModel):
    """The label-efficiency experiment's design (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategies: tuple[Strategy, ...] = (Strategy(name="topk_bald"), Strategy(name="random", acquisition="random"))
    seeds: tuple[int, ...] = (0, 1, 2)
    n_test: int = Field(default=500, ge=1)
    n_initial: int = Field(default=100, ge=2)
    top_k: int = Field(default=100, ge=1)
    n_rounds: int = Field(default=4, ge=1)
    question: str = "smooth-or-featured-dr5"
    targeted_question: str | None = None
    clear_threshold: float = Field(default=0.7, gt=0, le=1)
    keep_models: bool = False
    round: RoundConfig = DEFAULT_ROUND

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        names = [s.name for s in self.strategies]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"strategies must have distinct names and be at least one, got {names}")
        known = (*available_acquisitions(), *STRATEGY_SHORTHANDS)
        unknown = [s.acquisition for s in self.strategies if s.acquisition not in known]
        if unknown:
            raise ValueError(f"strategies: unknown acquisition {unknown[0]!r}; known: {', '.join(known)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        try:
            for question in (self.question, self.targeted_question or self.question):
                get_schema(self.round.schema_name).question(question)
        except KeyError as err:
            raise ValueError(str(err.args[0])) from None
        return self


@dataclass(frozen=True)
class RoundResult:
    """One round: the queue it sent out, the labelled set after merging the votes, and the retrained model."""

    queue: pa.Table
    labelled: Path
    model: TrainedModel


def reveal_votes(queue: pa.Table, oracle_votes: str | Path, out: str | Path, schema: Schema) -> Path:
    """Write the votes of the queued galaxies, taken from ``oracle_votes``, to ``out`` (the experiment's stand-in for
    Galaxy Zoo); a queued galaxy without votes there is an error."""
    votes = read_votes(oracle_votes, schema)
    ids = queue.column("id_str").combine_chunks()
    taken = votes.filter(pc.is_in(votes.column("id_str"), value_set=ids))
    if taken.num_rows != len(ids):
        missing = sorted(set(ids.to_pylist()) - set(taken.column("id_str").to_pylist()))
        raise ValueError(f"{oracle_votes}: no votes for queued galaxies {', '.join(missing[:5])}")
    return write_parquet_atomic(taken, out)


def run_round(release_dir: str | Path, catalogue: str | Path, labelled_votes: str | Path, round_dir: str | Path,
              config: RoundConfig, *, strategy: Strategy, top_k: int, queue_dir: str | Path,
              known_votes: str | Path | None, get_votes: Callable[[pa.Table, Path], Path],
              seed: int = 0, acquisition_seed: int | None = None) -> RoundResult:
    """Rank ``catalogue`` (the latest model's) into ``queue_dir`` as ``strategy`` says, get the queue's votes with
    ``get_votes(queue, path)``, merge them into ``labelled_votes`` as ``round_dir/labelled.parquet``, then
    :func:`~zoobot_pipeline.cycle.train_and_score` in ``round_dir``. Galaxies with votes in ``known_votes`` and
    galaxies queued before are never queued. ``seed`` seeds the training, ``acquisition_seed`` (default ``seed``) the
    acquisition's draws."""
    round_dir = Path(round_dir)
    queue = rank_catalogue(catalogue, top_k, exclude_votes=known_votes, min_votes=1, schema=config.schema_name,
                           queue_dir=queue_dir, seed=seed if acquisition_seed is None else acquisition_seed,
                           **strategy.rank_options())
    new_votes = get_votes(queue, round_dir / "new_votes.parquet")
    labelled = round_dir / "labelled.parquet"
    merge_votes(labelled_votes, new_votes, labelled, config.schema_name)
    return RoundResult(queue, labelled, train_and_score(release_dir, labelled, round_dir, config, seed))


def galaxy_nll(catalogue: str | Path, votes: pa.Table, schema: Schema) -> pa.Table:
    """``id_str``, ``nll`` (Dirichlet-Multinomial, summed over questions) and ``nll_{question}`` of the galaxies of
    ``votes`` that the catalogue scored, from its concentration columns."""
    columns = ["id_str", "flag", *(f"{c}_concentration" for c in schema.label_cols)]
    table = read_catalogue(catalogue, columns=columns)
    table = table.filter(pc.and_(pc.is_null(table["flag"]), pc.is_in(table["id_str"], value_set=votes["id_str"])))
    counts = vote_matrix(votes.take(pc.index_in(table["id_str"], value_set=votes["id_str"])), schema)
    concentrations = np.stack([table[f"{c}_concentration"].to_numpy() for c in schema.label_cols], axis=1)
    nll = dirichlet_multinomial_nll(counts, concentrations, schema)
    return pa.table({"id_str": table["id_str"], "nll": nll.sum(axis=1),
                     **{f"nll_{q.name}": nll[:, q.index] for q in schema.questions}})


def evaluate_catalogue(catalogue: str | Path, test_votes: pa.Table, truth: pa.Table, schema: Schema, question: str,
                       clear_threshold: float = 0.7) -> dict[str, float]:
    """Test NLL (:func:`galaxy_nll`; mean and standard error over scored test galaxies), each question's own test NLL
    (``nll_{question}``, mean) and ``question``'s accuracy (most likely answer by expected vote fractions against the
    truth's) on test galaxies with a clear true answer."""
    nll = galaxy_nll(catalogue, test_votes, schema)
    q = schema.question(question)
    fractions = read_catalogue(catalogue, columns=["id_str", *(f"{c}_fraction" for c in q.label_cols)])
    fractions = fractions.take(pc.index_in(nll["id_str"], value_set=fractions["id_str"]))
    predicted = np.stack([fractions[f"{c}_fraction"].to_numpy() for c in q.label_cols], axis=1)
    true = truth.take(pc.index_in(nll["id_str"], value_set=truth["id_str"]))
    true_p = np.stack([true[f"p_{c}"].to_numpy() for c in q.label_cols], axis=1)
    clear = true_p.max(axis=1) >= clear_threshold
    correct = predicted[clear].argmax(axis=1) == true_p[clear].argmax(axis=1)
    values = nll["nll"].to_numpy()
    return {"test_nll": float(values.mean()), "test_nll_se": float(values.std(ddof=1) / np.sqrt(len(values))),
            "accuracy": float(correct.mean()) if clear.any() else float("nan"), "n_test": len(values),
            "n_clear": int(clear.sum()),
            **{f"nll_{q.name}": float(np.mean(nll[f"nll_{q.name}"].to_numpy())) for q in schema.questions}}


@dataclass
class _Records:
    """What the experiment has measured so far, written out after every round."""

    out_dir: Path
    truth: pa.Table
    schema: Schema
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    acquired: list[pa.Table] = field(default_factory=list)

    def add_row(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.write()

    def add(self, seed: int, strategy: str, round_: int, n_labelled: int, metrics: dict[str, float],
            model: TrainedModel, queue: pa.Table) -> None:
        self.rows.append({"seed": seed, "strategy": strategy, "round": round_, "n_labelled": n_labelled, **metrics,
                          "best_epoch": model.best_epoch, "train_seconds": model.train_seconds,
                          "score_seconds": model.score_seconds})
        picked = queue.select(["rank", "id_str", "acquisition", "top_question", "picked_by"])
        truth = self.truth.take(pc.index_in(picked["id_str"], value_set=self.truth["id_str"]))
        n = picked.num_rows
        columns = {"seed": pa.array([seed] * n, pa.int64()), "strategy": pa.array([strategy] * n),
                   "round": pa.array([round_] * n, pa.int64())}
        self.acquired.append(pa.table({**columns, **{c: picked[c] for c in picked.column_names},
                                       **{c: truth[c] for c in _TRUTH_COLUMNS}}))
        self.write()

    def write(self) -> None:
        write_parquet_atomic(pa.Table.from_pylist(self.rows).select(result_columns(self.schema)),
                             self.out_dir / RESULTS_FILE)
        if self.acquired:
            write_parquet_atomic(pa.concat_tables(self.acquired), self.out_dir / ACQUIRED_FILE)
        write_json_atomic(self.summary, self.out_dir / EXPERIMENT_JSON)


def _split(ids: list[str], n_test: int, n_initial: int, seed: int) -> tuple[list[str], list[str]]:
    """(test ids, initial labelled ids), drawn at random without overlap by ``seed``."""
    if n_test + n_initial >= len(ids):
        raise ValueError(f"{len(ids)} galaxies with votes cannot give {n_test} test and {n_initial} initial "
                         "galaxies and leave a pool")
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order[:n_test]], [ids[i] for i in order[n_test:n_test + n_initial]]


def _subset(votes: pa.Table, ids: list[str]) -> pa.Table:
    return votes.filter(pc.is_in(votes["id_str"], value_set=pa.array(ids, pa.string())))


def _finished_earlier(out_dir: Path, summary: dict[str, Any],
                      config: ExperimentConfig) -> tuple[list[dict[str, Any]], list[pa.Table]]:
    """Result rows and acquired galaxies of the (seed, strategy) curves an earlier run of the same experiment in
    ``out_dir`` finished; nothing if there was none. A different experiment there is an error."""
    path = out_dir / EXPERIMENT_JSON
    if not path.is_file() or not (out_dir / RESULTS_FILE).is_file():
        return [], []
    earlier = json.loads(path.read_text())
    earlier_config = ExperimentConfig.model_validate(earlier["config"]).model_dump(mode="json")  # newer defaults
    if earlier_config != summary["config"] or earlier["release"] != summary["release"]:
        raise ValueError(f"{out_dir} holds another experiment ({path} differs): use another folder")
    rows = pq.read_table(out_dir / RESULTS_FILE).to_pylist()
    complete = {key for key, n in Counter((r["seed"], r["strategy"]) for r in rows).items()
                if n == config.n_rounds + 1}
    rows = [r for r in rows if (r["seed"], r["strategy"]) in complete]
    if not (out_dir / ACQUIRED_FILE).is_file():
        return rows, []
    acquired = pq.read_table(out_dir / ACQUIRED_FILE).to_pylist()
    kept = [r for r in acquired if (r["seed"], r["strategy"]) in complete]
    return rows, [pa.Table.from_pylist(kept, schema=pq.read_schema(out_dir / ACQUIRED_FILE))] if kept else []


def _round_0_of(start_from: Path | None, summary: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Round-0 result rows by seed of the experiment in ``start_from`` (None: none); its release and settings apart
    from strategies and seeds must be this experiment's."""
    if start_from is None:
        return {}
    earlier = json.loads((start_from / EXPERIMENT_JSON).read_text())
    differs = [key for key in summary["config"] if key not in ("strategies", "seeds")
               and earlier["config"].get(key) != summary["config"][key]]
    if differs or earlier["release"] != summary["release"]:
        raise ValueError(f"{start_from} holds another experiment (differs in {differs or ['release']}): its round-0 "
                         "models cannot start this one")
    return {r["seed"]: r for r in pq.read_table(start_from / RESULTS_FILE).to_pylist() if r["round"] == 0}


def run_experiment(release_dir: str | Path, out_dir: str | Path, config: ExperimentConfig,
                   log: Callable[[str], None] = lambda message: None, start_from: str | Path | None = None) -> pa.Table:
    """Run every strategy for every seed on a simulated release (``votes.parquet`` with every source's votes,
    ``truth.parquet``) and return the results table (also written to ``out_dir``; see the module docstring).
    ``log`` gets one line per round. Resumes: in an ``out_dir`` where the same experiment was cut short, the
    (seed, strategy) curves it finished are kept, a seed's round-0 model is reused when its catalogue is there, and a
    curve cut short starts again from round 1. ``start_from``: the out_dir of an experiment with the same release and
    settings (other strategies or seeds) whose round-0 models (catalogue and measured row) this one starts from for
    the seeds both have: more strategies on the same start without training it again."""
    release_dir, out_dir = Path(release_dir), Path(out_dir)
    schema = get_schema(config.round.schema_name)
    oracle = release_dir / "votes.parquet"
    votes = read_votes(oracle, schema)
    truth = pq.read_table(release_dir / "truth.parquet")
    ids = votes["id_str"].to_pylist()
    sources = pq.read_table(release_dir / "sources.parquet", columns=["id_str"])["id_str"]
    without = pc.sum(pc.invert(pc.is_in(sources, value_set=votes["id_str"]))).as_py()
    if without:
        raise ValueError(f"{oracle}: {without} source(s) have no simulated votes; the experiment needs every source's "
                         "(simulate with labelled_fraction=1)")
    summary = {"config": config.model_dump(mode="json"), "release": str(release_dir.resolve()),
               "n_with_votes": len(ids), "n_pool": len(ids) - config.n_test - config.n_initial,
               "code_version": __version__}
    done, acquired = _finished_earlier(out_dir, summary, config)
    start_from = Path(start_from) if start_from is not None else None
    given_starts = _round_0_of(start_from, summary)
    records = _Records(out_dir, truth, schema, summary, list(done), acquired)

    def get_votes(queue: pa.Table, path: Path) -> Path:
        return reveal_votes(queue, oracle, path, schema)

    for seed in config.seeds:
        seed_dir = out_dir / f"seed_{seed}"
        test_ids, initial_ids = _split(ids, config.n_test, config.n_initial, seed)
        test_votes = _subset(votes, test_ids)
        initial = write_parquet_atomic(_subset(votes, initial_ids), seed_dir / "initial.parquet")
        known = write_parquet_atomic(_subset(votes, test_ids + initial_ids), seed_dir / "known_votes.parquet")

        def measure(model: TrainedModel, test_votes: pa.Table = test_votes) -> dict[str, float]:
            metrics = evaluate_catalogue(model.catalogue, test_votes, truth, schema, config.question,
                                         config.clear_threshold)
            if not config.keep_models:
                shutil.rmtree(model.checkpoint)
                shutil.rmtree(model.package)
            return metrics

        finished = {r["strategy"] for r in done if r["seed"] == seed}
        start_row = next((r for r in done if r["seed"] == seed and r["round"] == 0), None)
        if start_row is not None and (seed_dir / "round_0" / "catalogue").is_dir():
            start_catalogue = seed_dir / "round_0" / "catalogue"
            log(f"seed {seed} round 0: measured before ({', '.join(sorted(finished))} finished)")
        elif seed in given_starts and (start_from / f"seed_{seed}" / "round_0" / "catalogue").is_dir():
            start_row = given_starts[seed]
            start_catalogue = start_from / f"seed_{seed}" / "round_0" / "catalogue"
            log(f"seed {seed} round 0: {start_catalogue}, test NLL {start_row['test_nll']:.3f}")
        else:
            start = train_and_score(release_dir, initial, seed_dir / "round_0", config.round, seed)
            start_row = {"seed": seed, "round": 0, "n_labelled": config.n_initial, **measure(start),
                         "best_epoch": start.best_epoch, "train_seconds": start.train_seconds,
                         "score_seconds": start.score_seconds}
            start_catalogue = start.catalogue
            log(f"seed {seed} round 0: {config.n_initial} labelled, test NLL {start_row['test_nll']:.3f}, accuracy "
                f"{start_row['accuracy']:.3f} ({start.train_seconds + start.score_seconds:.0f} s)")
        for strategy in config.strategies:
            name = strategy.name
            if name in finished:
                continue
            if (seed_dir / name).exists():  # a strategy cut short: its rounds and queue history start again
                shutil.rmtree(seed_dir / name)
            records.add_row(start_row | {"strategy": name})
            catalogue, labelled = start_catalogue, initial
            for round_ in range(1, config.n_rounds + 1):
                result = run_round(release_dir, catalogue, labelled, seed_dir / name / f"round_{round_}",
                                   config.round, strategy=strategy, top_k=config.top_k,
                                   queue_dir=seed_dir / name / "queue", known_votes=known, get_votes=get_votes,
                                   seed=seed, acquisition_seed=1000 * seed + round_)
                catalogue, labelled = result.model.catalogue, result.labelled
                n_labelled = pq.read_metadata(labelled).num_rows
                metrics = measure(result.model)
                records.add(seed, name, round_, n_labelled, metrics, result.model, result.queue)
                log(f"seed {seed} {name} round {round_}: {n_labelled} labelled, test NLL "
                    f"{metrics['test_nll']:.3f}, accuracy {metrics['accuracy']:.3f} "
                    f"({result.model.train_seconds + result.model.score_seconds:.0f} s)")
    return pq.read_table(out_dir / RESULTS_FILE)
