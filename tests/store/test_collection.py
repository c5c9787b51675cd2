"""The one versioned collection: references, the name rule, stage-and-commit publish."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

import pytest

from aivc.errors import NotFoundError, UsageError
from aivc.store.collection import Collection, Ref, check_name, parse_ref, sql_name
from aivc.store.lake import Lake
from aivc.store.records import dump_record, load_record

SCHEMA = "aivc.test_thing"


@dataclass(frozen=True)
class Thing:
    entity: str
    name: str
    version: int
    payload: str = ""

    def to_record(self) -> dict[str, Any]:
        return dump_record(self, SCHEMA)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> Thing:
        return load_record(cls, d, SCHEMA)


def things(lake: Lake) -> Collection[Thing]:
    return Collection(lake, folder="things", kinds=("cell", "gene"), record_name="_version.json", load=Thing.from_record, what="thing", hint="aivc things")


def _publish(lake: Lake, entity: str, name: str, payload: str = "") -> Thing:
    staging = lake.new_staging()
    (staging / "part.txt").write_text(payload)
    return things(lake).publish(staging, entity, name, lambda v: Thing(entity, name, v, payload))


@pytest.mark.parametrize(
    ("text", "kinds", "want"),
    [
        ("cell:pca@2", ("cell", "gene"), Ref("cell", "pca", 2)),
        ("cell:pca", ("cell", "gene"), Ref("cell", "pca", None)),
        ("gene:co_expr@latest", ("cell", "gene"), Ref("gene", "co_expr", None)),
        ("cell-vae@3", ("model",), Ref("model", "cell-vae", 3)),
        ("model:cell-vae", ("model",), Ref("model", "cell-vae", None)),
        ("predictions:celltype@1", ("predictions",), Ref("predictions", "celltype", 1)),
    ],
)
def test_one_reference_syntax(text, kinds, want):
    assert parse_ref(text, kinds=kinds) == want
    assert parse_ref(str(want), kinds=kinds) == want  # str() round-trips


@pytest.mark.parametrize(
    ("text", "kinds", "message"),
    [
        ("pca@1", ("cell", "gene"), "thing reference 'pca@1' must look like KIND:NAME[@VERSION]"),
        ("niche:x@1", ("cell", "gene"), "thing reference 'niche:x@1': 'niche' is not one of cell, gene"),
        ("cell:Bad@1", ("cell", "gene"), "must look like"),
        ("cell:pca@v1", ("cell", "gene"), "must look like"),
        ("cell:[pca]", ("cell", "gene"), "must look like"),
    ],
)
def test_bad_references_say_the_form(text, kinds, message):
    with pytest.raises(UsageError) as info:
        parse_ref(text, kinds=kinds, what="thing reference")
    assert message in info.value.message and "\n" not in info.value.message


def test_one_name_rule_and_sql_names():
    for ok in ("pca", "cell-vae", "pbmc_vae2", "a" * 41):
        assert check_name(ok) == ok
    for bad in ("", "Pca", "1pca", "a" * 42, "a b", "a.b", "a/b", "../x"):
        with pytest.raises(UsageError, match="must start with a lower-case letter"):
            check_name(bad)
    assert sql_name("cell-vae") == "cell_vae"


def test_publish_numbers_versions_and_get_picks(tmp_path):
    lake = Lake.init(tmp_path / "lake")
    c = things(lake)
    assert c.list() == [] and c.latest() == []
    a1, a2 = _publish(lake, "cell", "pca", "one"), _publish(lake, "cell", "pca", "two")
    g1 = _publish(lake, "gene", "pca", "gene")
    assert (a1.version, a2.version, g1.version) == (1, 2, 1)  # numbered per kind and name
    assert (c.version_dir("cell", "pca", 2) / "part.txt").read_text() == "two"
    assert c.get("cell:pca") == a2 and c.get("cell:pca@1") == a1 and c.get("gene:pca@latest") == g1
    assert [(t.entity, t.version) for t in c.latest()] == [("cell", 2), ("gene", 1)]
    assert [t.version for t in c.list("cell", "pca")] == [1, 2]
    with pytest.raises(NotFoundError, match=r"thing cell:pca has no version 7 \(versions: 1, 2\)"):
        c.get("cell:pca@7")
    with pytest.raises(NotFoundError, match="no thing cell:umap in this lake; `aivc things` shows them"):
        c.get("cell:umap")
    # a name whose SQL identifier another name already has is refused, and nothing is published
    _publish(lake, "cell", "pca-x")
    staging = lake.new_staging()
    with pytest.raises(UsageError, match="would share SQL names with 'pca-x'"):
        c.publish(staging, "cell", "pca_x", lambda v: Thing("cell", "pca_x", v))
    assert [t.name for t in c.list("cell")] == ["pca", "pca", "pca-x"]
    lake.discard_staging(staging)


def test_a_crash_before_the_rename_publishes_nothing(tmp_path):
    lake = Lake.init(tmp_path / "lake")
    _publish(lake, "cell", "pca", "one")
    script = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(os.getcwd())!r})
        from aivc.store.lake import Lake
        from tests.store.test_collection import things, Thing
        lake = Lake.open({str(lake.root)!r})
        st = lake.new_staging()
        (st / "part.txt").write_text("half")
        things(lake).publish(st, "cell", "pca", lambda v: Thing("cell", "pca", v, "half"), fault="before_thing_publish", fault_exit=41)
        """
    )
    env = {**os.environ, "AIVC_FAULT": "before_thing_publish"}
    assert subprocess.run([sys.executable, "-c", script], env=env, check=False).returncode == 41
    c = things(lake)
    assert [t.version for t in c.list()] == [1]  # version 2 is not visible
    from aivc.store.recovery import recover

    recover(lake)
    assert not any(p.is_dir() for p in lake.staging_dir.iterdir())  # the half-written folder is gone
    assert _publish(lake, "cell", "pca", "retry").version == 2  # and the retry succeeds


def test_dataset_refs_take_the_collection_syntax_too():
    from aivc.errors import UsageError
    from aivc.store.catalog import parse_ref as dataset_ref

    assert dataset_ref("pbmc") == ("pbmc", None) and dataset_ref("pbmc@2") == ("pbmc", 2)
    assert dataset_ref("dataset:pbmc@2") == ("pbmc", 2) and dataset_ref("pbmc@latest") == ("pbmc", None)
    assert dataset_ref("10x-pbmc@1") == ("10x-pbmc", 1)  # dataset ids may start with a digit
    with pytest.raises(UsageError, match="a number or 'latest'"):
        dataset_ref("pbmc@newest")
