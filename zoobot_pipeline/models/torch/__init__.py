"""PyTorch backend: timm backbone + Dirichlet head, loss, safetensors checkpoints, training and finetuning."""

from zoobot_pipeline.models.torch.augment import augment
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint, save_checkpoint
from zoobot_pipeline.models.torch.data import GalaxyDataset, LabelledImages, load_labelled_images, validation_mask
from zoobot_pipeline.models.torch.finetune import (
    FinetuneModel,
    build_finetune_model,
    encoder_blocks,
    finetune_loss,
    finetune_param_groups,
)
from zoobot_pipeline.models.torch.loss import dirichlet_multinomial_loss, dirichlet_multinomial_nll
from zoobot_pipeline.models.torch.model import DirichletHead, ZoobotModel, build_model
from zoobot_pipeline.models.torch.train import evaluate, fit, pretrain_local, train_one_epoch

__all__ = [
    "DirichletHead",
    "FinetuneModel",
    "GalaxyDataset",
    "LabelledImages",
    "ZoobotModel",
    "augment",
    "build_finetune_model",
    "build_model",
    "dirichlet_multinomial_loss",
    "dirichlet_multinomial_nll",
    "encoder_blocks",
    "evaluate",
    "finetune_loss",
    "finetune_param_groups",
    "fit",
    "load_checkpoint",
    "load_labelled_images",
    "pretrain_local",
    "save_checkpoint",
    "train_one_epoch",
    "validation_mask",
]
