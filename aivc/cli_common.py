"""What every ``aivc`` command shares: the common options, error handling and output.

Command modules (``aivc.cli``, ``aivc.cli_features``, …) import from here, so none of
them needs to import another at module level, and ``aivc --help`` stays fast.

Output rules, in one place:

- Nothing a user or a lake supplied is ever read as Rich markup: :func:`console` and
  :func:`err_console` print plain text (``markup=False``), the few styled words are
  built with :func:`styled`, and :func:`print_table` puts every cell in a ``Text``.
  Help texts are plain too: every command group comes from :func:`typer_app`, whose
  ``rich_markup_mode=None`` prints them verbatim (``[predictions:]INSTRUMENT[@VERSION]``).
- Lines are never broken by Rich (``soft_wrap``): a path or an id stays one string.
- Tables never cut a value short with "…". Piped (not a terminal), a table is printed at
  its natural width, whatever the terminal width or ``COLUMNS``. On a terminal, id
  columns (see :func:`is_id_column`), from the left, keep each id on one line while
  they fit; every other column wraps, and a value too long for its column folds onto
  the next line (an id never loses a character).
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Collection, Sequence
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from aivc.errors import AivcError

LakeOpt = Annotated[Optional[str], typer.Option("--lake", help="Lake: a folder or s3://BUCKET/PREFIX (S3 settings from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION); default $AIVC_LAKE, else ./lake.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]

#: Column names whose values are ids people copy (see :func:`is_id_column`).
ID_COLUMNS = frozenset({"id", "ref", "reads", "dataset", "instrument", "embedding", "model", "sql_view", "view", "view_name", "alias_name", "sql_alias"})
#: On a terminal, the width (characters) a wrapping column keeps when id columns are kept whole.
NARROW = 10
#: Context settings of every command: ``-h`` is ``--help``.
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


class HelpGroup(TyperGroup):
    """A command group whose list of commands shows each one's first sentence whole
    (wrapped), where Click would cut it at about 45 characters with "..."."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=1 << 20)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def typer_app(**kwargs: Any) -> typer.Typer:
    """A Typer app (the root or a command group) with the settings every aivc app shares.

    Help texts are printed verbatim (no Rich markup: square brackets survive), ``-h`` is
    ``--help``, command lists are not cut short (:class:`HelpGroup`; a ``cls`` given
    should subclass it), no shell-completion options, no pretty tracebacks; no arguments
    shows help.
    """
    settings: dict[str, Any] = {
        "cls": HelpGroup,
        "no_args_is_help": True,
        "add_completion": False,
        "pretty_exceptions_enable": False,
        "rich_markup_mode": None,
        "context_settings": dict(CONTEXT_SETTINGS),
    }
    return typer.Typer(**(settings | kwargs))


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def console():  # noqa: ANN201 - rich Console
    """The stdout Console: plain text (no markup, no highlighting), lines never broken."""
    from rich.console import Console

    return Console(markup=False, highlight=False, soft_wrap=True)


def err_console():  # noqa: ANN201 - rich Console
    """The stderr Console, as :func:`console`."""
    from rich.console import Console

    return Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def styled(*parts: str | tuple[str, str]):  # noqa: ANN201 - rich Text
    """One line of plain text with some styled words, e.g. ``styled(("error", "red"), " " + message)``.

    Nothing in it is read as markup, so a message like ``X[cell 'A' (row 0)]`` prints as is.
    """
    from rich.text import Text

    return Text.assemble(*parts)


def is_id_column(name: str) -> bool:
    """Whether a column holds ids: one of :data:`ID_COLUMNS` (``id``, ``ref``, ``dataset``,
    ``instrument``, ``embedding``, ``model``, ``sql_view``…) or a name ending in ``_id`` or
    ``_ref`` (``obs_id``, ``dataset_id``, ``instrument_ref``)."""
    n = name.lower()
    return n in ID_COLUMNS or n.endswith(("_id", "_ref"))


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    title: str | None = None,
    out: Any = None,
    *,
    ids: Collection[str] | None = None,
    right: Collection[str] = (),
) -> None:
    """Print rows as a table on ``out`` (a Console, default stdout) without cutting any value.

    ``ids`` names the id columns (default: those :func:`is_id_column` accepts); ``right``
    the right-justified ones. Piped, the table has its natural width; on a terminal the id
    columns keep each id on one line while they fit and the others wrap (module docstring).
    """
    from rich.measure import Measurement
    from rich.segment import Segments
    from rich.table import Table
    from rich.text import Text

    con = out or console()
    id_cols = [c for c in columns if (is_id_column(str(c)) if ids is None else c in ids)]
    cells = [["" if x is None else str(x) for x in r] for r in rows]
    piped = not con.is_terminal
    whole = set(id_cols) if piped else _whole_ids(con.width, columns, cells, id_cols)
    t = Table(title=None if title is None else Text(title, no_wrap=piped, overflow="ignore" if piped else "fold"))
    for c in columns:
        t.add_column(Text(str(c)), overflow="fold", no_wrap=c in whole, justify="right" if c in right else "left")
    for r in cells:
        t.add_row(*(Text(x) for x in r))
    if not piped:
        con.print(t)
        return
    width = Measurement.get(con, con.options.update_width(1 << 20), t).maximum
    con.print(Segments(con.render(t, con.options.update_width(width))), crop=False)


