#!/usr/bin/env python3
"""Rebuild the real Visium example shipped in ``schemas/examples/visium_spaceranger_1.0.0/``.

The demo and the tests submit a real Visium slide subset; nothing is downloaded at run time,
so it ships with the package. It is scanpy 1.11.5's test data (sdist
``tests/_data/visium_data/1.0.0/``, BSD-3-Clause; a 10x Genomics Space Ranger 1.0.0 output,
CC BY 4.0), copied byte for byte and checked by sha256:

``filtered_feature_bc_matrix.h5``
    100 spots x 100 genes (GRCh38 Ensembl ids; 3 are not in the GENCODE reference the lake
    maps to) of raw UMI counts, library id ``custom``.
``spatial/tissue_positions_list.csv``
    the slide's 4,992 spots (4,235 in tissue; Space Ranger 1.x layout without a header).
``spatial/scalefactors_json.json``, ``tissue_hires_image.png`` (2000 x 2000 RGBA H&E),
``tissue_lowres_image.png`` (600 x 600 RGB).

The 100 spots are a subset of the slide: it is submitted ``is_single: false``.

Usage::

    pip download --no-deps --no-binary :all: scanpy==1.11.5 -d /tmp/scanpy
    python schemas/build_visium_example.py /tmp/scanpy/scanpy-1.11.5.tar.gz
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "examples" / "visium_spaceranger_1.0.0"
SDIST_SHA256 = "b2ef5476dfb1144b7dd0fae90b0198699c7988e6b27f083904150642c7ba6b89"
ROOT = "scanpy-1.11.5/tests/_data/visium_data/1.0.0/"
MEMBERS = {
    "filtered_feature_bc_matrix.h5": "9b6cb386df8327ea7aec1d3ea87c73bac766dbf9b03003d70154c024c61f855a",
    "spatial/scalefactors_json.json": "569586afb623a0aa90aaa7997894d954ea4242e5796e9fedfed4826f6be349dc",
    "spatial/tissue_hires_image.png": "2647a9d1ac01e4269b669cc183dd0b4d0ea5c69c2de97b6c02d19d53002cc01e",
    "spatial/tissue_lowres_image.png": "7069e504911a86c16aac826194fd28a3a0883d05e7ccb84b72781635c676891d",
    "spatial/tissue_positions_list.csv": "c0703fb655e1ba42b4ad355284311635de035b947820886f41e3c4c62873d5aa",
}


def main(sdist: str) -> int:
    data = Path(sdist).read_bytes()
    if hashlib.sha256(data).hexdigest() != SDIST_SHA256:
        print(f"{sdist}: sha256 is not scanpy 1.11.5's sdist ({SDIST_SHA256})", file=sys.stderr)
        return 1
    with tarfile.open(sdist) as tar:
        for rel, sha in MEMBERS.items():
            fh = tar.extractfile(ROOT + rel)
            assert fh is not None
            body = fh.read()
            if hashlib.sha256(body).hexdigest() != sha:
                print(f"{rel}: unexpected sha256", file=sys.stderr)
                return 1
            dest = OUT / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(body)
            print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]) if len(sys.argv) == 2 else 2)
