"""The store conformance suite: the same contract on every lake backend (Feast style).

Every test runs twice, on a local folder lake and on an ``s3://`` lake served by a local moto
server (the ``lake_uri`` fixture), and drives the real CLI in fresh subprocesses, as a user or
a script would: ``aivc init``, ``submit``, ``datasets``, ``sql``, ``export`` and, in the slow
end-to-end test, ``embed``, ``neighbors``, ``train``, ``instruments train`` and ``annotate``.
What readers see is checked through the CLI (``datasets --json``, ``sql --json``) and through a
plain ``tiledbsoma.Experiment.open`` of the lake's experiment, with no aivc code involved.

Select the suite with ``-m conformance``, one backend with ``-k local`` or ``-k s3``, and the
quick part with ``-m "conformance and not slow"``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import base_manifest, lake_snapshot
from tests.s3server import MotoServer

if TYPE_CHECKING:
    import anndata

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(900)]

ORGANISM = "homo_sapiens"
CLI_TIMEOUT = 600.0
#: dataset list fields compared between the backends (committed_at differs from run to run)
DATASET_FIELDS = ("id", "version", "current", "n_cells", "n_genes", "access")


# -- driving the CLI on one lake ---------------------------------------------------------------
@dataclass
class LakeDriver:
    """One lake under test: its URI, the folder the CLI runs in, and the S3 server (s3 only)."""

    uri: str
    cwd: Path
    s3: MotoServer | None

    # the CLI
    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "aivc.cli", *args, "--lake", self.uri]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "RAY_AUTH_MODE": "disabled", "GX_ANALYTICS_ENABLED": "False", **(extra or {})}

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), check=False, capture_output=True, text=True, env=self.env(env), cwd=self.cwd, timeout=timeout)

    def json(self, *args: str, expect: int = 0, env: dict[str, str] | None = None) -> Any:
        p = self.run(*args, "--json", env=env)
        assert p.returncode == expect, f"aivc {' '.join(args)} on {self.uri} exited {p.returncode} (expected {expect}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
        return json.loads(p.stdout)

    def popen_submit(self, h5: Path, mf: Path, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.cmd("submit", str(h5), "--manifest", str(mf), "--json", *extra),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env(), cwd=self.cwd,
        )

    def init(self) -> dict[str, Any]:
        return self.json("init")

    def submit(self, h5: Path, mf: Path, *extra: str) -> dict[str, Any]:
        out = self.json("submit", str(h5), "--manifest", str(mf), *extra)
        assert out["status"] == "committed", out
        return out

    # what readers see
    def datasets(self) -> list[tuple[Any, ...]]:
        rows = self.json("datasets")
        return sorted(tuple(d[k] for k in DATASET_FIELDS) for d in rows)

    def sql(self, query: str) -> list[dict[str, Any]]:
        return self.json("sql", query)["rows"]

    def per_dataset(self) -> list[tuple[str, int]]:
        """``(dataset_id, cells)`` of the current versions, by ``aivc sql`` over ``cells``."""
        return [(r["dataset_id"], r["n"]) for r in self.sql("SELECT dataset_id, count(*) AS n FROM cells GROUP BY 1 ORDER BY 1")]

    def visible(self) -> tuple[list[tuple[Any, ...]], list[tuple[str, int]]]:
        """What a reader of the lake sees: the dataset versions and the cells per dataset."""
        return self.datasets(), self.per_dataset()

    # the storage underneath, without aivc
    @property
    def soma_uri(self) -> str:
        return f"{self.uri}/soma/{ORGANISM}"

    def _bucket_prefix(self) -> tuple[str, str]:
        bucket, _, prefix = self.uri.removeprefix("s3://").partition("/")
        return bucket, prefix.strip("/")

    def plain_obs(self) -> list[str]:
        """The experiment's obs ids, read with nothing but ``tiledbsoma.Experiment.open``."""
        import tiledbsoma

        ctx = tiledbsoma.SOMATileDBContext(tiledb_config=self.s3.tiledb_config()) if self.s3 else None
        with tiledbsoma.Experiment.open(self.soma_uri, context=ctx) as exp:
            ids = exp.obs.read(column_names=["obs_id"]).concat()["obs_id"].to_pylist()
            assert int(exp.obs.count) == len(ids)
        return sorted(ids)

    def objects(self) -> dict[str, str]:
        """Every stored object of the lake: relative path -> content hash (sha256 or ETag)."""
        if self.s3 is None:
            return {k: v for k, v in lake_snapshot(Path(self.uri)).items() if v != "dir"}
        return {key: etag for key, etag in self._s3_listing("")}

    def keys(self, under: str) -> set[str]:
        """The names of the stored objects under ``under`` (a path inside the lake), cheaply."""
        if self.s3 is None:
            root = Path(self.uri) / under
            return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()
        return {key for key, _ in self._s3_listing(under)}

    def _s3_listing(self, under: str) -> list[tuple[str, str]]:
        assert self.s3 is not None
        bucket, prefix = self._bucket_prefix()
        base = "/".join(p for p in (prefix, under.strip("/")) if p) + "/"
        out: list[tuple[str, str]] = []
        for page in self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            out += [(o["Key"][len(base):], o["ETag"]) for o in page.get("Contents", [])]
        return out


