"""Gene tables: the gene URs a gene-token model (``cell-transformer``) reads as its tokens.

:func:`gene_table` is the feature store's
:class:`~aivc.training.gene_tokens.GeneTableReader`: training sits below the feature
store and never reads it, so callers hand this function to
:func:`aivc.training.trainer.train` and :func:`aivc.training.registry.load_model`
(``gene_tables=gene_table``) for a gene-token model.
"""

from __future__ import annotations

from collections.abc import Sequence

from aivc.embeddings.store import get_version, parse_ref, read_vectors
from aivc.errors import UsageError
from aivc.store.lake import Lake
from aivc.training.gene_tokens import GeneTable


def gene_table(lake: Lake, ref: str, gene_ids: Sequence[str], *, dim: int | None = None) -> GeneTable:
    """The URs in ``ref`` of those ``gene_ids`` that have one, in the order given.

    ``ref`` must name a gene embedding (``gene:NAME[@VERSION]``; no version: the latest,
    returned exactly in ``GeneTable.ref``); ``dim``, when given, must be its width.

    Examples
    --------
    >>> t = gene_table(lake, "gene:coexpr@1", plan.gene_ids, dim=32)  # doctest: +SKIP
    >>> model.set_gene_table(torch.from_numpy(t.vectors))  # doctest: +SKIP
    """
    entity = parse_ref(ref)[0]
    if entity != "gene":
        raise UsageError(f"gene_ur {ref!r} is a {entity} embedding; gene tokens need a gene embedding, e.g. gene:coexpr@1", where="gene_ur")
    version = get_version(lake, ref)
    if dim is not None and version.dim != dim:
        raise UsageError(f"gene_ur {version.ref} has {version.dim}-dimensional vectors but the model takes {dim}; use the gene embedding it was trained with", where="gene_ur")
    table, vectors = read_vectors(lake, version, ids=list(gene_ids))
    pos = {g: i for i, g in enumerate(table.column("id").to_pylist())}
    keep = tuple(g for g in gene_ids if g in pos)
    return GeneTable(ref=version.ref, gene_ids=keep, vectors=vectors[[pos[g] for g in keep]].reshape(len(keep), version.dim), dim=version.dim)

