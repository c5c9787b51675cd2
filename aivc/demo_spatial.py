"""The demo's spatial part: a real Visium slide subset, its niches, and the manifest it needs.

The Visium sample ships in ``schemas/examples/visium_spaceranger_1.0.0`` (scanpy 1.11.5's
Space Ranger 1.0.0 test data: 100 spots x 100 genes, the real H&E images, the slide's
tissue positions; see ``schemas/build_visium_example.py``). It is a subset of a slide, so it
is submitted with ``is_single: false`` and every spot ``is_primary_data: false``, as
CELLxGENE requires.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

#: the Space Ranger folder the demo submits
VISIUM_EXAMPLE = Path(str(resources.files("aivc.schemas").joinpath("examples", "visium_spaceranger_1.0.0")))
VISIUM_DATASET = "visium-sample"


def visium_manifest(dataset_id: str = VISIUM_DATASET, *, is_primary: bool = False, **over: Any) -> dict[str, Any]:
    """The manifest of the demo's Visium submission, with top-level keys replaced by ``over``."""
    m: dict[str, Any] = {
        "dataset_id": dataset_id,
        "title": "Visium 100-spot sample of a human slide (Space Ranger 1.0.0; scanpy test data)",
        "license": "CC-BY-4.0",
        "access": "public",
        "organism": "NCBITaxon:9606",
        "counts": "X",
        "genes": {"id_type": "ensembl"},
        "spatial": {"technology": "visium", "is_single": False},
        "qc": {"min_mapped_fraction": 0.8},
        "obs": {
            "assay": {"value": "EFO:0022857"},
            "cell_type": {"value": "unknown"},
            "development_stage": {"value": "unknown"},
            "disease": {"value": "normal"},
            "self_reported_ethnicity": {"value": "unknown"},
            "sex": {"value": "unknown"},
            "tissue": {"value": "UBERON:0000955"},
            "suspension_type": {"value": "na"},
            "donor_id": {"value": "visium-donor"},
            "is_primary_data": {"value": is_primary},
        },
    }
    return {**m, **over}
