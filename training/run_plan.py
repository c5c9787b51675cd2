"""What a training run trains on: its plan, a gene-token model's gene table, the model's init.

One loop serves every model type (``cfg.model_type``, built with
:func:`aivc.training.models.model_class`). A model with ``gene_tokens`` (``cell-transformer``)
reads genes through gene URs, which live in the feature store (:mod:`aivc.store.features`,
read with :func:`~aivc.store.features.gene_table`). The driver resolves ``cfg.gene_ur`` to one
exact version (:func:`build_run_plan`), keeps only the genes that have a vector in it, records
the version in the run and in the registered model's ``lineage.gene_ur``, reads the vectors in
plan gene order (:func:`run_gene_table`) and hands them to every worker, which sets them as the
model's (non-persistent) gene table. A ``cell-multimodal-vae`` run's plan adds its other
measurements (:mod:`aivc.training.multimodal_data`), saved beside the RNA plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aivc.errors import UsageError
from aivc.store.features import GeneTable, gene_table
from aivc.store.lake import Lake
from aivc.training.config import TrainingConfig
from aivc.training.errors import TrainingError

#: fewest plan genes with a gene UR that a ``gene_tokens`` model (cell-transformer) trains on
MIN_GENE_TOKENS = 50


def build_run_plan(lake: Lake, cfg: TrainingConfig) -> tuple[Any, str | None]:
    """The run's training plan and, for a ``gene_tokens`` model, the exact gene UR ref.

    A gene-token model trains only on genes with a UR in ``cfg.gene_ur`` (read from the
    feature store); the most variable genes (``data.n_top_genes``) are chosen among those.
    """
    from dataclasses import replace

    import numpy as np
    import pandas as pd

    from aivc.training.data import build_plan, top_genes
    from aivc.training.models import model_class

    from aivc.training.multimodal import MODEL_TYPE

    if cfg.model_type == MODEL_TYPE:  # RNA plus the other measurements, saved together
        from aivc.training.multimodal_data import build_multimodal_plan

        return build_multimodal_plan(lake, cfg), None  # type: ignore[arg-type]
    if not getattr(model_class(cfg.model_type), "gene_tokens", False):
        return build_plan(lake, cfg.data, cfg.seed), None
    assert cfg.gene_ur is not None  # the config requires it
    plan = build_plan(lake, cfg.data.model_copy(update={"n_top_genes": None}), cfg.seed)
    table = gene_table(lake, cfg.gene_ur, plan.gene_ids)
    keep = np.isin(np.asarray(plan.gene_ids, dtype=object), np.asarray(table.gene_ids, dtype=object))
    if int(keep.sum()) < MIN_GENE_TOKENS:
        raise UsageError(
            f"only {int(keep.sum())} of the {plan.n_genes} genes of the training data have a vector in {table.ref}; "
            f"{cfg.model_type} needs at least {MIN_GENE_TOKENS} (use gene URs computed over these datasets)",
            where="gene_ur",
        )
    plan = replace(plan, gene_ids=tuple(np.asarray(plan.gene_ids, dtype=object)[keep]), gene_joinids=plan.gene_joinids[keep], masks=plan.masks[:, keep])
    n_top = cfg.data.n_top_genes
    if n_top is not None and n_top < plan.n_genes:
        genes = pd.DataFrame({"gene_id": list(plan.gene_ids), "soma_joinid": plan.gene_joinids})
        top = top_genes(lake, plan.datasets, plan.high_water, plan.cells, genes, plan.masks, n_top, cfg.data.chunk_rows)
        if top.size < MIN_GENE_TOKENS:  # only genes that vary are kept
            raise UsageError(f"only {top.size} of the genes with a vector in {table.ref} vary across the cells; {cfg.model_type} needs at least {MIN_GENE_TOKENS}", where="data.n_top_genes")
        plan = replace(plan, gene_ids=tuple(plan.gene_ids[i] for i in top), gene_joinids=plan.gene_joinids[top], masks=plan.masks[:, top])
    return plan, table.ref


def model_init(cfg: TrainingConfig, plan: Any, table: GeneTable | None, plan_dir: Path | None = None) -> dict[str, Any]:
    """The JSON-able constructor arguments of the run's model (registered as ``init``).

    A ``cell-multimodal-vae`` run's come from the measurement plan saved in ``plan_dir``
    (feature counts per measurement and the starting biases of its training cells).
    """
    from aivc.training.multimodal import MODEL_TYPE, CellMultimodalVaeConfig

    if isinstance(cfg, CellMultimodalVaeConfig) and cfg.model_type == MODEL_TYPE:
        from aivc.training import multimodal
        from aivc.training.multimodal_data import load_measurements

        if plan_dir is None:
            raise TrainingError(f"{MODEL_TYPE} needs the run's plan folder to read its measurement plan")
        mm = load_measurements(plan_dir, plan)
        return multimodal.model_init(cfg, mm.n_features(), plan.n_batches, mm.init_stats)
    if table is None:
        return {"n_genes": plan.n_genes, "n_batches": plan.n_batches, **cfg.model.model_dump()}
    return {"gene_dim": table.dim, **cfg.model.model_dump()}


def run_gene_table(lake: Lake, plan: Any, gene_ur: str | None, rdir: Path) -> GeneTable | None:
    """The gene table of a gene-token run (the URs of ``gene_ur`` in plan gene order), else None."""
    if gene_ur is None:
        return None
    table = gene_table(lake, gene_ur, plan.gene_ids)
    if table.gene_ids != plan.gene_ids:
        raise TrainingError(f"{table.ref} has no vector for some genes of the run's plan", where=str(rdir))
    return table
