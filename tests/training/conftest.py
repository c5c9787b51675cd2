"""Fixtures of the training tests (the shared train_lake and ray_session are in tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture
def cli_app():  # noqa: ANN201
    """A Typer app with the training commands registered (as aivc.cli will)."""
    import typer

    from aivc.cli_training import register

    app = typer.Typer(pretty_exceptions_enable=False)
    register(app)
    return app
