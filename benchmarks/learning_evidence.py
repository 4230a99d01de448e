"""Evidence that the models learn, on a simulated release with known truth.

Run: .venv/bin/python benchmarks/learning_evidence.py [--galaxies 3000] [--size 64] [--architecture resnet18]
     [--frameworks torch tensorflow]

1. Pretrain on the volunteer votes of 80% of the labelled galaxies; on the other 20% compare the test NLL (summed over
   questions, mean over galaxies) with the best constant baseline: population-mean vote fractions with a maximum-
   likelihood total concentration per question. Also smooth-vs-featured accuracy on galaxies whose true answer is
   clear (true probability of smooth or of featured >= 0.7), against the majority-class rate.
2. Finetune on a few hundred labels of a new binary task from truth.parquet (``--finetune-task``: barred, spiral,
   edge_on or merger) from the pretrained encoder, and train the same architecture from scratch on the same labels;
   compare accuracy on held-out galaxies.
With ``--frameworks torch tensorflow`` both steps run with each framework on the same release, splits and labels,
and a table puts the figures side by side (the architecture must be one both build, e.g. efficientnet_b0).
Prints every figure; writes nothing outside --work.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zoobot_pipeline import models
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.schemas import get_schema
from zoobot_pipeline.stats import dirichlet_multinomial_nll, population_concentrations


def _split(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    order = np.random.default_rng(seed).permutation(len(ids))
    cut = int(round(len(ids) * (1 - fraction)))
    return [ids[i] for i in order[:cut]], [ids[i] for i in order[cut:]]


FRAMEWORKS = ("torch", "tensorflow")

BINARY_TASKS = {
    "barred": "strong or weak bar, among face-on featured galaxies",
    "spiral": "spiral arms, among face-on featured galaxies",
    "edge_on": "edge-on disc, among featured and edge-on galaxies",
    "merger": "merger, among all galaxies (not stars or artifacts)",
}


def _binary_task(truth: pa.Table, name: str) -> tuple[list[str], np.ndarray]:
    """Ids and boolean labels of a binary task defined on the simulation's truth (see ``BINARY_TASKS``)."""
    kind = truth["kind"].to_numpy(zero_copy_only=False)
    ids = truth["id_str"].to_numpy(zero_copy_only=False)
    if name == "barred":
        keep, positive = kind == "featured", truth["bar"].to_numpy(zero_copy_only=False) != "none"
    elif name == "spiral":
        keep, positive = kind == "featured", truth["n_arms"].to_numpy() > 0
    elif name == "edge_on":
        keep, positive = np.isin(kind, ["featured", "edge_on"]), kind == "edge_on"
    else:
        keep, positive = ~np.isin(kind, ["star", "artifact"]), kind == "merger"
    return ids[keep].tolist(), positive[keep]


def _write_subset(table: pa.Table, ids: list[str], path: Path) -> Path:
    pq.write_table(table.filter(pc.is_in(table["id_str"], value_set=pa.array(ids))), path)
    return path