@pytest.fixture
def lk(lake_uri: str, tmp_path: Path, request: pytest.FixtureRequest) -> LakeDriver:
    """A driver for a fresh, initialised lake on the backend of this parametrization."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    s3 = request.getfixturevalue("s3_server") if lake_uri.startswith("s3://") else None
    drv = LakeDriver(lake_uri, cwd, s3)
    out = drv.init()
    assert (out["status"], out["lake"], out["schema_name"], out["schema_version"]) == ("ok", lake_uri, "aivc.lake", 1)
    return drv


def _read(h5: Path) -> anndata.AnnData:
    import anndata as ad

    return ad.read_h5ad(h5)


def _committed(out: dict[str, Any], dataset_id: str, version: int, n_cells: int, n_genes: int = 120) -> None:
    assert (out["status"], out["dataset_id"], out["version"], out["n_cells"], out["n_genes"]) == ("committed", dataset_id, version, n_cells, n_genes)


def _obs_ids(ref: str, h5: Path) -> list[str]:
    return [f"{ref}:{c}" for c in _read(h5).obs_names]


# -- the contract ------------------------------------------------------------------------------
def test_init_is_idempotent(lk: LakeDriver):
    first = lk.init()
    again = lk.init()
    assert first["created_at"] == again["created_at"] and again["lake"] == lk.uri
    assert lk.visible() == ([], [])
    assert "lake.json" in lk.objects()


def test_submit_list_query_export_and_a_new_version(lk: LakeDriver, write_submission, human_genes, tmp_path: Path):
    import numpy as np

    h5, mf = write_submission()
    _committed(lk.submit(h5, mf), "synth-a", 1, 60)
    src = _read(h5)
    assert lk.datasets() == [("synth-a", 1, True, 60, 120, "public")]
    assert lk.sql("SELECT count(*) AS n FROM cells") == [{"n": 60}]
    # SQL over cells gives exactly the submitted metadata, harmonized, and the counts' totals
    rows = lk.sql("SELECT donor_id, cell_type, dataset_version AS v, count(*) AS n, sum(n_counts) AS umis FROM cells GROUP BY ALL")
    label = {"Bcell": "B cell", "Tcell": "T cell"}
    want = Counter(zip(src.obs["donor"], src.obs["label"].map(label), strict=True))
    assert {(r["donor_id"], r["cell_type"]): r["n"] for r in rows} == dict(want)
    assert {r["v"] for r in rows} == {1} and sum(r["umis"] for r in rows) == float(src.X.sum())
    # a plain TileDB-SOMA reader sees the committed cells
    assert lk.plain_obs() == sorted(_obs_ids("synth-a@1", h5))

    # a second version of the same dataset: current moves, the old one stays readable
    h5b, mfb = write_submission(seed=1, n_cells=45)
    _committed(lk.submit(h5b, mfb), "synth-a", 2, 45)
    assert lk.datasets() == [("synth-a", 1, False, 60, 120, "public"), ("synth-a", 2, True, 45, 120, "public")]
    assert lk.per_dataset() == [("synth-a", 45)]
    rows = lk.sql("SELECT dataset_version AS v, count(*) AS n FROM cells_all_versions GROUP BY 1 ORDER BY 1")
    assert [(r["v"], r["n"]) for r in rows] == [(1, 60), (2, 45)]
    assert lk.plain_obs() == sorted(_obs_ids("synth-a@1", h5) + _obs_ids("synth-a@2", h5b))

    # export of version 1: exactly its cells, genes and counts
    out = tmp_path / "synth-a-v1.h5ad"
    ex = lk.json("export", "synth-a@1", "-o", str(out))
    assert (ex["status"], ex["dataset_id"], ex["version"], ex["n_cells"], ex["n_genes"]) == ("ok", "synth-a", 1, 60, 120)
    got = _read(out)
    sym2id = dict(zip(human_genes["symbol"], human_genes["gene_id"], strict=True))
    assert list(got.obs_names) == list(src.obs_names)
    assert sorted(got.var_names) == sorted(sym2id[s] for s in src.var_names)
    x_got = got[:, [sym2id[s] for s in src.var_names]].X
    np.testing.assert_array_equal(np.asarray(x_got.todense()), np.asarray(src.X.todense()))
    assert list(got.obs["donor_id"]) == list(src.obs["donor"])


def test_rejected_submission_leaves_the_lake_unchanged(lk: LakeDriver, write_submission, tmp_path: Path):
    before, objects = lk.visible(), lk.objects()
    m = base_manifest("synth-bad")
    m["obs"]["cell_type"] = {"value": "UBERON:0000178"}  # a tissue term where a cell type belongs
    h5, mf = write_submission(manifest=m)
    out = lk.json("submit", str(h5), "--manifest", str(mf), "--report-dir", str(tmp_path / "rep"), expect=1)
    assert (out["status"], out["version"]) == ("rejected", None)
    assert out["errors"][0]["code"] == "OBS_WRONG_ONTOLOGY"
    assert (tmp_path / "rep" / "report.json").is_file()
    assert lk.visible() == before == ([], [])
    assert lk.objects() == objects  # not one object written, changed or removed


def test_crashed_submits_leave_nothing_visible_and_a_retry_commits(lk: LakeDriver, write_submission):
    """The first commit of an organism dies twice (its SOMA experiment and artifacts exist when
    it dies): readers see nothing, and the retry commits. (Dying while appending to a committed
    experiment: ``test_sigkill_while_writing_then_retry``.)"""
    h5, mf = write_submission()
    for point in ("before_record", "after_soma_write"):  # the second run also finds the first one's leftovers
        p = lk.run("submit", str(h5), "--manifest", str(mf), "--json", env={"AIVC_FAULT": point})
        assert p.returncode == 97, f"{point}: exit {p.returncode}\n{p.stderr[-3000:]}"
        assert lk.visible() == ([], []), point
    _committed(lk.submit(h5, mf), "synth-a", 1, 60)
    assert lk.visible() == ([("synth-a", 1, True, 60, 120, "public")], [("synth-a", 60)])
    # the retry's recovery removed every orphan: plain readers see exactly the committed cells
    assert lk.plain_obs() == sorted(_obs_ids("synth-a@1", h5))


def test_sigkill_while_writing_then_retry(lk: LakeDriver, write_submission):
    h5a, mfa = write_submission()
    lk.submit(h5a, mfa)
    before = lk.visible()
    soma_before = lk.keys("soma")
    h5b, mfb = write_submission(dataset_id="synth-big", seed=5, n_cells=3000)
    proc = lk.popen_submit(h5b, mfb, "--chunk-rows", "100")
    still_running = False
    try:
        # wait until it is writing: new SOMA objects appear (validation comes first)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and not lk.keys("soma") - soma_before:
            time.sleep(0.02)
        still_running = proc.poll() is None
        if still_running:
            os.kill(proc.pid, signal.SIGKILL)  # the submit alone (it starts no children)
    finally:
        if proc.poll() is None:  # also on an error while waiting: never leave it behind
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert still_running, f"the submit ended (exit {proc.returncode}) before it was seen writing:\n{err[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert lk.keys("soma") - soma_before, "killed before any SOMA object was written"
    assert lk.visible() == before
    _committed(lk.submit(h5b, mfb), "synth-big", 1, 3000)
    assert lk.per_dataset() == [("synth-a", 60), ("synth-big", 3000)]
    assert lk.plain_obs() == sorted(_obs_ids("synth-a@1", h5a) + _obs_ids("synth-big@1", h5b))


def test_concurrent_submits_both_commit(lk: LakeDriver, write_submission):
    subs = [write_submission(dataset_id=f"conc-{i}", seed=10 + i, n_cells=n) for i, n in enumerate((300, 200))]
    procs = [lk.popen_submit(h5, mf) for h5, mf in subs]
    outs = [p.communicate(timeout=CLI_TIMEOUT) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert json.loads(out)["status"] == "committed"
    assert lk.datasets() == [("conc-0", 1, True, 300, 120, "public"), ("conc-1", 1, True, 200, 120, "public")]
    rows = lk.sql("SELECT dataset_id, count(*) AS n, min(soma_joinid) AS lo, max(soma_joinid) AS hi FROM cells GROUP BY 1 ORDER BY 1")
    assert [(r["dataset_id"], r["n"]) for r in rows] == [("conc-0", 300), ("conc-1", 200)]
    assert all(r["hi"] - r["lo"] + 1 == r["n"] for r in rows)  # each one's cells in one block
    spans = sorted((r["lo"], r["hi"]) for r in rows)
    assert spans[0][1] < spans[1][0]  # one after the other: the lake lock serialized them
    assert lk.plain_obs() == sorted(_obs_ids("conc-0@1", subs[0][0]) + _obs_ids("conc-1@1", subs[1][0]))


# -- end to end --------------------------------------------------------------------------------
TINY_VAE = ["optim.epochs=2", "optim.batch_size=32", "model.hidden_dim=16", "model.latent_dim=4", "data.chunk_rows=64"]


@pytest.mark.slow
def test_end_to_end_submit_embed_train_annotate(lk: LakeDriver, write_submission):
    import numpy as np

    h5, mf = write_submission(n_cells=120)
    lk.submit(h5, mf)
    pca = lk.json("embed", "pca", "--n-components", "8", "--n-top-genes", "100")
    assert (pca["status"], pca["ref"], pca["dim"], pca["n_rows"]) == ("published", "cell:pca@1", 8, 120)

    # neighbours of one cell: exactly the cosine ranking of the stored vectors
    rows = lk.sql("SELECT obs_id, vector FROM cell_pca_v1 ORDER BY obs_id")
    ids = [r["obs_id"] for r in rows]
    vec = np.asarray([r["vector"] for r in rows], dtype=np.float64)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    q = ids.index("synth-a@1:cell-0000")
    sims = vec @ vec[q]
    sims[q] = -np.inf
    nb = lk.json("neighbors", "cell:pca@1", "synth-a@1:cell-0000", "--k", "5")
    assert [n["obs_id"] for n in nb["neighbors"]] == [ids[i] for i in np.argsort(-sims, kind="stable")[:5]]
    np.testing.assert_allclose([n["similarity"] for n in nb["neighbors"]], np.sort(sims)[::-1][:5], atol=1e-4)

    # a small model, trained on the lake and applied to it
    sets = [a for kv in TINY_VAE for a in ("--set", kv)]
    model = lk.json("train", "cell-vae", *sets)
    assert (model["status"], model["model"], model["epochs"]) == ("registered", "cell-vae@1", 2)
    assert np.isfinite(model["metrics"]["train_loss"]) and np.isfinite(model["metrics"]["validation_loss"])
    emb = lk.json("embed", "model", "cell-vae@1")
    assert (emb["status"], emb["ref"], emb["dim"], emb["n_rows"]) == ("published", "cell:cell_vae@1", 4, 120)
    assert lk.sql("SELECT count(*) AS n, min(len(vector)) AS d FROM cell_cell_vae_v1")[0] == {"n": 120, "d": 4}

    # a cell-type decoder over the model's URs, then batch reannotation
    dec = lk.json("instruments", "train", "celltype", "--embedding", "cell:cell_vae@1", "--folds", "3", "--hidden", "0", "--weight-decay", "0.01")
    assert (dec["status"], dec["ref"], dec["reads"], dec["classes"]) == ("registered", "celltype@1", "cell:cell_vae@1", 2)
    ann = lk.json("annotate", "--instrument", "celltype@1", "--all", "--engine", "local")
    assert (ann["status"], ann["ref"], ann["n_rows"], ann["summary"]["n_cells"]) == ("published", "predictions:celltype@1", 120, 120)
    pred = lk.sql("SELECT count(*) AS n, count(DISTINCT predicted_label) <= 2 AS ok FROM predictions_celltype_v1")[0]
    assert pred == {"n": 120, "ok": True}
    assert lk.datasets() == [("synth-a", 1, True, 120, 120, "public")]
