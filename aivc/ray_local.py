"""One way to get a Ray for aivc's jobs: connect to ``--ray-address`` or start a local one.

Training (Ray Train), embedding and annotation (Ray Data) all call :func:`start_ray`; a
Ray that is already running (a test session, the demo, a benchmark) is reused as it is.
Ray Data jobs run inside :func:`data_context`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Literal

from aivc.errors import UsageError

ENGINES: tuple[str, ...] = ("auto", "ray", "local")


def pick_engine(engine: str, n_cells: int, *, local_max: int, actors: int | None = None, ray_address: str | None = None) -> tuple[Literal["ray", "local"], str]:
    """The engine a job runs on and why: an explicit ``engine`` wins; ``auto`` picks Ray for
    a cluster address (``--ray-address`` always means Ray), an actor pool, or at least
    ``local_max`` cells, else the in-process engine.

    >>> pick_engine("auto", 700, local_max=1000)
    ('local', 'auto: 700 cells < 1000')
    >>> pick_engine("auto", 700, local_max=1000, actors=2)
    ('ray', 'auto: --actors 2 asks for a Ray actor pool')
    """
    if engine in ("ray", "local"):
        if engine == "local" and ray_address:
            raise UsageError("--engine local runs in this process; it cannot use --ray-address (use --engine ray or auto)", where="--engine")
        return engine, f"--engine {engine}"  # type: ignore[return-value]
    if engine != "auto":
        raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}", where="--engine")
    if ray_address:
        return "ray", f"auto: --ray-address {ray_address} names a Ray cluster"
    if actors:
        return "ray", f"auto: --actors {actors} asks for a Ray actor pool"
    if n_cells < local_max:
        return "local", f"auto: {n_cells} cells < {local_max}"
    return "ray", f"auto: {n_cells} cells >= {local_max}"

#: how long a Ray Data actor pool may take to start all its actors (a pool the cluster
#: cannot place fails after this, instead of waiting forever)
ACTOR_START_TIMEOUT_S = 600


def start_ray(ray_address: str | None = None, *, workers: int = 1, object_store_memory: int | None = None) -> bool:
    """Connect to (or start) Ray; True when this call started it (the caller shuts it down).

    Locally: every CPU (at least ``workers``), no dashboard, a small object store
    (``object_store_memory``, default 256 MiB), authentication off, quiet logs.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING", "configure_logging": False}
    if ray_address:
        try:
            ray.init(address=ray_address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(f"cannot connect to the Ray cluster at {ray_address} ({str(exc).splitlines()[0]})", where="--ray-address") from None
        return True
    ray.init(num_cpus=max(workers, os.cpu_count() or 1), object_store_memory=object_store_memory or 256 * 1024**2, **common)
    return True


@contextlib.contextmanager
def data_context(*, preserve_order: bool = False) -> Iterator[Any]:
    """Ray Data settings for one job, restored afterwards.

    Progress bars and Ray Data's INFO logs are off (aivc shows its own progress; a failed
    job is reported once, as one line), and ``read_parquet`` takes the V1 datasource: the
    V2 file lister imports fsspec's HTTP filesystem from several threads at once, which
    fails at random when ``aiohttp`` is not installed (an ``ImportError`` Ray does not
    catch). ``preserve_order`` keeps the blocks in input order.

    Actor pools are balanced across nodes: a pool waits for all its actors before the
    first block (else the first actor up takes every block), and an actor holds one
    block at a time unless its ``ActorPoolStrategy`` says otherwise (else Ray Data's
    locality preference queues up to four blocks on an actor of the node that holds
    them: every block the driver made went to the driver's node). aivc's blocks are chunk
    descriptors or small UR batches, so nothing is lost by not queueing them.
    """
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "print_on_execution_start", "use_datasource_v2") if hasattr(ctx, k)}
    order = ctx.execution_options.preserve_order
    saved |= {"wait_for_min_actors_s": ctx.wait_for_min_actors_s, "max_tasks_in_flight_per_actor": ctx.max_tasks_in_flight_per_actor}
    log = logging.getLogger("ray.data")
    level = log.level
    try:
        for k in ("enable_progress_bars", "print_on_execution_start", "use_datasource_v2"):
            if k in saved:
                setattr(ctx, k, False)
        ctx.execution_options.preserve_order = preserve_order or order
        if ctx.wait_for_min_actors_s <= 0:
            ctx.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        ctx.max_tasks_in_flight_per_actor = ctx.max_tasks_in_flight_per_actor or 1
        log.setLevel(logging.CRITICAL)
        yield ctx
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        ctx.execution_options.preserve_order = order
        log.setLevel(level)