def _pretraining_figures(framework: str, args: argparse.Namespace, work: Path, release: Path, train_votes: Path,
                         votes: pa.Table, test_ids: list[str], truth: pa.Table, model_config: models.ModelConfig,
                         preprocessing: PreprocessingConfig) -> tuple[Path, dict[str, float]]:
    """Step 1 for one framework: its pretrained checkpoint and figures (test NLL against the constant baseline,
    smooth-vs-featured accuracy on clear test galaxies)."""
    schema, tag = get_schema("decals_dr5"), _tag(framework, args)
    training = models.TrainingConfig(epochs=args.epochs, batch_size=64, lr=args.lr, patience=args.patience,
                                     seed=args.seed)
    t0 = time.perf_counter()
    checkpoint = models.pretrain(release, train_votes, work / _folder(framework, "pretrained"), model_config,
                                 training, preprocessing, framework=framework)
    seconds = time.perf_counter() - t0
    print(f"{tag}pretrained {args.architecture} at {args.size} px in {seconds:.0f} s")

    predictions = models.predict(checkpoint, release, test_ids)
    test_votes = votes.filter(pc.is_in(votes["id_str"], value_set=predictions["id_str"]))
    order = {id_str: i for i, id_str in enumerate(predictions["id_str"].to_pylist())}
    counts = vote_matrix(test_votes, schema)[np.argsort([order[i] for i in test_votes["id_str"].to_pylist()])]
    concentrations = np.stack([predictions[f"{c}_concentration"].to_numpy() for c in schema.label_cols], axis=1)
    baseline = np.broadcast_to(population_concentrations(vote_matrix(read_votes(train_votes, schema), schema),
                                                         schema), counts.shape)
    model_nll = dirichlet_multinomial_nll(counts, concentrations, schema).sum(axis=1).mean()
    base_nll = dirichlet_multinomial_nll(counts, baseline, schema).sum(axis=1).mean()
    print(f"{tag}test NLL per galaxy (summed over questions): model {model_nll:.2f}, constant baseline "
          f"{base_nll:.2f} ({100 * (1 - model_nll / base_nll):.1f}% lower), n={len(counts)}")

    truth_rows = {id_str: i for i, id_str in enumerate(truth["id_str"].to_pylist())}
    rows = [truth_rows[i] for i in predictions["id_str"].to_pylist()]
    p_smooth = truth["p_smooth-or-featured-dr5_smooth"].to_numpy()[rows]
    p_featured = truth["p_smooth-or-featured-dr5_featured-or-disk"].to_numpy()[rows]
    clear = (p_smooth >= 0.7) | (p_featured >= 0.7)
    truly_smooth = p_smooth[clear] > p_featured[clear]
    predicted_smooth = (predictions["smooth-or-featured-dr5_smooth_fraction"].to_numpy()[clear]
                        > predictions["smooth-or-featured-dr5_featured-or-disk_fraction"].to_numpy()[clear])
    accuracy = float((predicted_smooth == truly_smooth).mean())
    majority = max(truly_smooth.mean(), 1 - truly_smooth.mean())
    print(f"{tag}smooth vs featured on {clear.sum()} clear test galaxies: accuracy {accuracy:.3f} "
          f"(majority class {majority:.3f})")
    return checkpoint, {"pretrain_s": seconds, "model_nll": model_nll, "base_nll": base_nll,
                        "nll_lower_pct": 100 * (1 - model_nll / base_nll), "smooth_accuracy": accuracy,
                        "smooth_majority": majority}


def _finetuning_figures(framework: str, args: argparse.Namespace, work: Path, release: Path, checkpoint: Path,
                        labels: tuple[Path, Path, list[str], int], model_config: models.ModelConfig,
                        preprocessing: PreprocessingConfig) -> dict[str, float]:
    """Step 2 for one framework: held-out accuracy finetuned from its pretrained encoder and from scratch."""
    finetune_labels, all_labels, held_out, n_train = labels
    tag = _tag(framework, args)
    task = models.FinetuneConfig(task="classification", label_columns=("label",))
    finetune_training = models.TrainingConfig(epochs=args.epochs, batch_size=32, lr=1e-3, patience=5, seed=args.seed)
    figures = {}
    for name, base in (("pretrained encoder", checkpoint), ("from scratch", None)):
        t0 = time.perf_counter()
        out_dir = work / _folder(framework, f"{args.finetune_task}_{name.replace(' ', '_')}")
        out = models.finetune(base, release, finetune_labels, out_dir, task, finetune_training,
                              model_config=model_config, preprocessing=preprocessing, framework=framework)
        score = models.evaluate(out, release, all_labels, held_out)
        figures[name] = score["accuracy"]
        figures[f"{name} s"] = time.perf_counter() - t0
        print(f"{tag}{args.finetune_task} or not, {n_train} labels, {name}: held-out accuracy "
              f"{score['accuracy']:.3f} on {score['n']:.0f} galaxies ({figures[f'{name} s']:.0f} s)")
    return figures


def _tag(framework: str, args: argparse.Namespace) -> str:
    """What a printed line starts with: the framework's name when more than one runs."""
    return f"{framework}: " if len(args.frameworks) > 1 else ""


def _folder(framework: str, name: str) -> str:
    """The torch run keeps the folder names it always had; another framework's go beside them."""
    return name if framework == "torch" else f"{framework}_{name}"


