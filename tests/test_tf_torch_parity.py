"""Parity of the two backends on one release (issue 12): a tiny torch and a tiny TensorFlow model, each pretrained for
one epoch on the same simulated release and exported to a package, score it into catalogues with the same columns,
types and rows; and the same preprocessed arrays reach both backends' data paths, in training and in prediction."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("zoobot_pipeline.models.tensorflow")  # first: it loads triton before tensorflow (see there)
pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

import zoobot_pipeline.models.images as shared_images  # noqa: E402
from zoobot_pipeline.catalogue import read_catalogue  # noqa: E402
from zoobot_pipeline.data.preprocessing import PreprocessingConfig  # noqa: E402
from zoobot_pipeline.data.synthetic.simulate import simulate_release  # noqa: E402
from zoobot_pipeline.export import export_package  # noqa: E402
from zoobot_pipeline.models import (  # noqa: E402
    ModelConfig,
    TrainingConfig,
    get_backend,
    load_checkpoint,
    predict,
    pretrain,
)
from zoobot_pipeline.schemas import get_schema  # noqa: E402
from zoobot_pipeline.scoring.pipeline import score_release  # noqa: E402

pytestmark = pytest.mark.tensorflow
FRAMEWORKS = ("torch", "tensorflow")
PREPROCESSING = PreprocessingConfig.gz_decals(input_size=32)
MODEL = ModelConfig.from_preprocessing(PREPROCESSING, architecture="test_resnet")
TRAINING = TrainingConfig(epochs=1, batch_size=16, seed=0, augmentation=None)


class LoadRecorder:
    """Records what the shared loader (``models.images.load_images``, which ``load_labelled_images`` and the
    prediction helpers call too) returns while each phase runs: ``calls[(framework, step)]``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.phase: tuple[str, str] | None = None
        self.calls: dict[tuple[str, str], list] = {}
        original = shared_images.load_images
        for framework in FRAMEWORKS:  # the backends' modules are loaded, with the names they import
            get_backend(framework)

        def recorded(*args, **kwargs):
            data = original(*args, **kwargs)
            self.calls.setdefault(self.phase, []).append(data)
            return data

        for name, module in list(sys.modules.items()):  # modules imported later take the patched name from images
            if name.startswith("zoobot_pipeline.") and getattr(module, "load_images", None) is original:
                monkeypatch.setattr(module, "load_images", recorded)

    def only(self, framework: str, step: str):
        """The one array set that the phase loaded."""
        calls = self.calls.get((framework, step), [])
        assert len(calls) == 1, (framework, step, len(calls))
        return calls[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One simulated release; per framework the pretrained checkpoint, its package, the catalogue it scores and its
    predictions for every source; and what the shared loader returned in each framework's pretraining and
    prediction."""
    root = tmp_path_factory.mktemp("parity")
    release = simulate_release(root / "release", 48, 1, tile_size=512, seed=3, labelled_fraction=1.0)
    out: dict = {"release": release}
    with pytest.MonkeyPatch.context() as monkeypatch:
        loads = out["loads"] = LoadRecorder(monkeypatch)
        for framework in FRAMEWORKS:
            loads.phase = (framework, "pretrain")
            checkpoint = pretrain(release, release / "votes.parquet", root / f"{framework}_ckpt", MODEL, TRAINING,
                                  PREPROCESSING, framework=framework)
            loads.phase = (framework, "predict")
            predictions = predict(checkpoint, release)
            loads.phase = None
            package = export_package(checkpoint, root / f"{framework}_pkg", mc_samples=2)
            catalogue = score_release(release, package, root / f"{framework}_cat", progress=False).out_dir
            out[framework] = {"checkpoint": checkpoint, "catalogue": read_catalogue(catalogue),
                              "predictions": predictions}
    return out


def test_both_catalogues_have_the_same_columns_types_and_rows(runs):
    torch_cat, tf_cat = runs["torch"]["catalogue"], runs["tensorflow"]["catalogue"]
    assert [(f.name, f.type) for f in torch_cat.schema] == [(f.name, f.type) for f in tf_cat.schema]
    torch_ids, tf_ids = torch_cat["id_str"].to_pylist(), tf_cat["id_str"].to_pylist()
    assert len(torch_ids) == len(set(torch_ids)) > 30 and sorted(torch_ids) == sorted(tf_ids)
    schema = get_schema("decals_dr5")
    for table in (torch_cat, tf_cat):
        for question in schema.questions:
            fractions = np.stack([table[f"{label}_fraction"].to_numpy() for label in question.label_cols], axis=1)
            assert np.all((fractions >= 0) & (fractions <= 1)), question.name
            np.testing.assert_allclose(fractions.sum(axis=1), 1.0, atol=1e-5, err_msg=question.name)


def test_the_same_preprocessed_arrays_reach_both_backends(runs):
    loads = runs["loads"]
    for step in ("pretrain", "predict"):  # pretraining reads the voted galaxies, prediction every source
        torch_data, tf_data = loads.only("torch", step), loads.only("tensorflow", step)
        assert torch_data.ids == tf_data.ids and len(torch_data.ids) > 30
        assert torch_data.images.dtype == tf_data.images.dtype == np.float32
        assert torch_data.images.shape == tf_data.images.shape == (len(torch_data.ids), 3, 32, 32)
        np.testing.assert_array_equal(torch_data.images, tf_data.images)
        np.testing.assert_array_equal(torch_data.targets, tf_data.targets)
    # and they are what each model was given: its predictions are its own network applied to these arrays
    data = loads.only("torch", "predict")
    with torch.no_grad():
        expected = {"torch": load_checkpoint(runs["torch"]["checkpoint"]).eval()(torch.from_numpy(data.images)).numpy()}
    expected["tensorflow"] = load_checkpoint(runs["tensorflow"]["checkpoint"]).net(data.images, training=False).numpy()
    labels = get_schema("decals_dr5").label_cols
    for framework in FRAMEWORKS:
        table = runs[framework]["predictions"]
        assert table["id_str"].to_pylist() == data.ids
        got = np.stack([table[f"{label}_concentration"].to_numpy() for label in labels], axis=1)
        np.testing.assert_allclose(got, expected[framework], rtol=1e-4, err_msg=framework)
