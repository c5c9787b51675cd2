"""The Ray jobs on a two-node cluster on this machine (``ray.cluster_utils.Cluster``).

``aivc train cell-vae``, ``aivc embed model`` and ``aivc annotate`` run through the CLI, as
a user runs them, with ``--ray-address`` of a head node and one worker node. The test checks
that each job's Ray actors (Ray Train workers, Ray Data actor pools) were placed on both
nodes and that their work ran there, read from the cluster's GCS tables (actors, dead ones
included, and task events, which record the node each task ran on; the state API of
``ray.util.state`` needs the dashboard, which the installed Ray cannot start), and that the
results equal a local run: training and embedding run at the same time on a local Ray over
an identical copy of the lake (same weights, same URs), and the cluster's predictions equal
those of the in-process engine with the same decoder over the same URs.

The cluster is stopped through its node handles (by the pids Ray recorded when it started
them), never with ``ray stop``, and is not advertised as this machine's current cluster:
another process's ``ray.init()`` still starts its own Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow

#: the evidence of work on a node: task events that only the job's own work produces
TRAIN_WORK = "RayTrainWorker.run_train_fn"
EMBED_ACTOR, DECODER_ACTOR = "MapWorker(MapBatches(_Embedder))", "MapWorker(MapBatches(DecoderActor))"


@dataclass
class TwoNodes:
    cluster: Any
    head: str  # node ids (hex)
    worker: str
    seen: set[str] = field(default_factory=set)  # actor ids already attributed to a job

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def new_actors(self) -> list[dict[str, Any]]:
        """The actors created since the last call (alive or dead)."""
        table = self.cluster.global_state.actor_table(None)
        new = [a for k, a in table.items() if k not in self.seen]
        self.seen.update(table)
        return new

    def work_nodes(self, job_ids: set[str], name: str, *, want: int = 2, timeout: float = 15.0) -> set[str]:
        """Node ids where tasks called ``name`` of the jobs ``job_ids`` ran (task events are
        flushed to the GCS about once a second: wait for ``want`` nodes up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = {
                e.state_updates.node_id.hex()
                for e in self.cluster.global_state._get_all_task_events()
                if e.job_id.hex() in job_ids and e.task_info.func_or_class_name == name and e.state_updates.node_id
            }
            if len(nodes) >= want or time.monotonic() > deadline:
                return nodes
            time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited


@pytest.fixture
def two_nodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[TwoNodes]:
    """A head node and one worker node, 2 CPUs and 150 MiB of object store each (on this
    machine's address: Ray resolves 127.0.0.1 to it when a driver connects)."""
    import ray._private.utils
    from ray.cluster_utils import Cluster
    from ray.experimental import internal_kv

    # Cluster writes its address to /tmp/ray/ray_current_cluster, where every ray.init()
    # without an address on this machine would find it and join it: not this one.
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
    # Starting a head node points this process's internal-KV client at the new GCS
    # (ray/_private/node.py). Left so after the cluster is gone, the next in-process Ray
    # Train run's KV calls retry the dead GCS for 60 s and then Ray ends the whole process
    # (pytest exited 1 mid-run in CI): put back the session's client when the cluster goes.
    monkeypatch.setattr(internal_kv, "global_gcs_client", internal_kv.global_gcs_client)
    monkeypatch.setattr(internal_kv, "_initialized", internal_kv._initialized)
    node = {"num_cpus": 2, "object_store_memory": 150 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        worker = cluster.add_node(**node)
        cluster.wait_for_nodes()
        nodes = TwoNodes(cluster, cluster.head_node.node_id, worker.node_id)
        nodes.new_actors()
        yield nodes
    finally:
        started = [p.process.pid for n in cluster.list_all_nodes() for ps in n.all_processes.values() for p in ps]
        try:
            actor_pids = [a["Pid"] for a in cluster.global_state.actor_table(None).values() if a["Pid"]]
        except Exception:  # noqa: BLE001 - the GCS is gone: still remove the nodes
            actor_pids = []
        cluster.global_state.disconnect()
        # what Cluster.shutdown() does, less its reset of this process's Ray globals (a
        # local Ray another test started in this process keeps working)
        for n in list(cluster.worker_nodes):
            cluster.remove_node(n)
        cluster.remove_node(cluster.head_node)
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in actor_pids) and time.monotonic() < deadline:
            time.sleep(0.5)
    assert started and not [p for p in started if _alive(p)], "raylet / GCS processes of the test cluster left running"
    assert not [p for p in actor_pids if _alive(p)], "Ray worker processes of the test cluster left running"


def _start(args: tuple[str, ...], lake: Path) -> tuple[subprocess.Popen[str], float]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled", "GX_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "aivc.cli", *args, "--lake", str(lake), "--json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env), time.monotonic()


def _result(args: tuple[str, ...], started: tuple[subprocess.Popen[str], float]) -> dict[str, Any]:
    proc, t0 = started
    try:
        out, err = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    where = "cluster" if "--ray-address" in args else "local Ray" if args[0] in ("train", "embed") else "no Ray" if args[0] == "instruments" else "in-process"
    sys.stderr.write(f"aivc {' '.join(a for a in args[:3] if not a.startswith('-'))} ({where}): {time.monotonic() - t0:.1f} s\n")
    assert proc.returncode == 0, f"aivc {' '.join(args)} failed ({proc.returncode}):\n{err[-3000:]}"
    return json.loads(out)


def _cli(*args: str, lake: Path) -> dict[str, Any]:
    return _result(args, _start(args, lake))


def _side_by_side(args: list[str], local: Path, cluster: Path, ray_at: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same command on a local Ray (lake ``local``) and on the cluster (lake ``cluster``),
    run at the same time (most of a small job is Ray starting up and waiting)."""
    a, b = tuple(args), (*args, *ray_at)
    pa, pb = _start(a, local), _start(b, cluster)
    try:
        return _result(a, pa), _result(b, pb)
    finally:  # one failed: stop the other (by its pid), leave nothing running
        for proc, _ in (pa, pb):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


#: a small cell-vae: 4 epochs over the 700 PBMC cells, 2 Ray Train workers
TRAIN = ["train", "cell-vae", "--workers", "2", "--set", "optim.epochs=4", "--set", "optim.batch_size=64", "--set", "model.hidden_dim=32", "--set", "model.latent_dim=8"]
EMBED = ["embed", "model", "cell-vae@1", "--actors", "2"]


def _weights(lake: Path, ref: str) -> dict[str, Any]:
    import torch

    from aivc.store.lake import Lake
    from aivc.training.registry import get_model, version_dir

    lk = Lake.open(lake)
    rec = get_model(lk, ref)
    return torch.load(version_dir(lk, rec.name, rec.version) / rec.weights, map_location="cpu", weights_only=True)


def _vectors(lake: Path, ref: str) -> tuple[np.ndarray, np.ndarray]:
    from aivc.store.features import read_vectors
    from aivc.store.lake import Lake

    table, vec = read_vectors(Lake.open(lake), ref)
    ids = table.column("id").to_numpy(zero_copy_only=False)
    order = np.argsort(ids)
    return ids[order], vec[order]


def test_train_embed_annotate_on_two_nodes_equal_a_local_run(tmp_path: Path, pbmc_files, two_nodes: TwoNodes) -> None:  # noqa: ANN001
    from aivc.ingest.submission import submit
    from aivc.instruments.predictions import read_predictions
    from aivc.store.lake import Lake

    base = Lake.init(tmp_path / "base")
    for h5, mf in pbmc_files:
        assert submit(base, h5, mf, report_dir=tmp_path / "reports").status == "committed"
    local, remote = tmp_path / "local", tmp_path / "cluster"
    shutil.copytree(base.root, local, symlinks=True)
    shutil.copytree(base.root, remote, symlinks=True)
    ray_at = ["--ray-address", two_nodes.address]
    both = {two_nodes.head, two_nodes.worker}

    # training, on a local Ray and on the cluster: one Ray Train worker on each node of the
    # cluster, each ran its share of the loop; the local run put nothing on the cluster
    local_train, train = _side_by_side(TRAIN, local, remote, ray_at)
    assert (train["model"], train["epochs"]) == ("cell-vae@1", 4) == (local_train["model"], local_train["epochs"])
    workers = [a for a in two_nodes.new_actors() if a["ActorClassName"] == "RayTrainWorker"]
    assert sorted(a["Address"]["NodeID"] for a in workers) == sorted(both), workers
    assert len({a["JobID"] for a in workers}) == 1
    assert two_nodes.work_nodes({a["JobID"] for a in workers}, TRAIN_WORK) == both

    # embedding: an actor pool of 2, one actor per node, each embedded a chunk
    local_emb, emb = _side_by_side(EMBED, local, remote, ray_at)
    assert emb["metrics"]["actors"] == 2 and emb["metrics"]["n_cells"] == 700
    pool = [a for a in two_nodes.new_actors() if a["ActorClassName"] == EMBED_ACTOR]
    assert sorted(a["Address"]["NodeID"] for a in pool) == sorted(both), pool
    assert len({a["JobID"] for a in pool}) == 1
    assert two_nodes.work_nodes({a["JobID"] for a in pool}, f"{EMBED_ACTOR}.submit") == both

    # the same weights and URs as the local run. Every worker runs torch on 1 thread, the
    # shards follow the worker's rank, not its node, and the gradient all-reduce of 2
    # workers adds two numbers (commutative, so the order of arrival does not matter): the
    # runs are the same computation, and equal to float32 rounding (atol 1e-6; measured: exactly equal)
    w_local, w_remote = _weights(local, "cell-vae@1"), _weights(remote, "cell-vae@1")
    assert w_local.keys() == w_remote.keys()
    diff = {k: float(np.abs(w_local[k].numpy().astype(np.float64) - w_remote[k].numpy()).max(initial=0.0)) for k in w_local}
    sys.stderr.write(f"largest weight difference local vs cluster: {max(diff.values()):.3g}\n")
    assert max(diff.values()) <= 1e-6, diff
    ids_l, vec_l = _vectors(local, local_emb["ref"])
    ids_r, vec_r = _vectors(remote, emb["ref"])
    assert emb["ref"] == local_emb["ref"] == "cell:cell_vae@1"
    assert (ids_l == ids_r).all() and vec_r.shape == (700, 8)
    sys.stderr.write(f"largest UR difference local vs cluster: {float(np.abs(vec_l - vec_r).max()):.3g}\n")
    assert np.allclose(vec_l, vec_r, rtol=0, atol=1e-5), float(np.abs(vec_l - vec_r).max())

    # annotation: a decoder on part 1's labels (no Ray), then a pool of 2 decoder actors on the
    # cluster; the same decoder over the same URs in-process gives the same predictions
    dec = _cli("instruments", "train", "celltype", "--embedding", emb["ref"], "--datasets", "pbmc68k-part1", "--hidden", "0", "--weight-decay", "0.01", "--folds", "3", lake=remote)
    ann = _cli("annotate", "--instrument", dec["ref"], "--all", "--engine", "ray", "--actors", "2", "--no-report", *ray_at, lake=remote)
    assert ann["job"]["engine"] == "ray" and ann["job"]["ray_mode"] == "actor pool of 2"
    decoders = [a for a in two_nodes.new_actors() if a["ActorClassName"] == DECODER_ACTOR]
    assert sorted(a["Address"]["NodeID"] for a in decoders) == sorted(both), decoders
    ran = two_nodes.work_nodes({a["JobID"] for a in decoders}, f"{DECODER_ACTOR}.submit", want=1)
    assert ran and ran <= both
    ref = _cli("annotate", "--instrument", dec["ref"], "--all", "--engine", "local", "--no-report", lake=remote)
    assert two_nodes.new_actors() == []
    on_cluster = read_predictions(Lake.open(remote), ann["ref"]).to_pandas().sort_values("obs_id").reset_index(drop=True)
    in_process = read_predictions(Lake.open(remote), ref["ref"]).to_pandas().sort_values("obs_id").reset_index(drop=True)
    assert len(on_cluster) == 700 and list(on_cluster.columns) == list(in_process.columns)
    assert on_cluster.drop(columns=["prediction_version"], errors="ignore").equals(in_process.drop(columns=["prediction_version"], errors="ignore"))
