"""The shipped human<->mouse one-to-one ortholog table: real pairs, both directions, provenance, rebuild."""

from __future__ import annotations

import gzip
import hashlib
import re
from importlib import resources
from pathlib import Path

import pytest

from aivc.errors import NotFoundError
from aivc.schemas import build_orthologs
from aivc.store.reference import gene_reference, orthologs

WHEEL_DIR = Path("/tmp/ctdl")
WHEEL_GLOB = f"celltypist-{build_orthologs.DEFAULT_VERSION}-*.whl"
ORTHOLOGS = resources.files("aivc.schemas").joinpath("orthologs")

# (human gene_id, human symbol, mouse gene_id, mouse symbol), checked against the GENCODE tables below
KNOWN = [
    ("ENSG00000010610", "CD4", "ENSMUSG00000023274", "Cd4"),
    ("ENSG00000141510", "TP53", "ENSMUSG00000059552", "Trp53"),
    ("ENSG00000081237", "PTPRC", "ENSMUSG00000026395", "Ptprc"),
    ("ENSG00000198888", "MT-ND1", "ENSMUSG00000064341", "mt-Nd1"),
]


def test_known_pairs_both_directions():
    hs, mm = gene_reference("homo_sapiens"), gene_reference("mus_musculus")
    h2m = orthologs("homo_sapiens", "mus_musculus").set_index("from_gene_id")
    m2h = orthologs("mus_musculus", "homo_sapiens").set_index("from_gene_id")
    for h_id, h_sym, m_id, m_sym in KNOWN:
        assert hs.loc[h_id, "symbol"] == h_sym and mm.loc[m_id, "symbol"] == m_sym
        assert h2m.loc[h_id].tolist() == [m_id, h_sym, m_sym]
        assert m2h.loc[m_id].tolist() == [h_id, m_sym, h_sym]


def test_table_is_one_to_one_and_ids_exist():
    df = orthologs("homo_sapiens", "mus_musculus")
    assert list(df.columns) == ["from_gene_id", "to_gene_id", "from_symbol", "to_symbol"]
    assert len(df) > 15000
    assert df["from_gene_id"].is_unique and df["to_gene_id"].is_unique
    assert df["from_gene_id"].is_monotonic_increasing
    assert df["from_gene_id"].str.fullmatch(r"ENSG\d{11}").all()
    assert df["to_gene_id"].str.fullmatch(r"ENSMUSG\d{11}").all()
    hs, mm = gene_reference("homo_sapiens"), gene_reference("mus_musculus")
    # every id is in the shipped gene tables and the symbols are the tables' symbols
    assert (hs.loc[df["from_gene_id"], "symbol"].to_numpy() == df["from_symbol"].to_numpy()).all()
    assert (mm.loc[df["to_gene_id"], "symbol"].to_numpy() == df["to_symbol"].to_numpy()).all()
    # and each symbol used is carried by exactly one gene in its table
    assert not df["from_symbol"].isin(hs["symbol"][hs["symbol"].duplicated()]).any()
    assert not df["to_symbol"].isin(mm["symbol"][mm["symbol"].duplicated()]).any()


def test_directions_are_inverses():
    h2m = orthologs("homo_sapiens", "mus_musculus")
    m2h = orthologs("mus_musculus", "homo_sapiens")
    assert len(h2m) == len(m2h)
    assert m2h["from_gene_id"].is_monotonic_increasing
    fwd = set(h2m.itertuples(index=False, name=None))
    back = {(b, a, bs, as_) for a, b, as_, bs in m2h.itertuples(index=False, name=None)}
    assert fwd == back
    # mapping there and back is the identity
    there = dict(zip(h2m["from_gene_id"], h2m["to_gene_id"]))
    back_map = dict(zip(m2h["from_gene_id"], m2h["to_gene_id"]))
    assert all(back_map[m] == h for h, m in there.items())


def test_taxon_ids_and_returned_copies():
    by_name = orthologs("homo_sapiens", "mus_musculus")
    by_taxon = orthologs("NCBITaxon:9606", "NCBITaxon:10090")
    assert by_taxon.equals(by_name)
    by_name.iloc[0, 0] = "mutated"
    by_name.drop(index=by_name.index[1:], inplace=True)
    again = orthologs("homo_sapiens", "mus_musculus")
    assert again.equals(by_taxon) and again.iloc[0, 0] != "mutated"


@pytest.mark.parametrize(
    ("a", "b"),
    [("homo_sapiens", "danio_rerio"), ("danio_rerio", "mus_musculus"), ("homo_sapiens", "homo_sapiens"), ("human", "mouse")],
)
def test_unsupported_pair(a, b):
    with pytest.raises(NotFoundError) as exc:
        orthologs(a, b)
    assert repr(a) in str(exc.value) and repr(b) in str(exc.value)
    assert "homo_sapiens <-> mus_musculus" in str(exc.value)


