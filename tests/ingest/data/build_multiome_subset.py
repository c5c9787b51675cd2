"""Rebuild the ``multiome_*`` test files from the real 10x Multiome PBMC subset in ../shared.

Usage (from the repository root)::

    .venv/bin/python tests/ingest/data/build_multiome_subset.py [--src ../shared/data/pbmc10k-multiome-subset]

Provenance
----------
The source is ``../shared/data/pbmc10k-multiome-subset/`` (see its PROVENANCE.md): scverse/muon's
test data at commit 03c762e (BSD-3-Clause), 1,000 cells of the 10x Genomics public dataset
"PBMC from a healthy donor, granulocytes removed through cell sorting (10k)" (Chromium Single
Cell Multiome ATAC + Gene Expression, Cell Ranger ARC 1.0.0, GRCh38, CC BY 4.0). The script
checks the source files' sha256 (:data:`SOURCES`) before it reads them and writes:

``multiome_cells.txt``
    The 1,000 cells' barcodes (``mod['atac'].obs.index``, in order; the same as the RNA's).
``multiome_features.tsv``
    ``kind, name, id, interval``: the 45 genes of ``mod['rna'].var`` (symbol, Ensembl id and
    Cell Ranger ARC's ``interval``, which spans the gene's annotated TSSs: 1 bp for a gene
    with one) and the 174 ATAC peaks of ``mod['atac'].var`` (index = interval), in order.
``multiome_fragments.tsv.gz`` and ``.tbi``
    Every line of the source fragments file on the contigs :data:`CONTIGS`, unchanged and in
    order (cells' and background barcodes alike), written as BGZF by pysam and indexed with
    ``pysam.tabix_index(preset="bed")``. The decompressed text's sha256 is printed (and kept
    in ``multiome_PROVENANCE.md``): BGZF bytes depend on the zlib build, the text does not.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

import h5py
import pysam

HERE = Path(__file__).resolve().parent
DEFAULT_SRC = HERE.parents[2] / ".." / "shared" / "data" / "pbmc10k-multiome-subset"
#: source file -> sha256 (as in the source's PROVENANCE.md)
SOURCES = {
    "test_rna_atac.h5mu": "9f5c1943c1159e9fa494216993f00da26c138ba68d6afe37340774db739da93d",
    "test_rna_atac_fragments.tsv.gz": "e97ddd8c9e8953a5a0476f57f192b797e0d55744522cbcb3308cfe508843e952",
}
#: the contigs whose fragments are kept: 13 of the 45 genes, ~52,000 fragments (~0.5 MB)
CONTIGS = ("chr1", "chr6", "chr7", "chr9", "chr12", "chr17", "chr20")
HEADER = "# derived by tests/ingest/data/build_multiome_subset.py from ../shared/data/pbmc10k-multiome-subset/test_rna_atac.h5mu (sha256 {sha}); see multiome_PROVENANCE.md\n"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _strings(group: h5py.Group, key: str) -> list[str]:
    """A string column of an AnnData dataframe group (plain or categorical)."""
    item = group[key]
    if isinstance(item, h5py.Group):  # categorical: codes + categories
        cats = [c.decode() if isinstance(c, bytes) else str(c) for c in item["categories"][:]]
        return [cats[i] for i in item["codes"][:]]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in item[:]]


def build(src: Path, out: Path = HERE) -> dict[str, str]:
    """Write the multiome_* files into ``out``; returns file -> sha256 (fragments: of the text)."""
    for name, sha in SOURCES.items():
        got = _sha256(src / name)
        if got != sha:
            raise SystemExit(f"{src / name}: sha256 {got}, expected {sha}")
    header = HEADER.format(sha=SOURCES["test_rna_atac.h5mu"])
    with h5py.File(src / "test_rna_atac.h5mu", "r") as f:
        obs = f["mod/atac/obs"]
        cells = _strings(obs, obs.attrs["_index"])
        rna, atac = f["mod/rna/var"], f["mod/atac/var"]
        genes = list(zip(_strings(rna, rna.attrs["_index"]), _strings(rna, "gene_ids"), _strings(rna, "interval"), strict=True))
        peaks = _strings(atac, atac.attrs["_index"])
    (out / "multiome_cells.txt").write_text(header + "\n".join(cells) + "\n")
    rows = [f"gene\t{n}\t{i}\t{iv}" for n, i, iv in genes] + [f"peak\t{p}\t{p}\t{p}" for p in peaks]
    (out / "multiome_features.tsv").write_text(header + "kind\tname\tid\tinterval\n" + "\n".join(rows) + "\n")
    dest = out / "multiome_fragments.tsv.gz"
    text = hashlib.sha256()
    n = 0
    with gzip.open(src / "test_rna_atac_fragments.tsv.gz", "rb") as fin, pysam.BGZFile(str(dest), "wb") as fout:
        for line in fin:
            if line.split(b"\t", 1)[0].decode() in CONTIGS:
                fout.write(line)
                text.update(line)
                n += 1
    pysam.tabix_index(str(dest), preset="bed", force=True)
    print(f"{n:,} fragments on {', '.join(CONTIGS)}; text sha256 {text.hexdigest()}")
    return {"multiome_fragments.tsv (text)": text.hexdigest(), **{p.name: _sha256(p) for p in sorted(out.glob("multiome_*")) if p.suffix != ".md"}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC)
    for name, sha in build(parser.parse_args().src).items():
        print(f"{sha}  {name}")
