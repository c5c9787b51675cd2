"""One way to get a Ray for aivc's jobs: connect to ``--ray-address`` or start a local one.

Training (Ray Train), embedding and annotation (Ray Data) all call :func:`start_ray`; a
Ray that is already running (a test session, the demo, a benchmark) is reused as it is.
"""

from __future__ import annotations

import os
from typing import Any

from aivc.errors import UsageError


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