def test_shipped_file_matches_provenance():
    data = ORTHOLOGS.joinpath("human_mouse.tsv.gz").read_bytes()
    prov = ORTHOLOGS.joinpath("PROVENANCE.md").read_text(encoding="utf-8")
    m = re.search(r"^\| `human_mouse\.tsv\.gz` \| `([0-9a-f]{64})` \| (\d+) \|$", prov, re.M)
    assert m, "output row missing from PROVENANCE.md"
    assert hashlib.sha256(data).hexdigest() == m.group(1)
    assert int(m.group(2)) == len(orthologs("homo_sapiens", "mus_musculus"))
    one_to_one = re.search(r"^\| one-to-one .* \| (\d+) \|$", prov, re.M)
    assert one_to_one and int(one_to_one.group(1)) == int(m.group(2))
    assert data[4:8] == b"\0\0\0\0" and not data[3] & 0x08  # gzip mtime=0, no file name
    header = gzip.decompress(data).decode("utf-8").split("\n", 1)[0]
    assert header == "\t".join(build_orthologs.HEADER)


TINY_CSV = b"""A,a
B,b1
B,b2
AMB,x
C,missing
D,
,e
C2,c
D2,c
E,amb
F,f
G,g1
G,gone
"""
TINY_HUMAN = build_orthologs.symbol_index([
    ("ENSG00000000010", "A"), ("ENSG00000000020", "B"), ("ENSG00000000031", "AMB"), ("ENSG00000000032", "AMB"),
    ("ENSG00000000040", "C"), ("ENSG00000000041", "C2"), ("ENSG00000000042", "D2"), ("ENSG00000000050", "D"),
    ("ENSG00000000060", "E"), ("ENSG00000000001", "F"), ("ENSG00000000070", "G"),
])
TINY_MOUSE = build_orthologs.symbol_index([
    ("ENSMUSG00000000010", "a"), ("ENSMUSG00000000021", "b1"), ("ENSMUSG00000000022", "b2"),
    ("ENSMUSG00000000030", "x"), ("ENSMUSG00000000040", "c"), ("ENSMUSG00000000061", "amb"),
    ("ENSMUSG00000000062", "amb"), ("ENSMUSG00000000001", "f"), ("ENSMUSG00000000070", "g1"),
])


def check_core_on_tiny_csv() -> None:
    data, rows, counts = build_orthologs.convert(TINY_CSV, TINY_HUMAN, TINY_MOUSE)
    assert build_orthologs.convert(TINY_CSV, TINY_HUMAN, TINY_MOUSE)[0] == data  # deterministic bytes
    assert data[4:8] == b"\0\0\0\0" and not data[3] & 0x08
    # kept: A-a, F-f (sorted first by human id), G-g1 (its other partner 'gone' is unknown in mouse)
    assert rows == [
        ["ENSG00000000001", "ENSMUSG00000000001", "F", "f"],
        ["ENSG00000000010", "ENSMUSG00000000010", "A", "a"],
        ["ENSG00000000070", "ENSMUSG00000000070", "G", "g1"],
    ]
    assert gzip.decompress(data).decode("utf-8") == "\t".join(build_orthologs.HEADER) + "\n" + "".join(
        "\t".join(r) + "\n" for r in rows
    )
    assert counts == {
        "source_rows": 13, "both_symbols": 11, "human_unknown": 0, "human_ambiguous": 1,
        "mouse_unknown": 2, "mouse_ambiguous": 1,
        "mapped": 7,  # A-a, B-b1, B-b2, C2-c, D2-c, F-f, G-g1
        "one_to_one": 3, "one_to_one_with_dropped_partner": 1,
    }
    with pytest.raises(ValueError, match="line 1: expected 2 fields"):
        build_orthologs.convert(b"A,a,extra\n", TINY_HUMAN, TINY_MOUSE)


def test_build_core_on_tiny_csv():
    check_core_on_tiny_csv()


def test_build_regenerates_shipped_bytes(tmp_path):
    wheels = sorted(WHEEL_DIR.glob(WHEEL_GLOB))
    if not wheels:  # no network in tests: fall back to the script's core on an in-memory CSV
        check_core_on_tiny_csv()
        return
    result = build_orthologs.build(wheels[0], build_orthologs.DEFAULT_VERSION, tmp_path)
    assert (tmp_path / "human_mouse.tsv.gz").read_bytes() == ORTHOLOGS.joinpath("human_mouse.tsv.gz").read_bytes()
    assert result["rows"] == len(orthologs("homo_sapiens", "mus_musculus"))

    def undated(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("Generated ")]

    assert undated((tmp_path / "PROVENANCE.md").read_text(encoding="utf-8")) == undated(
        ORTHOLOGS.joinpath("PROVENANCE.md").read_text(encoding="utf-8")
    )
