"""aivc.instruments: Virtual Instruments (decoders, manipulators), batch predictions, reports.

The names below are imported lazily (on first use), so ``import aivc.instruments.registry``
stays light and submodules can import each other freely. The batch job is
:func:`aivc.instruments.annotate.annotate` and the agreement of two terms
:func:`aivc.instruments.agreement.agreement` (their modules carry the same names).

Example
-------
>>> from aivc.instruments import train_celltype
>>> from aivc.instruments.annotate import annotate
>>> rec = train_celltype(lake, "cell:pca@1", datasets=["pbmc68k-part1"])  # doctest: +SKIP
>>> annotate(lake, rec.ref, datasets=["pbmc68k-part2"]).view_name  # doctest: +SKIP
'predictions_celltype_v1'
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "InstrumentError": "registry",
    "InstrumentRecord": "registry",
    "register_instrument": "registry",
    "register_loader": "registry",
    "list_instruments": "registry",
    "get_instrument": "registry",
    "load_instrument": "registry",
    "CellTypeConfig": "celltype_model",
    "CellTypeDecoder": "celltype_model",
    "train_celltype": "celltype",
    "PredictionVersion": "predictions",
    "list_prediction_versions": "predictions",
    "get_prediction_version": "predictions",
    "read_predictions": "predictions",
    "Agreement": "agreement",
    "RollUp": "agreement",
    "write_report": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aivc.instruments' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"aivc.instruments.{module}"), name)
    globals()[name] = value
    return value
