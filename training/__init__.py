"""aivc.training: data loading from the lake, scale models, Ray Train jobs, model registry.

Modules: ``config`` (validated training configs, one class per model type), ``data``
(training plans and the streaming :class:`~aivc.training.data.CellDataset`), ``models``
(pure torch modules: ``cell-vae``, ``cell-transformer``), ``trainer`` (the Ray Train job's
driver, with checkpoints and resume), ``train_loop`` (the loop every Ray Train worker runs),
``runs`` (a run's folder, lock, record and checkpoints), ``run_plan`` (what a run trains on),
``run_registration`` (registering a finished run's model), ``registry`` (``NAME@VERSION``
models under ``<lake>/models/``). A gene-token model reads its gene URs from the feature
store (:mod:`aivc.store.features`) itself.
Importing this package stays light: torch and Ray are imported by the modules that need them.
"""

from __future__ import annotations

from aivc.training.config import CellTransformerConfig, CellVaeConfig, TrainingConfig, apply_overrides, load_config
from aivc.training.registry import ModelRecord, get_model, list_models, load_model

__all__ = [
    "CellTransformerConfig",
    "CellVaeConfig",
    "ModelRecord",
    "TrainingConfig",
    "apply_overrides",
    "get_model",
    "list_models",
    "load_config",
    "load_model",
]
