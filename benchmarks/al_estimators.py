"""Which epistemic estimate singles out the galaxies a model predicts worst? The acquisition functions of the
label-efficiency experiment, computed several ways on the same round-0 models and test galaxies.

Run after (or beside) ``active_learning.py``, on its work folder (it reuses the release, the pretrained model and each
seed's initial labelled set and test set):
    .venv/bin/python benchmarks/al_estimators.py --work /work/al_run [--seeds 0 1 2] [--members 5] [--samples 50]

Per seed, ``--members`` models are finetuned exactly as the experiment's round 0 (same start, labels, configuration;
training seeds ``seed``, ``seed + 1000``, ...; the first is the experiment's own round-0 model) and exported. On the
seed's test galaxies (never trained on), with the first member's package:

- MC dropout with S = 5 (the package default), 20 and ``--samples`` masks (the first S of the same draws);
- a deep ensemble of the members, dropout off (the spread between independently finetuned heads and top blocks);
- the ensemble with S = 5 dropout masks each.

For each: BALD (vote-space mutual information weighted by the probability each question is asked, as the catalogue's
``acquisition`` column) and the predictive entropy (same weighting), and the Spearman correlation of each with the
per-galaxy excess NLL: the test NLL of the estimator's own predictive mean (summed over questions) minus the NLL of the
true answer probabilities (the volunteers' sampling noise no model can remove). A good acquisition function needs
high correlation with what the model gets wrong and can still learn; this measures the first half.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.stats import spearmanr

from zoobot_pipeline.cycle import RoundConfig
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.export import export_package
from zoobot_pipeline.models import finetune
from zoobot_pipeline.models.config import FinetuneConfig
from zoobot_pipeline.models.images import load_images
from zoobot_pipeline.runtime.session import PackageSession
from zoobot_pipeline.schemas import Schema, get_schema
from zoobot_pipeline.stats import (
    acquisition_score,
    dirichlet_multinomial_nll,
    expected_fractions,
    schema_vote_information,
)


def train_members(work: Path, seed: int, config: RoundConfig, members: int) -> list[Path]:
    """Packages of ``members`` round-0 models of ``seed`` (made once, reused by a rerun)."""
    release = Path(json.loads((work / "results" / "experiment.json").read_text())["release"])
    initial = work / "results" / f"seed_{seed}" / "initial.parquet"
    packages = []
    for member in range(members):
        out = work / "estimators" / f"seed_{seed}" / f"member_{member}"
        package = out / "package"
        if not (package / "model.json").is_file():
            training = config.training.model_copy(update={"seed": seed + 1000 * member})
            task = FinetuneConfig(task="dirichlet", schema_name=config.schema_name, n_blocks=config.n_blocks,
                                  dropout_rate=config.model.dropout_rate)
            checkpoint = finetune(config.pretrained, release, initial, out / "model", task, training,
                                  model_config=config.model, preprocessing=config.preprocessing, overwrite=True)
            export_package(checkpoint, package, mc_samples=config.mc_samples, n_volunteers=config.n_volunteers,
                           seed=seed, overwrite=True)
            shutil.rmtree(checkpoint)
        packages.append(package)
    return packages


def scores(alpha: np.ndarray, schema: Schema, n_volunteers: int, seed: int) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """(BALD, weighted predictive entropy, mean concentrations) of MC samples ``alpha`` (n, S, A)."""
    info = schema_vote_information(alpha, schema, n_volunteers, seed=seed)
    asked = schema.probability_asked(expected_fractions(alpha, schema))
    return (acquisition_score(info.mutual_information, asked), acquisition_score(info.predictive_entropy, asked),
            alpha.mean(axis=1))


def study_seed(work: Path, seed: int, config: RoundConfig, members: int, samples: int) -> list[dict]:
    """One row per estimator: its Spearman correlations and mean excess NLL on the seed's test galaxies."""
    schema = get_schema(config.schema_name)
    experiment = json.loads((work / "results" / "experiment.json").read_text())
    release = Path(experiment["release"])
    seed_dir = work / "results" / f"seed_{seed}"
    initial = pq.read_table(seed_dir / "initial.parquet", columns=["id_str"])["id_str"]
    known = read_votes(seed_dir / "known_votes.parquet", schema)
    test = known.filter(pc.invert(pc.is_in(known["id_str"], value_set=initial)))
    packages = train_members(work, seed, config, members)
    preprocessing = PreprocessingConfig.model_validate(
        json.loads((packages[0] / "model.json").read_text())["preprocessing"])
    images = load_images(release, test["id_str"].to_pylist(), vote_matrix(test, schema), preprocessing)
    truth = pq.read_table(release / "truth.parquet")
    true = truth.take(pc.index_in(images.ids, value_set=truth["id_str"]))
    p = np.stack([true[f"p_{c}"].to_numpy() for c in schema.label_cols], axis=1)
    truth_nll = dirichlet_multinomial_nll(images.targets, np.clip(p, 1e-9, None) * 1e9, schema).sum(axis=1)

    def predict(package: Path, n_samples: int) -> np.ndarray:
        session = PackageSession(package)
        return np.concatenate([session.predict(images.images[i:i + 256], images.ids[i:i + 256], n_samples, seed)
                               for i in range(0, len(images.ids), 256)]).astype(np.float64)

    mc = predict(packages[0], samples)
    off = np.concatenate([predict(package, 0) for package in packages], axis=1)
    ensemble_mc = np.concatenate([predict(package, config.mc_samples) for package in packages], axis=1)
    estimators = {f"MC dropout S={s}": mc[:, :s] for s in sorted({config.mc_samples, 20, samples})}
    estimators[f"ensemble of {members}, dropout off"] = off
    estimators[f"ensemble of {members} x MC S={config.mc_samples}"] = ensemble_mc
    rows = []
    for name, alpha in estimators.items():
        bald, entropy, concentrations = scores(alpha, schema, config.n_volunteers, seed)
        excess = dirichlet_multinomial_nll(images.targets, concentrations, schema).sum(axis=1) - truth_nll
        rows.append({"seed": seed, "estimator": name, "n": len(excess), "mean_excess_nll": float(excess.mean()),
                     "spearman_bald": float(spearmanr(bald, excess).statistic),
                     "spearman_entropy": float(spearmanr(entropy, excess).statistic)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="active_learning.py's --work folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    experiment = json.loads((args.work / "results" / "experiment.json").read_text())
    config = RoundConfig.model_validate(experiment["config"]["round"])
    started = time.perf_counter()
    rows = []
    for seed in args.seeds:
        rows += study_seed(args.work, seed, config, args.members, args.samples)
        print(f"[{time.perf_counter() - started:5.0f} s] seed {seed} done", flush=True)
    print(f"\nSpearman correlation with the per-galaxy excess test NLL (over the true probabilities), round-0 models "
          f"({config.model.architecture} {config.model.input_size} px, {experiment['config']['n_initial']} labels), "
          f"seeds {args.seeds}:")
    print(f"{'estimator':>34} {'BALD':>14} {'entropy':>14} {'excess NLL':>11}")
    for name in dict.fromkeys(r["estimator"] for r in rows):
        mine = [r for r in rows if r["estimator"] == name]
        line = [np.array([r[key] for r in mine]) for key in ("spearman_bald", "spearman_entropy", "mean_excess_nll")]
        print(f"{name:>34} " + " ".join(f"{v.mean():+7.3f} +-{v.std(ddof=1) if len(v) > 1 else 0:.3f}"
                                         for v in line[:2]) + f" {line[2].mean():>11.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
