"""Helpers shared by the instrument tests."""

from __future__ import annotations

from typing import Any


def run_cli(app: Any, *args: str) -> tuple[int, Any]:
    """Run ``aivc ARGS --json`` in-process; returns (exit code, parsed JSON stdout)."""
    import json

    from typer.testing import CliRunner

    res = CliRunner().invoke(app, [*args, "--json"])
    try:
        out = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON (exit {res.exit_code}): {res.stdout!r} {res.stderr!r}") from res.exception
    return res.exit_code, out
