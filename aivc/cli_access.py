"""``aivc access``: principals, groups and per-dataset grants of a lake.

Registered on the main app by :func:`register`; the rules themselves live in
:mod:`aivc.store.access`.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from aivc.cli_common import DebugOpt, JsonOpt, LakeOpt, console, print_json, print_table, run_command, typer_app

access_app = typer_app(name="access", help="Who may see which dataset: users, groups and grants (public | consortium | embargoed).")


_run = run_command


def _emit(json_mode: bool, obj: dict[str, Any], line: str) -> None:
    if json_mode:
        print_json(obj)
    else:
        console().print(line)


def _split_groups(groups: str) -> list[str]:
    return [g.strip() for g in groups.split(",") if g.strip()]


@access_app.command("add-user")
def add_user(
    name: Annotated[str, typer.Argument(help="The principal's name (as given to --principal).")],
    groups: Annotated[str, typer.Option("--groups", help="Comma-separated groups, e.g. consortium,lab-x.")] = "",
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Create a user, or replace the groups of an existing one."""

    def body() -> int:
        from aivc.store.access import add_user as do_add
        from aivc.store.access import resolve_principal
        from aivc.store.lake import Lake

        lk = Lake.open(lake)
        created = do_add(lk, name, _split_groups(groups))
        p = resolve_principal(lk, name)
        gs = sorted(p.groups)
        _emit(json_, {"status": "ok", "user": name, "groups": gs, "created": created}, f"{'added' if created else 'updated'} user {name} (groups: {', '.join(gs) or 'none'})")
        return 0

    _run(json_, debug, body)


