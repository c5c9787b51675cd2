"""API tokens (store/tokens.py and ``aivc access token``) on every backend."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading

import pytest
from typer.testing import CliRunner

from aivc.cli import app
from aivc.store.access import add_user, remove_user
from aivc.store.lake import Lake
from aivc.store.tokens import InvalidToken, create_token, list_tokens, principal_for_token, revoke_token


def test_tokens_authenticate_until_revoked_expired_or_their_user_is_gone(lake_uri: str) -> None:
    lake = Lake.init(lake_uri)
    add_user(lake, "alice", ["consortium"])
    add_user(lake, "bob", [])
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    ta, ia = create_token(lake, "alice", now=t0)
    tb, ib = create_token(lake, "bob", expires_days=2, now=t0)
    assert principal_for_token(lake, ta) == "alice" and principal_for_token(lake, tb, now=t0) == "bob"
    # only hashes are stored
    raw = lake.storage.read_bytes("tokens.json").decode()
    assert ta.split("_", 2)[2] not in raw and tb.split("_", 2)[2] not in raw
    assert json.loads(raw)["tokens"][ia.id]["sha256"] == hashlib.sha256(ta.split("_", 2)[2].encode()).hexdigest()
    assert ia.to_dict() == {"id": ia.id, "user": "alice", "created_at": "2026-01-01T00:00:00+00:00", "expires_at": None, "revoked_at": None}
    # expiry
    assert principal_for_token(lake, tb, now=t0 + dt.timedelta(days=1, hours=23)) == "bob"
    with pytest.raises(InvalidToken, match="expired at 2026-01-03"):
        principal_for_token(lake, tb, now=t0 + dt.timedelta(days=2))
    # a wrong secret with a real id, a malformed one, an unknown id
    for bad, msg in ((f"aivc_{ia.id}_{'A' * 43}", "unknown"), ("nonsense", "not of the form"), (f"aivc_{'0' * 12}_{'A' * 43}", "unknown")):
        with pytest.raises(InvalidToken, match=msg):
            principal_for_token(lake, bad)
    # revocation, twice (the first time stays)
    r1 = revoke_token(lake, ia.id, now=t0 + dt.timedelta(hours=1))
    r2 = revoke_token(lake, ia.id)
    assert r1.revoked_at == r2.revoked_at == "2026-01-01T01:00:00+00:00"
    with pytest.raises(InvalidToken, match="revoked"):
        principal_for_token(lake, ta)
    # removing the user ends their tokens
    tb2, _ = create_token(lake, "bob")
    remove_user(lake, "bob")
    with pytest.raises(InvalidToken, match="no longer a user"):
        principal_for_token(lake, tb2)
    assert [i.user for i in list_tokens(lake)] == ["alice", "bob", "bob"]


def test_creating_for_an_unknown_user_or_public_changes_nothing(lake: Lake) -> None:
    from aivc.errors import NotFoundError, UsageError

    with pytest.raises(NotFoundError, match="add-user zed"):
        create_token(lake, "zed")
    with pytest.raises(UsageError, match="anonymous"):
        create_token(lake, "public")
    for days in (-1, 0, float("nan"), float("inf")):
        with pytest.raises(UsageError, match="positive"):
            create_token(lake, lake.info()["owner"], expires_days=days)
    with pytest.raises(UsageError, match="year 9999"):
        create_token(lake, lake.info()["owner"], expires_days=1e7)
    assert list_tokens(lake) == []
    owner_token, _ = create_token(lake, lake.info()["owner"])  # the owner needs no add-user
    assert principal_for_token(lake, owner_token) == lake.info()["owner"]


def test_concurrent_creates_all_survive(lake_uri: str) -> None:
    lake = Lake.init(lake_uri)
    add_user(lake, "alice", [])
    out: list[str] = []
    start = threading.Barrier(4)

    def make() -> None:
        lk = Lake.open(lake_uri)  # each writer its own handle, as separate commands would have
        start.wait()
        out.append(create_token(lk, "alice")[0])

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 4 and len(list_tokens(lake)) == 4
    assert all(principal_for_token(lake, t) == "alice" for t in out)


def test_cli_token_create_list_revoke(lake: Lake) -> None:
    add_user(lake, "alice", ["consortium"])
    run = CliRunner()
    res = run.invoke(app, ["access", "token", "create", "alice", "--expires", "30", "--lake", str(lake.root), "--json"])
    assert res.exit_code == 0, res.output
    made = json.loads(res.stdout)
    assert set(made) == {"status", "token", "id", "user", "expires_at"} and made["user"] == "alice" and made["expires_at"]
    assert re.fullmatch(rf"aivc_{made['id']}_[A-Za-z0-9_-]{{43}}", made["token"])  # 32 random bytes, urlsafe
    assert principal_for_token(lake, made["token"]) == "alice"
    listed = json.loads(run.invoke(app, ["access", "token", "list", "--lake", str(lake.root), "--json"]).stdout)
    assert [r["id"] for r in listed] == [made["id"]] and set(listed[0]) == {"id", "user", "created_at", "expires_at", "revoked_at"}
    assert "sha256" not in json.dumps(listed) and made["token"].split("_", 2)[2] not in json.dumps(listed)
    res = run.invoke(app, ["access", "token", "revoke", made["id"], "--lake", str(lake.root), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["id"] == made["id"] and json.loads(res.stdout)["revoked_at"]
    with pytest.raises(InvalidToken):
        principal_for_token(lake, made["token"])
    # errors: one line, exit codes, nothing changed
    before = lake.storage.read_bytes("tokens.json")
    bad = run.invoke(app, ["access", "token", "create", "zed", "--lake", str(lake.root)])
    assert bad.exit_code == 1 and "add-user zed" in bad.output and "Traceback" not in bad.output
    for days in ("0", "-3", "inf", "abc", "1e9"):
        bad = run.invoke(app, ["access", "token", "create", "alice", "--expires", days, "--lake", str(lake.root)])
        assert bad.exit_code == 2 and "--expires" in bad.output and "Traceback" not in bad.output, (days, bad.output)
    bad = run.invoke(app, ["access", "token", "revoke", "ffffffffffff", "--lake", str(lake.root)])
    assert bad.exit_code == 1 and "no token" in bad.output
    assert lake.storage.read_bytes("tokens.json") == before


def test_cli_remove_user_ends_their_tokens_for_good(lake: Lake) -> None:
    run = CliRunner()
    assert run.invoke(app, ["access", "add-user", "carol", "--groups", "consortium", "--lake", str(lake.root)]).exit_code == 0
    made = json.loads(run.invoke(app, ["access", "token", "create", "carol", "--lake", str(lake.root), "--json"]).stdout)
    other, _ = create_token(lake, lake.info()["owner"])
    assert made["expires_at"] is None and principal_for_token(lake, made["token"]) == "carol"
    res = run.invoke(app, ["access", "remove-user", "carol", "--lake", str(lake.root), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["revoked_tokens"] == [made["id"]]
    with pytest.raises(InvalidToken, match="revoked"):
        principal_for_token(lake, made["token"])
    # a new user of the same name does not bring the old token back; other users' tokens are untouched
    add_user(lake, "carol", [])
    with pytest.raises(InvalidToken, match="revoked"):
        principal_for_token(lake, made["token"])
    assert principal_for_token(lake, other) == lake.info()["owner"]
