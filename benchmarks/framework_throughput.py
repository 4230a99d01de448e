"""Training throughput of the PyTorch and TensorFlow backends side by side (images/s), and their Ray scaling.

Run: .venv/bin/python benchmarks/framework_throughput.py [--architecture efficientnet_b0] [--size 224] [--batch 32]
     [--frameworks torch tensorflow] [--ray-workers 1 2]

1. The training step in this process, same architecture, same random in-memory images and vote counts for both
   frameworks (cutting and preprocessing excluded), fp32: forward + Dirichlet-Multinomial loss + backward + AdamW.
   torch: ``train_one_epoch`` (models/torch/train.py) on a channels_last model, as the torch loop runs it; TensorFlow:
   a ``tf.function`` step from ``build_model`` + ``model_loss`` + Keras AdamW, as models/tensorflow/train.py runs it.
   ``--warmup`` batches (tracing, allocator warm-up) are excluded; each step is timed and images/s is the batch over
   the median step (robust to another process taking a core for a while; the rate over all timed steps and the
   slowest step are printed beside it); then ``tensorflow / torch (training images/s)``.
2. With ``--ray-workers``, per framework and worker count, the public ``pretrain(..., workers=N)`` on a simulated
   release (default augmentations, batch ``--batch`` over all workers): per-epoch time = (wall(3 epochs) - wall(1
   epoch)) / 2, so start-up (imports, cutting, Ray Train workers) is excluded; training images/s over all workers
   (the epoch includes its validation pass) and the N-vs-first scaling ratio. ``workers=1`` trains in this process
   (what ``--workers 1`` means) unless ``--one-worker-on-ray``; more workers run on Ray Train, one CPU each, on a
   local Ray started once by this script. The release is sized so one epoch takes about ``--epoch-seconds`` at the
   in-process rate measured in part 1 (``--ray-galaxies`` to fix it). A configuration a backend refuses is printed as
   one line and the run goes on. Before the timed runs, one untimed 1-epoch pretrain per framework in this process
   takes the one-time costs (lazy imports, compiled kernels).
Writes nothing outside --work (default: a temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.errors import ZoobotPipelineError
from zoobot_pipeline.models import ModelConfig, TrainingConfig

FRAMEWORKS = ("torch", "tensorflow")


def _data(n: int, size: int, n_answers: int) -> tuple[np.ndarray, np.ndarray]:
    """The same random images (n, 3, size, size) in [0, 1) and vote counts (n, n_answers) for both frameworks."""
    rng = np.random.default_rng(0)
    return rng.random((n, 3, size, size), dtype=np.float32), rng.integers(0, 10, (n, n_answers)).astype(np.float32)


def _torch_steps(config: ModelConfig, batch: int, warmup: int, batches: int) -> list[float]:
    """Seconds of each timed training step of the torch backend."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from zoobot_pipeline.models.torch.model import build_model
    from zoobot_pipeline.models.torch.train import make_optimizer, schema_loss, train_one_epoch

    torch.manual_seed(0)
    model = build_model(config).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, TrainingConfig())
    loss = schema_loss(model.schema)
    images, votes = _data(batch * (warmup + batches), config.input_size, model.schema.n_answers)
    seconds = []
    for step in range(warmup + batches):  # one batch per train_one_epoch call, so that each step is timed
        rows = slice(step * batch, (step + 1) * batch)
        loader = DataLoader(TensorDataset(torch.from_numpy(images[rows]), torch.from_numpy(votes[rows])),
                            batch_size=batch)
        start = time.perf_counter()
        train_one_epoch(model, loader, optimizer, None, loss)
        seconds.append(time.perf_counter() - start)
    return seconds[warmup:]