def _print_table(args: argparse.Namespace, figures: dict[str, dict[str, float]], n_train: int,
                 positive_fraction: float) -> None:
    frameworks = list(figures)
    rows = [
        ("pretraining wall time (s)", "pretrain_s", "{:.0f}"),
        ("test NLL per galaxy, model", "model_nll", "{:.2f}"),
        ("test NLL per galaxy, constant baseline", "base_nll", "{:.2f}"),
        ("test NLL lower than the baseline (%)", "nll_lower_pct", "{:.1f}"),
        ("smooth vs featured accuracy, clear test galaxies", "smooth_accuracy", "{:.3f}"),
        ("  majority-class rate", "smooth_majority", "{:.3f}"),
        (f"{args.finetune_task}, {n_train} labels: finetuned from pretrained", "pretrained encoder", "{:.3f}"),
        (f"{args.finetune_task}, {n_train} labels: from scratch", "from scratch", "{:.3f}"),
        ("  finetuned minus from scratch", "finetune_gain", "{:+.3f}"),
        ("finetuning wall time, pretrained + scratch (s)", "finetune_s", "{:.0f}"),
    ]
    width = max(len(label) for label, _, _ in rows)
    print(f"\n{'':<{width}}  " + "  ".join(f"{f:>10}" for f in frameworks))
    for label, key, fmt in rows:
        print(f"{label:<{width}}  " + "  ".join(f"{fmt.format(figures[f][key]):>10}" for f in frameworks))
    print(f"(same release, splits and labels for every framework; {args.architecture} at {args.size} px; "
          f"held-out positive fraction {positive_fraction:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--galaxies", type=int, default=3000)
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--architecture", default="resnet18",
                        help="resnet18 learns these 1.5k 64-px images from scratch far better than efficientnet_b0 "
                             "(torch only: with tensorflow, use efficientnet_b0)")
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=["torch"],
                        help="run the protocol with each, on the same release and labels (default: torch)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--finetune-labels", type=int, default=300)
    parser.add_argument("--finetune-task", choices=sorted(BINARY_TASKS), default="edge_on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="folder for the release and checkpoints")
    args = parser.parse_args()
    frameworks = args.frameworks = [f for f in FRAMEWORKS if f in args.frameworks]
    if "tensorflow" in frameworks:
        import zoobot_pipeline.models.tensorflow  # noqa: F401  first: it loads triton before tensorflow (see there)
    preprocessing = PreprocessingConfig.gz_decals(input_size=args.size)
    model_config = models.ModelConfig.from_preprocessing(preprocessing, architecture=args.architecture)
    for framework in frameworks:  # before any work: every framework must build the architecture
        try:
            models.get_backend(framework).check_model(model_config)
        except ZoobotPipelineError as err:
            raise SystemExit(f"error: {err} (--frameworks {' '.join(frameworks)} needs an architecture that every "
                             "one of them builds, e.g. efficientnet_b0)") from None
    work = args.work or Path(tempfile.mkdtemp(prefix="learning-evidence-"))
    schema = get_schema("decals_dr5")
    started = time.perf_counter()

    release = simulate_release(work / "release", args.galaxies, args.tiles, seed=args.seed, labelled_fraction=0.8,
                               workers=2)
    votes = read_votes(release / "votes.parquet", schema)
    train_ids, test_ids = _split(votes["id_str"].to_pylist(), 0.2, args.seed)
    train_votes = _write_subset(votes, train_ids, work / "votes_train.parquet")
    print(f"release: {args.galaxies} sources, {len(train_ids)} train/val and {len(test_ids)} test labelled galaxies "
          f"({time.perf_counter() - started:.0f} s)")
    truth = pq.read_table(release / "truth.parquet")

    task_ids, positive = _binary_task(truth, args.finetune_task)
    labels = pa.table({"id_str": task_ids, "label": positive.astype(np.int64)})
    rng = np.random.default_rng(args.seed + 1)
    order = rng.permutation(len(task_ids))
    n_train = min(args.finetune_labels, len(task_ids) // 2)
    finetune_ids = [task_ids[i] for i in order[:n_train]]
    held_out = [task_ids[i] for i in order[n_train:]]
    finetune_labels = _write_subset(labels, finetune_ids, work / f"{args.finetune_task}_train.parquet")
    all_labels = _write_subset(labels, task_ids, work / f"{args.finetune_task}_all.parquet")

    figures: dict[str, dict[str, float]] = {}
    for framework in frameworks:
        checkpoint, figures[framework] = _pretraining_figures(framework, args, work, release, train_votes, votes,
                                                              test_ids, truth, model_config, preprocessing)
        tuned = _finetuning_figures(framework, args, work, release, checkpoint,
                                    (finetune_labels, all_labels, held_out, n_train), model_config, preprocessing)
        figures[framework].update(tuned, finetune_gain=tuned["pretrained encoder"] - tuned["from scratch"],
                                  finetune_s=tuned["pretrained encoder s"] + tuned["from scratch s"])
    positive_fraction = positive[order[n_train:]].mean()
    print(f"positive fraction among held-out: {positive_fraction:.3f}")
    if len(frameworks) > 1:
        _print_table(args, figures, n_train, positive_fraction)
    print(f"total {time.perf_counter() - started:.0f} s; work folder {work}")


if __name__ == "__main__":
    main()
