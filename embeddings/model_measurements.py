"""The measurements besides RNA that a multimodal model reads when it embeds the lake's cells.

A ``cell-multimodal-vae`` model records the features of every measurement it was trained on
(``encodings["features:ADT"]``, see :func:`aivc.training.multimodal.features_of`). When it
is applied, each chosen dataset version contributes every one of those measurements that it
holds: the model's features are aligned to the version's
(:func:`aivc.training.multimodal.align_features`; a feature the version lacks is masked, as
in training, where the model saw each dataset's panel within the union; a version sharing none
of them stops the job), and its cells are flagged
present. A version without the measurement (an RNA-only dataset) flags its cells absent: the
model leaves that expert out of the cell's product of experts, so the cell is embedded from
the measurements it has, never from zeros in place of the missing ones.

:func:`plan_measurements` gives the per-measurement :class:`MeasurementInputs` of an
:class:`~aivc.embeddings.model_job.ApplyPlan`; :class:`MeasurementReader` reads one chunk's
``x_M``, ``mask_M`` and ``present_M`` (the keys of
:func:`aivc.training.multimodal_nets.batch_keys`), rows of absent cells zero and unread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aivc.errors import LakeError
from aivc.store.catalog import DatasetVersion
from aivc.store.lake import Lake
from aivc.store.measurements import get as get_measurement
from aivc.store.read import version_features


@dataclass(frozen=True)
class MeasurementInputs:
    """One measurement of a model's input over the chosen dataset versions (plan groups).

    ``col_joinids[f]``: the SOMA var joinid of model feature ``f`` (-1: no chosen version
    measured it). ``masks[g, f]``: version ``g`` measured it. ``held[g]``: version ``g``
    holds the measurement (its cells have it).
    """

    name: str
    feature_ids: tuple[str, ...]
    col_joinids: np.ndarray
    masks: np.ndarray
    held: np.ndarray


def plan_measurements(lake: Lake, rec: Any, versions: list[DatasetVersion], *, min_overlap: float) -> tuple[tuple[MeasurementInputs, ...], dict[str, Any]]:
    """Per measurement besides RNA of model ``rec``, its inputs over ``versions``, and notes:
    ``measurements`` (per dataset, the measurements it contributes, RNA first) and
    ``feature_overlap`` (per measurement and dataset, the model features it measured)."""
    from aivc.training.multimodal import OTHER_MEASUREMENTS, align_features, features_of

    feats = features_of(rec.gene_ids, rec.encodings)
    used: dict[str, list[str]] = {v.dataset_id: ["RNA"] for v in versions}
    overlap: dict[str, dict[str, Any]] = {}
    out: list[MeasurementInputs] = []
    for m in OTHER_MEASUREMENTS:
        if m not in feats:
            continue
        spec, model_feats = get_measurement(m), feats[m]
        col = np.full(len(model_feats), -1, dtype=np.int64)
        masks = np.zeros((len(versions), len(model_feats)), dtype=bool)
        held = np.zeros(len(versions), dtype=bool)
        for g, v in enumerate(versions):
            if m not in v.measured():
                continue
            df = version_features(lake, v, [spec.feature_id, "soma_joinid"], spec)
            # panels differ between datasets and the model trained on their union with per-dataset
            # masks, so any overlap is a valid input (--min-gene-overlap is about the RNA genes)
            cols = align_features(model_feats, df[spec.feature_id].astype(str).tolist(), m, min_overlap=0.0, where=v.ref)
            ok = cols >= 0
            joins = df["soma_joinid"].to_numpy(np.int64)[cols[ok]]
            clash = (col[ok] >= 0) & (col[ok] != joins)
            if clash.any():
                raise LakeError(f"{m} feature {model_feats[int(np.flatnonzero(ok)[np.flatnonzero(clash)[0]])]} has two SOMA joinids in the chosen datasets", where=v.ref)
            col[ok], masks[g], held[g] = joins, ok, True
            used[v.dataset_id].append(m)
            n = int(ok.sum())
            overlap.setdefault(m, {})[v.dataset_id] = {"features_used": n, "features_model": len(model_feats), "fraction": round(n / len(model_feats), 4), "masked": len(model_feats) - n}
        if held.any():
            out.append(MeasurementInputs(name=m, feature_ids=tuple(model_feats), col_joinids=col, masks=masks, held=held))
    return tuple(out), {"measurements": used, "feature_overlap": overlap}


class MeasurementReader:
    """``x_M``, ``mask_M``, ``present_M`` of chosen cells for one :class:`MeasurementInputs`,
    through one :class:`~aivc.store.soma_io.DenseReader` kept open."""

    def __init__(self, soma_uri: str, high_water: int, inputs: MeasurementInputs) -> None:
        from aivc.store.soma_io import DenseReader

        self.inputs = inputs
        self.valid = np.flatnonzero(inputs.col_joinids >= 0)
        self.reader = DenseReader(soma_uri, high_water, inputs.col_joinids[self.valid], measurement=get_measurement(inputs.name))

    def close(self) -> None:
        self.reader.close()

    def read(self, joinids: np.ndarray, group: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays of cells ``joinids`` (unique) of plan groups ``group``, under the model's keys."""
        from aivc.training.multimodal_nets import batch_keys

        xk, mk, pk = batch_keys(self.inputs.name)
        present = self.inputs.held[group]
        mask = self.inputs.masks[group]
        x = np.zeros((len(joinids), len(self.inputs.col_joinids)), dtype=np.float32)
        rows = np.flatnonzero(present)
        if rows.size:  # only the cells that have it are read
            x[np.ix_(rows, self.valid)] = self.reader.read(np.asarray(joinids, dtype=np.int64)[rows])
        x *= present[:, None] & mask
        return {xk: x, mk: mask, pk: present}
