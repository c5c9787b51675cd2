"""Gene tokens: how a gene-token model (``cell-transformer``) gets the URs of its genes.

A model with ``gene_tokens`` reads each gene as its molecular UR from one gene embedding
version (``gene:NAME@VERSION``). Those versions live in the feature store
(:mod:`aivc.embeddings`), the layer above training, so training never reads them itself:
:func:`~aivc.training.trainer.train` and :func:`~aivc.training.registry.load_model` take
a :class:`GeneTableReader` from their caller, normally
:func:`aivc.embeddings.gene_tables.gene_table`.

Example
-------
>>> from aivc.embeddings.gene_tables import gene_table  # doctest: +SKIP
>>> train(lake, cfg, gene_tables=gene_table)  # doctest: +SKIP
>>> module, rec = load_model(lake, "cell-transformer@1", gene_tables=gene_table)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aivc.errors import UsageError

if TYPE_CHECKING:
    from aivc.store.lake import Lake

#: where the one-line error of a missing reader points
READER_ARG = "gene_tables"


@dataclass(frozen=True)
class GeneTable:
    """Gene URs of some genes from one gene embedding version (the tokens of a
    ``gene_tokens`` model): ``vectors[i]`` is the UR of ``gene_ids[i]``."""

    ref: str
    gene_ids: tuple[str, ...]
    vectors: Any  # numpy float32 [len(gene_ids), dim]
    dim: int


class GeneTableReader(Protocol):
    """Reads a :class:`GeneTable`: the URs in ``ref`` of those ``gene_ids`` that have one,
    in the order given, ``GeneTable.ref`` the exact version read; ``dim``, when given,
    must be the version's width (see :func:`aivc.embeddings.gene_tables.gene_table`)."""

    def __call__(self, lake: Lake, ref: str, gene_ids: Sequence[str], *, dim: int | None = None) -> GeneTable: ...


def require_reader(reader: GeneTableReader | None, model_type: str) -> GeneTableReader:
    """``reader``, or a one-line ``UsageError`` when a ``model_type`` with gene tokens got none."""
    if reader is None:
        raise UsageError(
            f"{model_type} reads its genes as gene URs: pass {READER_ARG}=aivc.embeddings.gene_tables.gene_table (a GeneTableReader)",
            where=READER_ARG,
        )
    return reader

