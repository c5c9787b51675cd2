"""Recovery of interrupted writes: run under the write lock before every write.

Removes, in this order, everything an interrupted submission may have left behind:
SOMA fragments newer than the committed high-water mark (or a whole experiment that
was never committed), staged files, artifact folders without a commit record, and
submission reports that no committed version refers to.
"""

from __future__ import annotations

from aivc.store import soma_io
from aivc.store.catalog import Catalog
from aivc.store.lake import Lake


def recover(lake: Lake) -> list[str]:
    """Bring the lake back to exactly its committed state; return what was removed."""
    catalog = Catalog(lake)
    removed: list[str] = []
    st = lake.storage
    for organism in st.children("soma")[0]:
        hw = catalog.high_water(organism)
        for r in soma_io.rollback_uncommitted(lake.soma_uri(organism), hw):
            removed.append(f"soma/{organism}/{r}")
    removed += lake.clear_staging()
    removed += catalog.remove_orphans()
    referenced = {v.submission_id for v in catalog.all_versions()}
    for d in st.children("submissions")[0]:
        if d not in referenced:
            st.delete_tree(f"submissions/{d}")
            removed.append(f"submissions/{d}")
    return removed
