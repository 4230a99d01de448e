"""Label efficiency of active learning: galaxies chosen by BALD (mutual information), top-K or drawn as a stochastic
batch (power BALD, with exclusions and a random fraction), against galaxies chosen at random.

Run: .venv/bin/python benchmarks/active_learning.py [--work DIR] [--png PATH] [--json PATH] [--seeds 0 1 2 3 4]
         [--strategies random topk_bald power_bald power_bald_curated targeted] [--pool 10000] [--test 1000]
     .venv/bin/python benchmarks/active_learning.py --analyse DIR     (print, plot and summarise a run again)
A rerun with the same --work resumes: the releases and the pretrained model are reused, finished curves kept.

1. Simulates a pretraining release (its own seed: none of the experiment's galaxies) and pretrains resnet18 at 64 px
   on its votes: the encoder every round starts from (why: ``al_experiment.py``'s docstring, beside this file).
2. Simulates the experiment's release (every source with simulated volunteer votes, revealed only when acquired)
   and runs ``al_experiment.run_experiment``: per seed a test set and an initial labelled set, then
   rounds of finetune -> export -> score the release -> acquire K -> reveal their votes -> merge, per strategy
   (``al_experiment.preset_strategies``).
3. Prints the test NLL and accuracy per strategy and number of labels (mean and standard deviation over seeds, and
   the paired difference to random), how many labels each strategy needs to reach random's test NLL (interpolated
   along the mean curves), whether the round-0 model's MI and entropy single out the test galaxies it predicts worst,
   per-question differences and what each strategy acquired; draws the curves into a PNG with matplotlib; writes the
   machine-readable verdict (``al_summary.summarise``: labels saved against random with paired 95% intervals over
   seeds, for the whole tree and per question) as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from al_experiment import PRESET_NAMES, ExperimentConfig, galaxy_nll, preset_strategies, run_experiment
from al_summary import summarise
from scipy.stats import spearmanr

from zoobot_pipeline import models
from zoobot_pipeline.active.acquisition import entropy, mutual_information
from zoobot_pipeline.catalogue import read_catalogue
from zoobot_pipeline.cycle import RoundConfig
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.io import atomic_path, write_json_atomic
from zoobot_pipeline.schemas import get_schema
from zoobot_pipeline.stats import dirichlet_multinomial_nll

COLOURS = {"random": "#285ac8", "topk_bald": "#c83c28", "power_bald": "#e08a1e", "power_bald_curated": "#289646",
           "targeted": "#8c3cb4"}
LABELS = {"random": "random", "topk_bald": "top-K BALD", "power_bald": "power BALD",
          "power_bald_curated": "power BALD + exclusions + 20% random", "targeted": "curated, one question weighted 5x"}



def curves(results: pa.Table, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per strategy: (labels, mean, std over seeds, values (seeds, rounds)) of ``metric``, rounds every seed
    finished."""
    out = {}
    rows = results.to_pylist()
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == strategy]
        seeds = sorted({r["seed"] for r in mine})
        n_rounds = min(sum(r["seed"] == s for r in mine) for s in seeds)
        values = np.array([[r[metric] for r in sorted((r for r in mine if r["seed"] == s), key=lambda r: r["round"])]
                           [:n_rounds] for s in seeds])
        labels = np.array(sorted({r["n_labelled"] for r in mine}))[:n_rounds]
        out[strategy] = (labels, values.mean(axis=0), values.std(axis=0, ddof=1) if len(seeds) > 1
                         else np.zeros(n_rounds), values)
    return out


def labels_to_reach(labels: np.ndarray, nll: np.ndarray, target: float) -> float | None:
    """Labels at which the piecewise-linear curve first reaches ``target`` NLL, or None if it never does."""
    if nll[0] <= target:
        return float(labels[0])
    for i in range(1, len(nll)):
        if nll[i] <= target:
            return float(labels[i - 1] + (nll[i - 1] - target) / (nll[i - 1] - nll[i]) * (labels[i] - labels[i - 1]))
    return None


