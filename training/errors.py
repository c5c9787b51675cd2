"""Errors of the training layer (subclasses of :class:`aivc.errors.AivcError`)."""

from __future__ import annotations

from aivc.errors import AivcError


class TrainingError(AivcError):
    """A training run failed (in a worker, or while restoring its checkpoint)."""

    code = "TRAINING_FAILED"


class ModelError(AivcError):
    """A registered model is unreadable, of an unknown format, or does not fit the data."""

    code = "MODEL_INVALID"
