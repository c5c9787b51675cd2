"""Access control: principals, the public/consortium/embargo rules, and SQL that never leaks."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from aivc.errors import AccessDeniedError, LakeError, NotFoundError, SqlError, UsageError
from aivc.ingest.submission import submit
from aivc.store.access import AccessConfig, UserEntry, add_user, can_see, grant, remove_user, resolve_principal, revoke, visible_datasets
from aivc.store.catalog import Catalog
from aivc.store.lake import Lake
from aivc.store.sql import query
from tests.conftest import base_manifest, make_adata

FUTURE, PAST = "2999-12-31", "2001-01-01"
N_CELLS = {"pub": 40, "cons": 30, "emb": 20, "lifted": 10}
EXPECTED = {
    None: {"pub", "cons", "emb", "lifted"},  # the owner
    "public": {"pub"},
    "alice": {"pub", "cons", "lifted"},  # consortium; the lifted embargo behaves as consortium
    "bob": {"pub", "emb"},  # lab-x, granted on emb
    "carol": {"pub"},  # no groups
}


def build_access_lake(root: Path, genes: pd.DataFrame) -> Lake:
    """Four datasets, one per access case, and users alice/bob/carol.

    ``pub`` (public, 40 cells, measures 100 genes), ``cons`` (consortium, 30), ``emb``
    (embargoed until 2999, 20; granted to group lab-x), ``lifted`` (embargo ended in 2001, 10).
    """
    lake = Lake.init(root / "lake")
    cases = [
        ("pub", {"access": "public"}, 1),
        ("cons", {"access": "consortium"}, 2),
        ("emb", {"access": "embargoed", "embargo_until": FUTURE}, 3),
        ("lifted", {"access": "embargoed", "embargo_until": PAST}, 4),
    ]
    for ds, over, seed in cases:
        adata = make_adata(genes, n_cells=N_CELLS[ds], seed=seed)
        if ds == "pub":
            adata = adata[:, :100].copy()
        h5, mf = root / f"{ds}.h5ad", root / f"{ds}.yaml"
        adata.write_h5ad(h5)
        mf.write_text(yaml.safe_dump(base_manifest(ds, **over), sort_keys=False))
        assert submit(lake, h5, mf, report_dir=root / "reports").status == "committed"
    add_user(lake, "alice", ["consortium"])
    add_user(lake, "bob", ["lab-x"])
    add_user(lake, "carol", [])
    grant(lake, "emb", "lab-x")
    return lake


@pytest.fixture(scope="module")
def alake(tmp_path_factory: pytest.TempPathFactory, human_genes: pd.DataFrame) -> Lake:
    return build_access_lake(tmp_path_factory.mktemp("access"), human_genes)


def cells_file(lake: Lake, ds: str) -> str:
    return str(lake.root / "catalog" / "datasets" / ds / "v000001" / "cells.parquet")


# -- the rules ------------------------------------------------------------------------
@pytest.mark.parametrize("who", list(EXPECTED))
def test_visible_datasets_follow_the_rules(alake, who):
    assert visible_datasets(alake, who) == EXPECTED[who]


def test_embargo_date_decides(alake):
    # on the day the far-future embargo ends, emb behaves as consortium: alice sees it, bob still by grant
    after = dt.date(3000, 1, 1)
    assert visible_datasets(alake, "alice", today=after) == {"pub", "cons", "emb", "lifted"}
    assert visible_datasets(alake, "bob", today=after) == {"pub", "emb"}
    assert visible_datasets(alake, "carol", today=after) == {"pub"}
    # before 2001 the "lifted" embargo was active: only granted groups (none) and the owner
    before = dt.date(2000, 6, 1)
    assert visible_datasets(alake, "alice", today=before) == {"pub", "cons"}
    assert visible_datasets(alake, None, today=before) == {"pub", "cons", "emb", "lifted"}


def test_can_see_edge_cases(alake):
    v = Catalog(alake).get("emb")
    alice, bob = resolve_principal(alake, "alice"), resolve_principal(alake, "bob")
    no_end = dataclasses.replace(v, embargo_until=None)  # an embargo without an end date stays closed
    assert not can_see(alice, no_end) and can_see(bob, no_end, ["lab-x"])
    odd = dataclasses.replace(v, access="secret")  # an unknown level is closed to all but the owner
    assert not can_see(alice, odd, ["consortium"]) and can_see(resolve_principal(alake, None), odd)
    today = dataclasses.replace(v, embargo_until=dt.date.today().isoformat())  # lifts on its date
    assert can_see(alice, today) and not can_see(resolve_principal(alake, "carol"), today)


def test_grants_open_consortium_and_embargoed_datasets(alake):
    cfg = AccessConfig.load(alake)
    cfg.grants["cons"] = ["lab-x"]
    cfg.grants["lifted"] = ["lab-x"]
    assert visible_datasets(alake, "bob", config=cfg) == {"pub", "cons", "emb", "lifted"}
    cfg.grants["emb"] = []
    assert "emb" not in visible_datasets(alake, "bob", config=cfg)


def test_principals(alake):
    owner = alake.info()["owner"]
    assert resolve_principal(alake, None).is_owner and resolve_principal(alake, None).name == owner
    assert resolve_principal(alake, owner).is_owner
    pub = resolve_principal(alake, "public")
    assert not pub.is_owner and pub.groups == frozenset()
    assert resolve_principal(alake, "bob").groups == frozenset({"lab-x"})
    with pytest.raises(AccessDeniedError) as info:
        resolve_principal(alake, "mallory")
    assert info.value.code == "UNKNOWN_PRINCIPAL" and "aivc access add-user mallory" in info.value.message
    with pytest.raises(AccessDeniedError):
        visible_datasets(alake, "mallory")


# -- the configuration file -------------------------------------------------------------
def test_config_changes_and_file(lake):
    assert AccessConfig.load(lake) == AccessConfig()  # no file yet
    assert add_user(lake, "dora", ["b", "a", "a"]) is True
    assert add_user(lake, "dora", ["consortium"]) is False  # replaces the groups
    raw = json.loads((lake.root / "access.json").read_text())
    assert raw["schema_name"] == "aivc.access" and raw["schema_version"] == 1
    assert raw["users"] == {"dora": {"groups": ["consortium"]}}
    assert AccessConfig.load(lake).users == {"dora": UserEntry(groups=["consortium"])}
    remove_user(lake, "dora")
    assert AccessConfig.load(lake).users == {}
    with pytest.raises(NotFoundError):
        remove_user(lake, "dora")
    with pytest.raises(UsageError):
        add_user(lake, "public", [])
    with pytest.raises(UsageError):
        add_user(lake, lake.info()["owner"], [])
    with pytest.raises(UsageError):
        add_user(lake, "eve", ["Bad Group"])
    with pytest.raises(NotFoundError):
        grant(lake, "no-such-dataset", "g")
    assert revoke(lake, "no-such-dataset", "g") is False
    assert not list(lake.root.glob(".access.json.*.tmp"))


def test_config_rejects_unknown_fields_and_newer_formats(lake):
    p = lake.root / "access.json"
    p.write_text(json.dumps({"schema_name": "aivc.access", "schema_version": 1, "users": {}, "grants": {}, "admins": []}))
    with pytest.raises(LakeError) as info:
        AccessConfig.load(lake)
    assert "admins" in info.value.message
    p.write_text(json.dumps({"schema_name": "aivc.access", "schema_version": 2}))
    with pytest.raises(LakeError) as info:
        AccessConfig.load(lake)
    assert "newer" in info.value.message


# -- SQL as a principal ---------------------------------------------------------------------
@pytest.mark.parametrize("who", list(EXPECTED))
def test_every_view_shows_only_visible_datasets(alake, who):
    seen = EXPECTED[who]
    n = sum(N_CELLS[d] for d in seen)
    q = lambda sql: query(alake, sql, principal=who).rows  # noqa: E731
    assert {r[0] for r in q("SELECT dataset_id FROM datasets")} == seen
    assert q("SELECT count(*) FROM cells") == [(n,)]
    assert q("SELECT count(*) FROM cells_all_versions") == [(n,)]
    assert dict(q("SELECT dataset_id, count(*) FROM cells GROUP BY 1")) == {d: N_CELLS[d] for d in seen}
    assert q("SELECT count(*) FROM cells c JOIN datasets d USING (dataset_id)") == [(n,)]
    assert q("SELECT sum(n_cells) FROM _datasets") == [(n,)]
    assert {r[0] for r in q("SELECT DISTINCT dataset_id FROM dataset_genes")} == seen
    assert q("SELECT count(*) FROM cells WHERE obs_id LIKE 'cons@%' OR obs_id LIKE 'emb@%' OR obs_id LIKE 'lifted@%'") == [
        (sum(N_CELLS[d] for d in seen - {"pub"}),)
    ]
    # genes measured only by hidden datasets are not there, and counts of measuring datasets are visible ones
    genes, most = q("SELECT count(*), max(n_datasets_measured) FROM genes")[0]
    assert genes == (100 if seen == {"pub"} else 120)
    assert most == len(seen)


def test_hidden_files_cannot_be_read(alake):
    # carol may read what her views read ...
    assert query(alake, f"SELECT count(*) FROM read_parquet('{cells_file(alake, 'pub')}')", principal="carol").rows == [(40,)]
    # ... but not the files of hidden datasets, the lake's other files, or anything else
    refused = [
        f"SELECT * FROM read_parquet('{cells_file(alake, 'cons')}')",
        f"SELECT * FROM read_parquet('{cells_file(alake, 'emb')}')",
        f"SELECT count(*) FROM read_parquet('{alake.root}/catalog/datasets/*/v000001/cells.parquet')",
        f"SELECT * FROM read_parquet('{cells_file(alake, 'pub')}/../../../cons/v000001/cells.parquet')",
        f"SELECT * FROM read_json_auto('{alake.root}/lake.json')",
        f"SELECT * FROM read_text('{alake.root}/access.json')",
        f"SELECT * FROM glob('{alake.root}/**')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_csv('/etc/passwd')",
    ]
    for sql in refused:
        with pytest.raises(SqlError) as info:
            query(alake, sql, principal="carol")
        assert info.value.code == "SQL_REFUSED", sql
    # the owner reads every dataset's file, but still nothing outside what the views need
    assert query(alake, f"SELECT count(*) FROM read_parquet('{cells_file(alake, 'emb')}')").rows == [(20,)]
    with pytest.raises(SqlError) as info:
        query(alake, f"SELECT * FROM read_json_auto('{alake.root}/lake.json')")
    assert info.value.code == "SQL_REFUSED"


def test_unknown_principal_in_sql(alake):
    with pytest.raises(AccessDeniedError):
        query(alake, "SELECT 1", principal="mallory")


# -- CLI ----------------------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("AIVC_PRINCIPAL", None)
    return subprocess.run([sys.executable, "-m", "aivc.cli", *args], capture_output=True, text=True, env=env)


def test_cli_access(alake, tmp_path):
    # work on a copy of the lake's access file so the module's lake stays as built
    lk = str(alake.root)
    before = (alake.root / "access.json").read_text()
    try:
        add = cli("access", "add-user", "dave", "--groups", "lab-y, consortium", "--lake", lk, "--json")
        assert add.returncode == 0, add.stderr
        assert json.loads(add.stdout) == {"status": "ok", "user": "dave", "groups": ["consortium", "lab-y"], "created": True}
        g = cli("access", "grant", "emb", "--group", "lab-y", "--lake", lk, "--json")
        assert json.loads(g.stdout) == {"status": "ok", "dataset_id": "emb", "group": "lab-y", "changed": True}
        assert json.loads(cli("access", "grant", "emb", "--group", "lab-y", "--lake", lk, "--json").stdout)["changed"] is False
        listing = json.loads(cli("access", "list", "--lake", lk, "--json").stdout)
        assert [u["name"] for u in listing["users"]] == ["alice", "bob", "carol", "dave"]
        assert listing["grants"] == {"emb": ["lab-x", "lab-y"]}
        by_ds = {d["dataset_id"]: d for d in listing["datasets"]}
        owner = alake.info()["owner"]
        assert by_ds["emb"]["embargo_active"] is True and by_ds["lifted"]["embargo_active"] is False
        assert by_ds["emb"]["visible_to"] == [owner, "bob", "dave"]
        assert by_ds["cons"]["visible_to"] == [owner, "alice", "dave"]
        assert by_ds["pub"]["visible_to"] == [owner, "public", "alice", "bob", "carol", "dave"]
        sql = cli("sql", "SELECT dataset_id, count(*) AS n FROM cells GROUP BY 1 ORDER BY 1", "--principal", "dave", "--lake", lk, "--json")
        assert sql.returncode == 0, sql.stderr
        assert json.loads(sql.stdout)["rows"] == [{"dataset_id": d, "n": N_CELLS[d]} for d in ("cons", "emb", "lifted", "pub")]
        r = cli("access", "revoke", "emb", "--group", "lab-y", "--lake", lk, "--json")
        assert json.loads(r.stdout)["changed"] is True
        rm = cli("access", "remove-user", "dave", "--lake", lk, "--json")
        assert rm.returncode == 0 and json.loads(rm.stdout)["removed"] is True
        gone = cli("sql", "SELECT 1", "--principal", "dave", "--lake", lk, "--json")
        assert gone.returncode == 1
        assert json.loads(gone.stdout)["errors"][0]["code"] == "UNKNOWN_PRINCIPAL"
        again = cli("access", "remove-user", "dave", "--lake", lk)
        assert again.returncode == 1 and "no user 'dave'" in again.stderr and "Traceback" not in again.stderr
        bad = cli("access", "grant", "nope", "--group", "g", "--lake", lk, "--json")
        assert bad.returncode == 1 and json.loads(bad.stdout)["errors"][0]["code"] == "NOT_FOUND"
        human = cli("access", "list", "--lake", lk)
        assert human.returncode == 0 and "lifted" in human.stdout and "(lifted)" in human.stdout
    finally:
        (alake.root / "access.json").write_text(before)
    assert json.loads((alake.root / "access.json").read_text()) == json.loads(before)


@pytest.mark.parametrize("who", ["public", "alice"])
def test_datasets_command_lists_only_visible(alake, who):
    p = cli("datasets", "--principal", who, "--lake", str(alake.root), "--json")
    assert p.returncode == 0, p.stderr
    assert {d["id"] for d in json.loads(p.stdout)} == EXPECTED[who]
    owner = json.loads(cli("datasets", "--lake", str(alake.root), "--json").stdout)
    assert {d["id"] for d in owner} == {"pub", "cons", "emb", "lifted"}
