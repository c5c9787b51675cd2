"""CLI: ``aivc neighbors REF ID``, the nearest neighbours of one stored vector.

Exact cosine search by default; ``--approx`` uses the version's HNSW index (built on first
use) and reports the recall measured when it was built. ``--where`` restricts neighbours
to cells matching a condition on the ``cells`` SQL view; ``--principal`` answers as that
principal (only datasets it may see exist). Registered on the main app by ``aivc.cli``
through :func:`register`.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from aivc.cli_common import DebugOpt, JsonOpt, LakeOpt, print_table, run_command
from aivc.cli_common import err_console as _err_console
from aivc.cli_common import print_json as _print_json

_META_BATCH = 1000


def allowed_datasets_for(lake: Any, principal: str | None) -> set[str] | None:
    """Datasets ``principal`` may see; ``None`` (no restriction) for the lake owner."""
    if principal is None:
        return None
    from aivc.store.access import resolve_principal, visible_datasets

    who = resolve_principal(lake, principal)
    return None if who.is_owner else visible_datasets(lake, who)


def ids_where(lake: Any, where: str, principal: str | None) -> list[str]:
    """``obs_id`` of the cells matching an SQL condition on the ``cells`` view."""
    from aivc.store import sql

    res = sql.query(lake, f"SELECT obs_id FROM cells WHERE {where}", principal=principal)
    return [r[0] for r in res.rows]


def cell_metadata(lake: Any, obs_ids: list[str], principal: str | None) -> dict[str, dict[str, Any]]:
    """``obs_id -> {dataset_id, cell_type}`` from the ``cells`` view (cells absent there are left out)."""
    from aivc.store import sql

    out: dict[str, dict[str, Any]] = {}
    for s in range(0, len(obs_ids), _META_BATCH):
        chunk = obs_ids[s : s + _META_BATCH]
        inlist = ", ".join("'" + i.replace("'", "''") + "'" for i in chunk)
        res = sql.query(lake, f"SELECT * FROM cells WHERE obs_id IN ({inlist})", principal=principal)
        for row in res.to_dicts():
            out[row["obs_id"]] = {"dataset_id": row.get("dataset_id"), "cell_type": row.get("cell_type")}
    return out


def find(
    lake: Any,
    ref: str,
    query_id: str,
    *,
    k: int = 10,
    approx: bool = False,
    where: str | None = None,
    principal: str | None = None,
    progress: Any = None,
    on_build: Any = None,
) -> dict[str, Any]:
    """The answer of ``aivc neighbors`` as a JSON-ready dict."""
    from aivc.embeddings.neighbors import exact_neighbors, load_version
    from aivc.errors import UsageError

    lv = load_version(lake, ref)
    v = lv.version
    allowed = allowed_datasets_for(lake, principal)
    filter_ids = None
    if where is not None:
        if v.entity != "cell":
            raise UsageError(f"--where filters cells through the cells view; {v.ref} is a {v.entity} embedding", where="--where")
        filter_ids = ids_where(lake, where, principal)
    info = None
    if approx:
        from aivc.embeddings.ann import approximate_neighbors, index_info

        info = index_info(lake, lv)
        if info is None and on_build is not None:
            on_build(v, lv.n_rows)
        res = approximate_neighbors(lake, lv, [query_id], k, allowed_datasets=allowed, filter_ids=filter_ids, build_if_missing=True, progress=progress)[0]
        info = index_info(lake, lv)
    else:
        res = exact_neighbors(lake, lv, [query_id], k, allowed_datasets=allowed, filter_ids=filter_ids)[0]
    key = "obs_id" if v.entity == "cell" else "id"
    meta = cell_metadata(lake, list(res.ids), principal) if v.entity == "cell" and res.ids else {}
    rows = []
    for i, (nid, sim) in enumerate(zip(res.ids, res.similarities, strict=True)):
        row: dict[str, Any] = {"rank": i + 1, key: nid, "similarity": round(sim, 6)}
        if v.entity == "cell":
            m = meta.get(nid, {})
            row["dataset_id"] = m.get("dataset_id") or res.dataset_ids[i]
            row["cell_type"] = m.get("cell_type")
        rows.append(row)
    return {
        "status": "ok",
        "ref": v.ref,
        "query_id": query_id,
        "k": k,
        "metric": "cosine",
        "method": res.method,
        "where": where,
        "principal": principal,
        "index": info.to_record() if info is not None else None,
        "neighbors": rows,
    }


def _print_table(out: dict[str, Any]) -> None:
    how = "exact"
    if out["index"] is not None:
        idx = out["index"]
        how = f"approximate: HNSW efSearch={idx['ef_search']}, recall@10 {idx['recall_at_10']:.3f} on {idx['recall_queries']} queries"
        if out["method"] == "exact":
            how += "; answered exactly, the filter kept few rows"
    title = f"{len(out['neighbors'])} nearest neighbours of {out['query_id']} in {out['ref']} (cosine, {how})"
    cols = list(out["neighbors"][0]) if out["neighbors"] else ["rank", "id", "similarity"]
    rows = [[f"{r[c]:.4f}" if c == "similarity" else r[c] for c in cols] for r in out["neighbors"]]
    print_table(cols, rows, title=title, right=("rank", "similarity"))


def register(app: typer.Typer) -> None:
    """Add ``neighbors`` to ``app``."""

    @app.command()
    def neighbors(
        ref: Annotated[str, typer.Argument(metavar="REF", help="Embedding version ENTITY:NAME@VERSION, e.g. cell:pca@1 (without @VERSION: the latest).")],
        query_id: Annotated[str, typer.Argument(metavar="ID", help="Id of the query vector (cells: the lake's obs_id).")],
        k: Annotated[int, typer.Option("--k", help="Number of neighbours.")] = 10,
        approx: Annotated[bool, typer.Option("--approx", help="Use the version's HNSW index (built on first use) instead of exact search.")] = False,
        where: Annotated[Optional[str], typer.Option("--where", help="SQL condition on the cells view, e.g. \"cell_type = 'B cell'\".")] = None,
        principal: Annotated[Optional[str], typer.Option("--principal", help="Answer as this principal: only datasets it may see (default: the lake owner).")] = None,
        lake: LakeOpt = None,
        json_: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Nearest neighbours (cosine) of one stored vector, with cell metadata."""

        def body() -> int:
            from aivc.progress import make_progress
            from aivc.store.lake import Lake

            def on_build(v: Any, n: int) -> None:
                if not json_:
                    _err_console().print(f"building the approximate (HNSW) index of {v.ref}: {n:,} vectors, once per version…")

            progress = make_progress(json_)
            try:
                out = find(Lake.open(lake), ref, query_id, k=k, approx=approx, where=where, principal=principal, progress=progress, on_build=on_build)
            finally:
                progress.close()
            if json_:
                _print_json(out)
            else:
                _print_table(out)
            return 0

        run_command(json_, debug, body)