def _tensorflow_steps(config: ModelConfig, batch: int, warmup: int, batches: int) -> list[float]:
    """Seconds of each timed training step of the TensorFlow backend."""
    import keras
    import tensorflow as tf

    from zoobot_pipeline.models.tensorflow.model import build_model
    from zoobot_pipeline.models.tensorflow.train import model_loss

    model = build_model(config, seed=0)
    loss_fn, net = model_loss(model), model.net
    defaults = TrainingConfig()
    variables = list(net.trainable_variables)
    optimizer = keras.optimizers.AdamW(learning_rate=defaults.lr, weight_decay=defaults.weight_decay, beta_1=0.9,
                                       beta_2=0.999, epsilon=1e-8)
    optimizer.build(variables)

    @tf.function(reduce_retracing=True)
    def train_step(images: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(net(images, training=True), targets)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    images, votes = _data(batch * (warmup + batches), config.input_size, model.schema.n_answers)
    seconds = []
    for step in range(warmup + batches):
        rows = slice(step * batch, (step + 1) * batch)
        start = time.perf_counter()
        float(train_step(tf.constant(images[rows]), tf.constant(votes[rows])))  # the loss, as the loop reads it
        seconds.append(time.perf_counter() - start)
    return seconds[warmup:]


def _set_threads(frameworks: list[str], threads: int | None) -> str:
    """Apply ``threads`` (None: each framework's own choice) before either framework runs; a description."""
    described = []
    if "tensorflow" in frameworks:
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        described.append(f"tensorflow {tf.__version__} intra-op threads "
                         f"{tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}")
    if "torch" in frameworks:
        import torch

        if threads:
            torch.set_num_threads(threads)
        described.append(f"torch {torch.__version__} threads {torch.get_num_threads()}")
    return ", ".join(described)


def _pretrain(framework: str, release: Path, out: Path, model: ModelConfig, preprocessing: PreprocessingConfig,
              batch: int, epochs: int, workers: int, ray_address: str | None) -> tuple[float, int]:
    """Wall seconds of ``pretrain`` and its number of training images per epoch (all workers)."""
    from zoobot_pipeline import models

    training = TrainingConfig(epochs=epochs, batch_size=batch, patience=epochs, seed=0)
    start = time.perf_counter()
    checkpoint = models.pretrain(release, release / "votes.parquet", out, model, training, preprocessing,
                                 workers=workers, ray_address=ray_address, framework=framework, overwrite=True)
    seconds = time.perf_counter() - start
    return seconds, int(models.read_checkpoint_json(checkpoint)["metrics"]["n_train"])


def _ray_scaling(args: argparse.Namespace, model: ModelConfig, preprocessing: PreprocessingConfig,
                 rates: dict[str, float], work: Path) -> None:
    import ray

    from zoobot_pipeline.data.synthetic.simulate import simulate_release

    val_fraction = TrainingConfig().val_fraction
    n = args.ray_galaxies or max(4 * args.batch, round(args.epoch_seconds * float(np.mean(list(rates.values())))
                                                       / (1 - val_fraction)))
    started = time.perf_counter()
    release = simulate_release(work / "release", n, max(1, n // 200), seed=0, labelled_fraction=1.0, workers=2)
    print(f"Ray scaling: pretrain(workers=N) on a simulated release of {n} sources (batch {args.batch} over all "
          f"workers, default augmentations, images/s = training images per epoch / epoch), per-epoch time = "
          f"(wall(3 epochs) - wall(1 epoch)) / 2 ({time.perf_counter() - started:.0f} s to simulate)")
    cpus = max(max(args.ray_workers), 2)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    try:
        for framework in args.frameworks:
            # untimed: the first pretrain in this process pays one-time costs (lazy imports, compiled kernels)
            _pretrain(framework, release, work / f"{framework}-warm-up", model, preprocessing, args.batch, 1, 1, None)
            scaled: dict[int, float] = {}
            for workers in args.ray_workers:
                on_ray = workers > 1 or args.one_worker_on_ray
                where = f"{workers} worker(s), {'Ray Train' if on_ray else 'in process'}"
                try:
                    runs = [_pretrain(framework, release, work / f"{framework}-{workers}-{epochs}", model,
                                      preprocessing, args.batch, epochs, workers, address if on_ray else None)
                            for epochs in (1, 3)]
                except ZoobotPipelineError as err:
                    print(f"  {framework:<10} {where:<32} refused: {err}")
                    continue
                (one, _), (three, n_train) = runs
                epoch = (three - one) / 2
                walls_text = f"{n_train} training images, wall 1 epoch {one:.1f} s, 3 epochs {three:.1f} s"
                if epoch <= 0:
                    print(f"  {framework:<10} {where:<32} not measurable ({walls_text}): use a larger release")
                    continue
                scaled[workers] = n_train / epoch
                print(f"  {framework:<10} {where:<32} {epoch:7.1f} s/epoch {scaled[workers]:8.1f} images/s "
                      f"({walls_text})")
            first = args.ray_workers[0]
            for workers in args.ray_workers[1:]:
                if first in scaled and workers in scaled:
                    print(f"  {framework} scaling {workers} vs {first} worker(s) (training images/s): "
                          f"{scaled[workers] / scaled[first]:.2f}")
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    parser.add_argument("--architecture", default="efficientnet_b0", help="one both frameworks build")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="batches run first and not timed")
    parser.add_argument("--batches", type=int, default=6, help="timed batches")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of each framework (default: theirs)")
    parser.add_argument("--ray-workers", type=int, nargs="*", default=[], help="e.g. 1 2: pretrain with N workers")
    parser.add_argument("--one-worker-on-ray", action="store_true", help="run workers=1 on Ray Train too")
    parser.add_argument("--epoch-seconds", type=float, default=30.0, help="target epoch time of the Ray release")
    parser.add_argument("--ray-galaxies", type=int, default=None, help="sources of the Ray release (default: sized)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the release and checkpoints")
    args = parser.parse_args()
    args.frameworks = [f for f in FRAMEWORKS if f in args.frameworks]  # torch first, whatever the order given
    if "tensorflow" in args.frameworks:
        import zoobot_pipeline.models.tensorflow  # noqa: F401  first: it loads triton before tensorflow (see there)
    threads = _set_threads(args.frameworks, args.threads)
    preprocessing = PreprocessingConfig.gz_decals(input_size=args.size)
    config = ModelConfig.from_preprocessing(preprocessing, architecture=args.architecture)
    print(f"{args.architecture} at {args.size} px, batch {args.batch}, fp32, {args.warmup} warm-up + {args.batches} "
          f"timed batches, CPU; {threads}")
    rates: dict[str, float] = {}
    measure = {"torch": _torch_steps, "tensorflow": _tensorflow_steps}
    for framework in args.frameworks:
        try:
            seconds = measure[framework](config, args.batch, args.warmup, args.batches)
        except ZoobotPipelineError as err:
            print(f"  {framework:<10} refused: {err}")
            continue
        rates[framework] = args.batch / float(np.median(seconds))
        print(f"  {framework:<10} training step {rates[framework]:8.1f} images/s (median step; over all timed steps "
              f"{args.batch * len(seconds) / sum(seconds):.1f}, slowest step {max(seconds):.2f} s)")
    if len(rates) == 2:
        print(f"tensorflow / torch (training images/s): {rates['tensorflow'] / rates['torch']:.2f}")
    if args.ray_workers and rates:
        work = args.work or Path(tempfile.mkdtemp(prefix="framework-throughput-"))
        try:
            _ray_scaling(args, config, preprocessing, rates, work)
        finally:
            if args.work is None:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
