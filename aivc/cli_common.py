"""What every ``aivc`` command shares: the common options, error handling and output.

Command modules (``aivc.cli``, ``aivc.cli_features``, …) import from here, so none of
them needs to import another at module level, and ``aivc --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Optional

import typer

from aivc.errors import AivcError

LakeOpt = Annotated[Optional[str], typer.Option("--lake", help="Lake folder (default $AIVC_LAKE, else ./lake).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def console():  # noqa: ANN201 - rich Console
    from rich.console import Console

    return Console()


def err_console():  # noqa: ANN201 - rich Console
    from rich.console import Console

    return Console(stderr=True)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None, out: Any = None) -> None:
    """Print rows as a rich table (``out``: a Console, default stdout)."""
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(str(c))
    for r in rows:
        t.add_row(*("" if x is None else str(x) for x in r))
    (out or console()).print(t)


def run_command(json_mode: bool, debug: bool, body: Callable[[], int | None]) -> None:
    """Run a command body; turn errors into one line (or JSON) and an exit code."""
    try:
        code = body() or 0
    except AivcError as exc:
        if debug:
            traceback.print_exc()
        if json_mode:
            print_json({"status": "error", "errors": [exc.to_dict()]})
        else:
            err_console().print(f"[bold red]error[/] [{exc.code}] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err_console().print("interrupted; the lake is unchanged by the unfinished command")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - last line of defence, never a raw traceback
        if debug:
            traceback.print_exc()
        msg = f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (run with --debug for the traceback)"
        if json_mode:
            print_json({"status": "error", "errors": [{"code": "INTERNAL", "where": "", "message": msg}]})
        else:
            err_console().print(f"[bold red]error[/] {msg}", highlight=False, soft_wrap=True)
        raise typer.Exit(3) from None
    raise typer.Exit(code)