@access_app.command("remove-user")
def remove_user(
    name: Annotated[str, typer.Argument(help="The user to remove.")],
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Remove a user (it can no longer be used as --principal) and revoke its API tokens."""

    def body() -> int:
        from aivc.store.access import remove_user as do_remove
        from aivc.store.lake import Lake
        from aivc.store.tokens import revoke_user_tokens

        lk = Lake.open(lake)
        do_remove(lk, name)
        # its tokens stop working at once anyway (principal_for_token checks the user); revoking them
        # keeps them dead if a user of the same name is added again later
        revoked = [i.id for i in revoke_user_tokens(lk, name)]
        tail = f"; revoked its {len(revoked)} token(s)" if revoked else ""
        _emit(json_, {"status": "ok", "user": name, "removed": True, "revoked_tokens": revoked}, f"removed user {name}{tail}")
        return 0

    _run(json_, debug, body)


@access_app.command("grant")
def grant(
    dataset: Annotated[str, typer.Argument(help="Dataset id.")],
    group: Annotated[str, typer.Option("--group", help="Group given access to the dataset.")],
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Let a group see a consortium or embargoed dataset."""

    def body() -> int:
        from aivc.store.access import grant as do_grant
        from aivc.store.lake import Lake

        changed = do_grant(Lake.open(lake), dataset, group)
        _emit(json_, {"status": "ok", "dataset_id": dataset, "group": group, "changed": changed}, f"granted {dataset} to group {group}" + ("" if changed else " (already granted)"))
        return 0

    _run(json_, debug, body)


@access_app.command("revoke")
def revoke(
    dataset: Annotated[str, typer.Argument(help="Dataset id.")],
    group: Annotated[str, typer.Option("--group", help="Group whose grant is taken away.")],
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Take a group's grant on a dataset away."""

    def body() -> int:
        from aivc.store.access import revoke as do_revoke
        from aivc.store.lake import Lake

        changed = do_revoke(Lake.open(lake), dataset, group)
        _emit(json_, {"status": "ok", "dataset_id": dataset, "group": group, "changed": changed}, f"revoked {dataset} from group {group}" + ("" if changed else " (was not granted)"))
        return 0

    _run(json_, debug, body)


def _listing(lake: Any) -> dict[str, Any]:
    from aivc.store.access import AccessConfig, can_see, lake_owner, resolve_principal
    from aivc.store.catalog import Catalog, embargo_active

    cfg = AccessConfig.load(lake)
    owner = lake_owner(lake)
    principals = [resolve_principal(lake, n, cfg) for n in ["public", *sorted(cfg.users)]]
    datasets = []
    for v in Catalog(lake).current():
        granted = cfg.grants.get(v.dataset_id, [])
        datasets.append(
            {
                "dataset_id": v.dataset_id,
                "version": v.version,
                "access": v.access,
                "embargo_until": v.embargo_until,
                "embargo_active": embargo_active(v),
                "granted_groups": list(granted),
                "visible_to": [owner] + [p.name for p in principals if can_see(p, v, granted)],
            }
        )
    return {
        "status": "ok",
        "owner": owner,
        "users": [{"name": n, "groups": list(u.groups)} for n, u in sorted(cfg.users.items())],
        "grants": {k: list(g) for k, g in sorted(cfg.grants.items())},
        "datasets": datasets,
    }


@access_app.command("list")
def list_(lake: LakeOpt = None, json_: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Users and their groups, and for each dataset its access level, grants and who sees it."""

    def body() -> int:
        from aivc.store.lake import Lake

        res = _listing(Lake.open(lake))
        if json_:
            _emit(True, res, "")
            return 0
        con = console()
        con.print(f"owner: {res['owner']} (sees everything); built in: public (public datasets only)")
        print_table(("name", "groups"), [(u["name"], ", ".join(u["groups"])) for u in res["users"]], title="users", out=con)
        rows = []
        for d in res["datasets"]:
            level = d["access"] + (f" until {d['embargo_until']}" + ("" if d["embargo_active"] else " (lifted)") if d["embargo_until"] else "")
            rows.append((d["dataset_id"], level, ", ".join(d["granted_groups"]), ", ".join(d["visible_to"])))
        print_table(("dataset", "access", "granted groups", "visible to"), rows, title="datasets", out=con)
        return 0

    _run(json_, debug, body)


token_app = typer_app(name="token", help="API tokens for the portal and its HTTP API (`aivc serve`): create, revoke, list.")
access_app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Argument(help="The user the token signs in as (a user of `aivc access list`, or the lake owner).")],
    expires: Annotated[Optional[float], typer.Option("--expires", help="Days until the token stops working (default: never).")] = None,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Create a token and print it once (the lake keeps only its hash)."""

    def body() -> int:
        from aivc.store.lake import Lake
        from aivc.store.tokens import create_token

        token, info = create_token(Lake.open(lake), user, expires)
        until = f", expires {info.expires_at}" if info.expires_at else ", no expiry"
        _emit(json_, {"status": "ok", "token": token, "id": info.id, "user": info.user, "expires_at": info.expires_at}, f"{token}\n(token {info.id} for {info.user}{until}; shown only now, the lake keeps its hash)")
        return 0

    _run(json_, debug, body)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (`aivc access token list`).")],
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Revoke a token: it stops working at once."""

    def body() -> int:
        from aivc.store.lake import Lake
        from aivc.store.tokens import revoke_token

        info = revoke_token(Lake.open(lake), token_id)
        _emit(json_, {"status": "ok", **info.to_dict()}, f"revoked token {info.id} of {info.user} (at {info.revoked_at})")
        return 0

    _run(json_, debug, body)


@token_app.command("list")
def token_list(lake: LakeOpt = None, json_: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Tokens: id, user, created, expires, revoked (never the secrets)."""

    def body() -> int:
        from aivc.store.lake import Lake
        from aivc.store.tokens import list_tokens

        rows = [i.to_dict() for i in list_tokens(Lake.open(lake))]
        if json_:
            print_json(rows)
            return 0
        cols = ("id", "user", "created_at", "expires_at", "revoked_at")
        print_table(cols, [[r[c] or "" for c in cols] for r in rows], title="API tokens")
        return 0

    _run(json_, debug, body)


def register(app: typer.Typer) -> None:
    """Add the ``access`` command group to ``app``."""
    app.add_typer(access_app, name="access")