def _whole_ids(width: int, columns: Sequence[str], cells: Sequence[Sequence[str]], id_cols: Sequence[str]) -> set[str]:
    """The id columns, from the left, that can keep their ids on one line in ``width``
    while every other column keeps up to :data:`NARROW` characters."""
    from rich.cells import cell_len

    natural = [max([cell_len(str(c))] + [cell_len(r[j]) for r in cells]) for j, c in enumerate(columns)]
    total = 1 + sum(3 + min(n, NARROW) for n in natural)  # a border, and padding + border per column
    whole: set[str] = set()
    for c in id_cols:
        n = natural[list(columns).index(c)]
        if total + n - min(n, NARROW) <= width:
            whole.add(c)
            total += n - min(n, NARROW)
    return whole


def brief(value: Any, n: int = 5) -> str:
    """A record value in a few words: floats to 4 significant digits, lists as their first
    ``n`` items and how many more, dicts as ``key=value, …``, a labelled entry as its label."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "none"
        more = f", … ({len(value)} in all)" if len(value) > n else ""
        return ", ".join(_entry(x, n) for x in value[:n]) + more
    if isinstance(value, dict):
        if not value:
            return "none"
        if all(isinstance(x, dict) for x in value.values()):
            entries = ((k, _entry(x, n)) for k, x in value.items())
            return ", ".join(f"{k} {e}" if e.startswith("(") else f"{k} ({e})" for k, e in entries)
        return ", ".join(f"{k}={_entry(x, n)}" for k, x in value.items())
    return str(value)


def _entry(value: Any, n: int) -> str:
    """An item inside :func:`brief`: a dict with a label or name as that, other dicts in parentheses."""
    if isinstance(value, dict):
        name = next((value[k] for k in ("label", "name", "ref", "id") if k in value), None)
        if name is not None:
            return f"{name} ({value['term_id']})" if "term_id" in value else str(name)
        return f"({brief(value, n)})"
    if isinstance(value, (list, tuple)):
        return f"[{brief(value, n)}]"
    return brief(value, n)


def metric_rows(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``(name, value)`` rows of a metrics dict; a dict of plain values becomes dotted names."""
    rows: list[tuple[str, str]] = []
    for k, v in metrics.items():
        if isinstance(v, dict) and v and not any(isinstance(x, (dict, list, tuple)) for x in v.values()):
            rows.extend(metric_rows(v, f"{prefix}{k}."))
        else:
            rows.append((f"{prefix}{k}", brief(v)))
    return rows


def print_record(heading: str, fields: dict[str, Any], *, metrics: dict[str, Any] | None = None, full: str | None = None, out: Any = None) -> None:
    """Print a registry record as a short summary (the ``show`` commands without ``--json``).

    ``fields`` are printed as aligned ``name  value`` lines, a dict value as an indented
    block of such lines (deeper dicts in one line, see :func:`brief`); ``metrics`` as such
    a block of :func:`metric_rows`; ``full`` names the command that prints the whole record.
    """
    con = out or console()
    con.print(heading)
    _print_fields(con, fields, "  ", blocks=True)
    if metrics:
        _print_fields(con, {"metrics": dict(metric_rows(metrics))}, "  ", blocks=True)
    if full:
        con.print(f"full record: {full}")


def _print_fields(con: Any, fields: dict[str, Any], indent: str, blocks: bool) -> None:
    width = max((len(k) for k in fields), default=0)
    for k, v in fields.items():
        if blocks and isinstance(v, dict) and v:
            con.print(f"{indent}{k}")
            _print_fields(con, v, indent + "  ", blocks=False)
        else:
            con.print(f"{indent}{k:<{width}}  {v if isinstance(v, str) else brief(v)}")


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
            err_console().print(styled(("error", "bold red"), f" [{exc.code}] {exc}"))
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
            err_console().print(styled(("error", "bold red"), f" {msg}"))
        raise typer.Exit(3) from None
    raise typer.Exit(code)
