"""Recovery of interrupted writes: run under the write lock before every write.

Removes, in this order, everything an interrupted submission may have left behind:
SOMA fragments newer than the committed high-water mark (or a whole experiment that
was never committed), staged files, artifact folders without a commit record, and
submission reports that no committed version refers to.
"""

from __future__ import annotations

import shutil

from aivc.store import soma_io
from aivc.store.catalog import Catalog
from aivc.store.lake import Lake


def recover(lake: Lake) -> list[str]:
    """Bring the lake back to exactly its committed state; return what was removed."""
    catalog = Catalog(lake)
    removed: list[str] = []
    soma_root = lake.root / "soma"
    if soma_root.is_dir():
        for exp in sorted(p for p in soma_root.iterdir() if p.is_dir()):
            hw = catalog.high_water(exp.name)
            for r in soma_io.rollback_uncommitted(str(exp), hw):
                removed.append(f"soma/{exp.name}/{r}")
    removed += lake.clear_staging()
    removed += catalog.remove_orphans()
    referenced = {v.submission_id for v in catalog.all_versions()}
    subs = lake.root / "submissions"
    if subs.is_dir():
        for d in subs.iterdir():
            if d.is_dir() and d.name not in referenced:
                shutil.rmtree(d)
                removed.append(f"submissions/{d.name}")
    return removed
