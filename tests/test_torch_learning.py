"""A fast version of benchmarks/learning_evidence.py: pretraining must learn the votes beyond their population mean."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.data.synthetic.simulate import simulate_release
from zoobot_pipeline.data.votes import read_votes, vote_matrix
from zoobot_pipeline.models import ModelConfig, TrainingConfig, predict, pretrain
from zoobot_pipeline.schemas import get_schema
from zoobot_pipeline.stats import dirichlet_multinomial_nll, population_concentrations

torch.set_num_threads(2)


def test_pretrained_model_beats_the_population_mean_and_separates_smooth_from_featured(tmp_path):
    schema = get_schema("decals_dr5")
    release = simulate_release(tmp_path / "release", 160, 1, seed=3, labelled_fraction=1.0)
    preprocessing = PreprocessingConfig.gz_decals(input_size=32)
    config = ModelConfig.from_preprocessing(preprocessing, architecture="test_resnet")
    training = TrainingConfig(lr=3e-3, epochs=12, batch_size=16, patience=12, val_fraction=0.2, augmentation=None)
    checkpoint = pretrain(release, release / "votes.parquet", tmp_path / "model", config, training, preprocessing)

    predictions = predict(checkpoint, release)
    votes = read_votes(release / "votes.parquet", schema)
    row = {id_str: i for i, id_str in enumerate(votes["id_str"].to_pylist())}
    counts = vote_matrix(votes, schema)[[row[i] for i in predictions["id_str"].to_pylist()]]
    concentrations = np.stack([predictions[f"{c}_concentration"].to_numpy() for c in schema.label_cols], axis=1)
    model_nll = dirichlet_multinomial_nll(counts, concentrations, schema).sum(axis=1).mean()
    constant = np.broadcast_to(population_concentrations(counts, schema), counts.shape)
    constant_nll = dirichlet_multinomial_nll(counts, constant, schema).sum(axis=1).mean()
    assert model_nll < constant_nll, (model_nll, constant_nll)

    truth = pq.read_table(release / "truth.parquet")
    t_row = {id_str: i for i, id_str in enumerate(truth["id_str"].to_pylist())}
    rows = [t_row[i] for i in predictions["id_str"].to_pylist()]
    p_smooth = truth["p_smooth-or-featured-dr5_smooth"].to_numpy()[rows]
    p_featured = truth["p_smooth-or-featured-dr5_featured-or-disk"].to_numpy()[rows]
    clear = (p_smooth >= 0.7) | (p_featured >= 0.7)
    truly_smooth = p_smooth[clear] > p_featured[clear]
    said_smooth = (predictions["smooth-or-featured-dr5_smooth_fraction"].to_numpy()[clear]
                   > predictions["smooth-or-featured-dr5_featured-or-disk_fraction"].to_numpy()[clear])
    majority = max(truly_smooth.mean(), 1 - truly_smooth.mean())
    assert (said_smooth == truly_smooth).mean() > majority