def paired_difference(results: pa.Table, strategy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, mean, sd over seeds) of ``strategy``'s test NLL minus random's for the same seed (same test set and
    start)."""
    nll = curves(results, "test_nll")
    labels, _, _, values = nll[strategy]
    random_values = nll["random"][3]
    n = min(values.shape[1], random_values.shape[1])
    diff = values[:, :n] - random_values[:, :n]
    return labels[:n], diff.mean(axis=0), diff.std(axis=0, ddof=1) if len(diff) > 1 else np.zeros(n)


def _fewer(needed: float, labels: float) -> str:
    saving = 1 - needed / labels
    return f"{100 * saving:.0f}% fewer" if saving >= 0 else f"{-100 * saving:.0f}% more"


def print_efficiency(results: pa.Table, strategy: str) -> None:
    """How many labels ``strategy`` needs to reach random's test NLL at each of random's points, and a verdict from
    the paired difference after the last round."""
    nll = curves(results, "test_nll")
    if strategy not in nll or "random" not in nll:
        return
    labels, mean, _, values = nll[strategy]
    r_labels, r_mean, _, r_values = nll["random"]
    print(f"\nlabels {strategy} needs to reach random's mean test NLL (interpolated along the mean curves):")
    for n, target in zip(r_labels[1:], r_mean[1:], strict=True):
        if target >= r_mean[0]:
            said = "no comparison: random is not below the round-0 NLL here"
        else:
            needed = labels_to_reach(labels, mean, target)
            said = (f"{needed:.0f} ({_fewer(needed, n)})" if needed is not None
                    else f"not reached within {labels[-1]} labels")
        print(f"  random at {n} labels: NLL {target:.3f} -> {strategy}: {said}")
    shown = []
    for mine, theirs in zip(values, r_values, strict=True):
        needed = labels_to_reach(labels, mine, theirs[-1])
        shown.append("random not below start" if theirs[-1] >= theirs[0] else "not reached" if needed is None
                     else _fewer(needed, r_labels[-1]))
    print(f"  per seed, labels needed for random's NLL at {r_labels[-1]} labels: {', '.join(shown)}")
    _, diff, sd = paired_difference(results, strategy)
    se = sd[-1] / np.sqrt(len(values))
    verdict = ("(one seed: no verdict) vs random" if len(values) < 2 else "beats random" if diff[-1] < -2 * se
               else "is worse than random" if diff[-1] > 2 * se else "is not distinguishable from random")
    print(f"  after the last round {strategy} {verdict}: test NLL minus random's {diff[-1]:+.3f} +- {se:.3f} "
          f"(paired mean +- standard error over {len(values)} seeds)")


def print_table(results: pa.Table) -> None:
    nll, accuracy = curves(results, "test_nll"), curves(results, "accuracy")
    print(f"\n{'strategy':>20} {'labels':>6} {'test NLL (mean +- sd)':>22} {'minus random (paired)':>22} "
          f"{'accuracy':>16}")
    for strategy, (labels, mean, std, _) in nll.items():
        paired = paired_difference(results, strategy) if strategy != "random" and "random" in nll else None
        for i, n in enumerate(labels):
            shown = f"{paired[1][i]:+.3f} +- {paired[2][i]:.3f}" if paired is not None and i < len(paired[0]) else ""
            a_mean, a_std = accuracy[strategy][1][i], accuracy[strategy][2][i]
            print(f"{strategy:>20} {n:>6} {mean[i]:>13.3f} +- {std[i]:.3f} {shown:>22} {a_mean:>9.3f} +- {a_std:.3f}")


def print_informativeness(out: Path, release: Path, schema_name: str) -> None:
    """Spearman correlation, on test galaxies, between the round-0 model's acquisition scores and (a) its per-galaxy
    test NLL, (b) its excess NLL over the true answer probabilities (multinomial votes given the truth's ``p_``
    columns): (b) takes out the volunteers' sampling noise, which no model can predict, leaving how far the model is
    from the truth."""
    schema = get_schema(schema_name)
    truth = pq.read_table(release / "truth.parquet")
    print("\nround-0 models: do the scores single out the test galaxies predicted worst? Spearman correlation with the "
          "per-galaxy test NLL / with the excess NLL over the true probabilities:")
    for seed_dir in sorted(out.glob("seed_*")):
        catalogue = seed_dir / "round_0" / "catalogue"
        if not catalogue.is_dir():
            continue
        initial = pq.read_table(seed_dir / "initial.parquet", columns=["id_str"])["id_str"]
        known = read_votes(seed_dir / "known_votes.parquet", schema)
        test = known.filter(pc.invert(pc.is_in(known["id_str"], value_set=initial)))
        nll = galaxy_nll(catalogue, test, schema)
        counts = vote_matrix(test.take(pc.index_in(nll["id_str"], value_set=test["id_str"])), schema)
        true = truth.take(pc.index_in(nll["id_str"], value_set=truth["id_str"]))
        p = np.stack([true[f"p_{c}"].to_numpy() for c in schema.label_cols], axis=1)
        truth_nll = dirichlet_multinomial_nll(counts, np.clip(p, 1e-9, None) * 1e9, schema).sum(axis=1)
        excess = nll["nll"].to_numpy() - truth_nll
        table = read_catalogue(catalogue)
        table = table.take(pc.index_in(nll["id_str"], value_set=table["id_str"]))
        shown = []
        for name, score in (("mutual information", mutual_information(table)), ("entropy", entropy(table))):
            rho_nll = spearmanr(score, nll["nll"]).statistic
            rho_excess = spearmanr(score, excess).statistic
            shown.append(f"{name} {rho_nll:+.2f} / {rho_excess:+.2f}")
        print(f"  {seed_dir.name}: {', '.join(shown)} (n={nll.num_rows}; mean excess NLL {excess.mean():.2f})")


def print_per_question(out: Path, config: ExperimentConfig, seeds: list[int]) -> None:
    """Per question, each strategy's test NLL minus random's after the last round (mean over seeds)."""
    schema = get_schema(config.round.schema_name)
    last = f"round_{config.n_rounds}"
    diffs: dict[str, list[np.ndarray]] = {}
    for seed in seeds:
        seed_dir = out / f"seed_{seed}"
        initial = pq.read_table(seed_dir / "initial.parquet", columns=["id_str"])["id_str"]
        known = read_votes(seed_dir / "known_votes.parquet", schema)
        test = known.filter(pc.invert(pc.is_in(known["id_str"], value_set=initial)))
        per_question = {}
        names = [strategy.name for strategy in config.strategies]
        for strategy in names:
            nll = galaxy_nll(seed_dir / strategy / last / "catalogue", test, schema)
            per_question[strategy] = np.array([np.mean(nll[f"nll_{q.name}"].to_numpy()) for q in schema.questions])
        for strategy in names:
            if strategy != "random":
                diffs.setdefault(strategy, []).append(per_question[strategy] - per_question["random"])
    print(f"\nper question, test NLL minus random's after {config.n_rounds} rounds (mean over seeds, nats):")
    for strategy, values in diffs.items():
        mean = np.mean(values, axis=0)
        print(f"  {strategy}: " + ", ".join(f"{q.name} {v:+.3f}" for q, v in zip(schema.questions, mean, strict=True)))


def print_acquired(out: Path, release: Path) -> None:
    path = out / "acquired.parquet"
    if not path.is_file():
        return
    acquired = pq.read_table(path)
    truth = pq.read_table(release / "truth.parquet")
    kinds = sorted(set(truth["kind"].to_pylist()))
    print("\nwhat was acquired (share of each true kind, over seeds; the release as a whole for comparison):")
    print(f"{'':>20} " + " ".join(f"{k:>9}" for k in kinds) + f" {'mag_r':>6} {'r50':>5} {'visib.':>6}")

    def line(name: str, table: pa.Table) -> None:
        kind = np.asarray(table["kind"].to_pylist())
        shares = " ".join(f"{(kind == k).mean():>9.3f}" for k in kinds)
        print(f"{name:>20} {shares} {np.mean(table['mag_r'].to_numpy()):>6.2f} "
              f"{np.mean(table['r50_arcsec'].to_numpy()):>5.2f} {np.nanmean(table['visibility'].to_numpy()):>6.2f}")

    line("release", truth)
    for strategy in dict.fromkeys(acquired["strategy"].to_pylist()):
        mine = acquired.filter(pc.equal(acquired["strategy"], strategy))
        line(strategy, mine)
        for round_ in sorted(set(mine["round"].to_pylist())):
            line(f"round {round_}", mine.filter(pc.equal(mine["round"], round_)))
        if strategy != "random":
            top = mine["top_question"].value_counts().to_pylist()
            top = sorted(top, key=lambda v: -v["counts"])[:4]
            print(f"{'':>20} driving question: " + ", ".join(
                f"{v['values']} {v['counts'] / mine.num_rows:.2f}" for v in top))


def plot(results: pa.Table, png: Path, question: str) -> None:
    """Test NLL, its paired difference to random, and accuracy against labelled galaxies; mean and +-1 sd band over
    seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_seeds = len(set(results["seed"].to_pylist()))
    nll = {s: c[:3] for s, c in curves(results, "test_nll").items()}
    accuracy = {s: c[:3] for s, c in curves(results, "accuracy").items()}
    paired = {s: paired_difference(results, s) for s in nll if s != "random"} if "random" in nll else {}
    panels = [(nll, "test NLL per galaxy (nats)", "test NLL, summed over questions"),
              (paired, "test NLL minus random's (nats)", "test NLL minus random's, same seed"),
              (accuracy, "accuracy", f"accuracy, {question}\n(galaxies with a clear true answer)")]
    figure, axes = plt.subplots(1, 3, figsize=(16, 5), layout="constrained")
    for ax, (data, ylabel, title) in zip(axes, panels, strict=True):
        for strategy, (labels, mean, std) in data.items():
            colour = COLOURS.get(strategy, "grey")
            ax.fill_between(labels, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
            ax.plot(labels, mean, "o-", color=colour, label=LABELS.get(strategy, strategy))
        ax.set(xlabel="labelled galaxies", ylabel=ylabel, title=title, xticks=next(iter(data.values()))[0])
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    axes[1].axhline(0.0, color=COLOURS["random"], linewidth=1, linestyle="--")
    figure.suptitle(f"mean and +-1 sd over {n_seeds} seed(s); each seed has its own test set and initial labelled "
                    "set, shared by its strategies", fontsize=10, color="dimgrey")
    png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(png) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def print_summary(summary: dict, targeted_question: str | None) -> None:
    """The JSON's headline: labels each strategy saves against random at the final budget (paired 95% interval over
    seeds), whether it is ever worse than random beyond noise, and the targeted question's own saving."""
    print(f"\nlabels saved against random at {summary['budgets'][-1]} labels (mean over seeds {summary['seeds']}, "
          "paired 95% interval; 'extrapolated' seeds did not reach random's NLL within the budget):")
    for name, entry in summary["strategies"].items():
        if name == "random":
            continue
        saved = entry["labels_saved_vs_random_pct"]
        line = (f"  {name:>20}: {saved['value']:+6.1f}% [{saved['ci95'][0]:+.1f}, {saved['ci95'][1]:+.1f}]"
                f" (extrapolated {saved['seeds_extrapolated']}); never worse than random beyond noise: "
                f"{entry['never_worse_than_random']}")
        if targeted_question is not None:
            question = entry["per_question"][targeted_question]["labels_saved_vs_random_pct"]
            line += (f"; {targeted_question}: {question['value']:+.1f}% [{question['ci95'][0]:+.1f}, "
                     f"{question['ci95'][1]:+.1f}]")
        print(line)
    print(f"  default strategy (the general-purpose one never worse than random that saves most labels; random if none "
          f"saves any): {summary['default_strategy']}")


def analyse(out: Path, png: Path, json_path: Path) -> None:
    summary = json.loads((out / "experiment.json").read_text())
    config = ExperimentConfig.model_validate(summary["config"])
    names = [strategy.name for strategy in config.strategies]
    results = pq.read_table(out / "results.parquet")
    per_seed = len(names) * (config.n_rounds + 1)
    seeds = [s for s in config.seeds if results["seed"].to_pylist().count(s) == per_seed]
    results = results.filter(pc.is_in(results["seed"], value_set=pa.array(seeds, results["seed"].type)))
    print(f"\n{len(seeds)} of {len(config.seeds)} seeds finished; results of those:")
    if not seeds:
        return
    print_table(results)
    for name in names:
        if name != "random":
            print_efficiency(results, name)
    print_informativeness(out, Path(summary["release"]), config.round.schema_name)
    if "random" in names:
        print_per_question(out, config, seeds)
    print_acquired(out, Path(summary["release"]))
    plot(results, png, config.question)
    print(f"\nplot: {png}")
    if "random" not in names:
        return
    schema = get_schema(config.round.schema_name)
    targeted = config.targeted_question
    general = [s.name for s in config.strategies if s.weights is None]  # a science case's weights are not a default
    verdict = summarise(results.to_pylist(), names, [q.name for q in schema.questions], config.n_rounds, general,
                        extra={"pool": summary["n_pool"], "n_test": config.n_test, "n_initial": config.n_initial,
                               "top_k": config.top_k, "n_rounds": config.n_rounds, "targeted_question": targeted,
                               "strategy_options": {s.name: s.rank_options() for s in config.strategies},
                               "architecture": config.round.model.architecture,
                               "input_size": config.round.model.input_size, "mc_samples": config.round.mc_samples,
                               "code_version": summary["code_version"]})
    write_json_atomic(verdict, json_path)
    print_summary(verdict, targeted)
    print(f"\nsummary: {json_path}")


def simulated(path: Path, n_galaxies: int, n_tiles: int, seed: int) -> Path:
    """The simulated release at ``path`` (every source with votes), made once: a finished one of the same simulation
    is reused, so that a rerun in the same ``--work`` resumes where it stopped."""
    info = path / "release.json"
    if info.is_file():
        simulation = json.loads(info.read_text())["simulation"]
        if (simulation["seed"], simulation["n_galaxies"], simulation["n_tiles"]) != (seed, n_galaxies, n_tiles):
            raise SystemExit(f"{path} holds another simulation ({info}); use another --work")
        return path
    return simulate_release(path, n_galaxies, n_tiles, seed=seed, labelled_fraction=1.0, workers=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="folder for releases, models and results")
    parser.add_argument("--png", type=Path, default=None, help="default: WORK/active_learning.png")
    parser.add_argument("--analyse", type=Path, default=None, help="print and plot the results in this folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--strategies", nargs="+", default=list(PRESET_NAMES), choices=PRESET_NAMES,
                        help="strategies to compare (random is the reference)")
    parser.add_argument("--targeted-question", default="bar-dr5",
                        help="the question the 'targeted' strategy weights 5x")
    parser.add_argument("--pool", type=int, default=10_000, help="pool galaxies (the release minus test and initial)")
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--initial", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None, help="default: WORK/active_learning.json")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-blocks", default="1", help="encoder blocks unfrozen when finetuning (or 'all')")
    parser.add_argument("--pretrain-galaxies", type=int, default=1000)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--architecture", default="resnet18")
    args = parser.parse_args()
    if args.analyse is not None:
        analyse(args.analyse, args.png or args.analyse / "active_learning.png",
                args.json or args.analyse / "active_learning.json")
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="active-learning-"))
    started = time.perf_counter()
    preprocessing = PreprocessingConfig.gz_decals(input_size=args.size)
    model_config = models.ModelConfig.from_preprocessing(preprocessing, architecture=args.architecture)
    pre_release = simulated(work / "pretrain_release", args.pretrain_galaxies, 1, seed=1000)
    pretrained = work / "pretrained"
    if (pretrained / models.CHECKPOINT_JSON).is_file():
        print(f"reusing the pretrained model in {pretrained}", flush=True)
    else:
        models.pretrain(pre_release, pre_release / "votes.parquet", pretrained, model_config,
                        models.TrainingConfig(epochs=args.pretrain_epochs, batch_size=32, patience=5), preprocessing)
        print(f"pretrained {args.architecture} at {args.size} px on {args.pretrain_galaxies} other galaxies "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

    n_galaxies = args.pool + args.test + args.initial
    release = simulated(work / "release", n_galaxies, max(1, n_galaxies // 1000), seed=2000)
    round_config = RoundConfig(pretrained=pretrained, model=model_config, preprocessing=preprocessing,
                               training=models.TrainingConfig(epochs=args.epochs, batch_size=32, patience=4),
                               n_blocks=args.n_blocks if args.n_blocks == "all" else int(args.n_blocks))
    presets = preset_strategies(round_config.schema_name, args.targeted_question)
    config = ExperimentConfig(
        strategies=tuple(presets[name] for name in dict.fromkeys(["random", *args.strategies])),
        seeds=tuple(args.seeds), targeted_question=args.targeted_question, n_test=args.test, n_initial=args.initial,
        top_k=args.top_k, n_rounds=args.rounds, round=round_config)
    print(f"release: {n_galaxies} sources ({time.perf_counter() - started:.0f} s)", flush=True)
    run_experiment(release, work / "results", config, log=lambda line: print(
        f"[{time.perf_counter() - started:5.0f} s] {line}", flush=True))
    analyse(work / "results", args.png or work / "active_learning.png", args.json or work / "active_learning.json")
    print(f"total {time.perf_counter() - started:.0f} s; work folder {work}")


if __name__ == "__main__":
    main()
