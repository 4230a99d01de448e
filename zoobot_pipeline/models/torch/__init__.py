"""PyTorch backend: timm backbone + Dirichlet head, loss, safetensors checkpoints, training (local or Ray Train),
finetuning, prediction, ONNX export. The only part of the package that imports torch."""

from zoobot_pipeline.models.torch.augment import augment
from zoobot_pipeline.models.torch.checkpoint import load_checkpoint, save_checkpoint
from zoobot_pipeline.models.torch.data import GalaxyDataset
from zoobot_pipeline.models.torch.finetune import FinetuneModel, encoder_blocks, finetune_loss, finetune_param_groups
from zoobot_pipeline.models.torch.job import TrainingTask, build_finetune_model, build_task
from zoobot_pipeline.models.torch.loop import LocalSession, TrainingSession, run_training, train_task
from zoobot_pipeline.models.torch.loss import dirichlet_multinomial_loss, dirichlet_multinomial_nll
from zoobot_pipeline.models.torch.model import DirichletHead, ZoobotModel, build_model
from zoobot_pipeline.models.torch.train import evaluate, loss_sum, schema_loss, train_one_epoch

__all__ = [
    "DirichletHead",
    "FinetuneModel",
    "GalaxyDataset",
    "LocalSession",
    "TrainingSession",
    "TrainingTask",
    "ZoobotModel",
    "augment",
    "build_finetune_model",
    "build_model",
    "build_task",
    "dirichlet_multinomial_loss",
    "dirichlet_multinomial_nll",
    "encoder_blocks",
    "evaluate",
    "finetune_loss",
    "finetune_param_groups",
    "load_checkpoint",
    "loss_sum",
    "run_training",
    "save_checkpoint",
    "schema_loss",
    "train_one_epoch",
    "train_task",
]
