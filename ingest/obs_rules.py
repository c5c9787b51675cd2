"""What each standard cell field accepts (CELLxGENE schema 7.x obs contract).

The output columns of harmonization, the literals and enumerations, the forbidden terms,
and one :class:`TermRule` per ontology field (and organism, and tissue type) saying which
ontology, which branch and which literals are valid. :mod:`aivc.ingest.obs_fields` applies
them to submitted values.

Example
-------
>>> term_rule("tissue", "NCBITaxon:9606", "primary cell culture").prefixes
('CL',)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aivc.ingest.manifest import ONTOLOGY_FIELDS
from aivc.ontology import Ontologies
from aivc.schemas.contract import contract

HUMAN = "NCBITaxon:9606"
MOUSE = "NCBITaxon:10090"
#: Delimiter of multi-term values (disease, self_reported_ethnicity) since schema 5.0.
MULTI_DELIMITER = " || "
#: The enumerations of the contract (schemas/cell_fields.yaml).
TISSUE_TYPES: tuple[str, ...] = contract().field("tissue_type").values
TissueType = Literal[TISSUE_TYPES]  # type: ignore[valid-type]
#: Accepted older spellings of tissue types (schema 7.1 renamed "cell culture").
TISSUE_TYPE_ALIASES: dict[str, TissueType] = {"cell culture": "primary cell culture"}
SUSPENSION_TYPES: tuple[str, ...] = contract().field("suspension_type").values
TERM_COLUMNS: dict[str, str] = {f: f"{f}_ontology_term_id" for f in ONTOLOGY_FIELDS}
#: Columns of :attr:`ObsResult.frame`, in order.
OUTPUT_COLUMNS: tuple[str, ...] = (
    *TERM_COLUMNS.values(),
    "tissue_type",
    "suspension_type",
    "donor_id",
    "is_primary_data",
    *ONTOLOGY_FIELDS,
)

#: CELLxGENE forbids CL:0000255, CL:0000257 and CL:0000548 (schema 7.x). aivc also refuses the
#: uninformative root CL:0000000 "cell" and the obsolete CL:0000003 "native cell" (the
#: cellxgene-schema 7.1.2 validator accepts CL:0000000; submit "unknown" or a specific type).
FORBIDDEN_CELL_TYPES: frozenset[str] = frozenset({"CL:0000000", "CL:0000003", "CL:0000255", "CL:0000257", "CL:0000548"})
#: HANCESTRO terms schema 7.0 names as forbidden (7.1 also requires descent from 0601 or 0602).
FORBIDDEN_ETHNICITIES: frozenset[str] = frozenset(
    [f"HANCESTRO:{n:04d}" for n in (2, 3, 4, 18, 290, 304, 323, 324, 551, 554, 555, 557, 558, 559, 560, 561, 564, 565, 566)]
    + [f"HANCESTRO:{n:04d}" for n in range(29, 35)]
    + ["HANCESTRO:0601", "HANCESTRO:0602"]
)


@dataclass(frozen=True)
class TermRule:
    """What one ontology field accepts (for one organism and tissue type).

    A term is valid when its prefix is in ``prefixes``, it is not in ``forbidden``, it is not
    obsolete, and, when ``roots`` or ``terms`` are given, it is one of ``terms`` or a strict
    descendant of one of ``roots``.
    """

    prefixes: tuple[str, ...]
    valid: str
    roots: tuple[str, ...] = ()
    terms: tuple[str, ...] = ()
    forbidden: frozenset[str] = frozenset()
    literals: tuple[str, ...] = ()
    multi_prefixes: tuple[str, ...] = ()
    split_commas: bool = False

    def admits(self, term_id: str, ontologies: Ontologies) -> bool:
        if not self.roots and not self.terms:
            return True
        if term_id in self.terms:
            return True
        ancestors = ontologies.ancestors(term_id)
        return any(root in ancestors for root in self.roots)


_CELL_TYPE = TermRule(
    prefixes=("CL",),
    roots=("CL:0000000",),
    forbidden=FORBIDDEN_CELL_TYPES,
    literals=("unknown",),
    valid="a CL cell type more specific than CL:0000000 (cell), or 'unknown'",
)
_RULES: dict[str, TermRule] = {
    "assay": TermRule(
        prefixes=("EFO",),
        roots=("EFO:0002772", "EFO:0010183"),
        forbidden=frozenset({"EFO:0002772", "EFO:0010183"}),
        valid="an EFO descendant of EFO:0002772 (assay by molecule) or EFO:0010183 (single cell library construction)",
    ),
    "cell_type": _CELL_TYPE,
    "development_stage/human": TermRule(
        prefixes=("HsapDv",),
        roots=("HsapDv:0000001",),
        forbidden=frozenset({"HsapDv:0000001"}),
        literals=("unknown",),
        valid="an HsapDv descendant of HsapDv:0000001 (life cycle), or 'unknown'",
    ),
    "development_stage/mouse": TermRule(
        prefixes=("MmusDv",),
        roots=("MmusDv:0000001",),
        forbidden=frozenset({"MmusDv:0000001"}),
        literals=("unknown",),
        valid="an MmusDv descendant of MmusDv:0000001 (life cycle), or 'unknown'",
    ),
    "development_stage/other": TermRule(
        prefixes=("UBERON",),
        roots=("UBERON:0000105",),
        forbidden=frozenset({"UBERON:0000105", "UBERON:0000071"}),
        literals=("unknown",),
        valid="an UBERON descendant of UBERON:0000105 (life cycle stage) other than UBERON:0000071 (death stage), or 'unknown'",
    ),
    "disease": TermRule(
        prefixes=("MONDO", "PATO"),
        roots=("MONDO:0000001", "MONDO:0021178"),
        terms=("PATO:0000461", "MONDO:0021178"),
        forbidden=frozenset({"MONDO:0000001"}),
        multi_prefixes=("MONDO",),
        valid=(
            "PATO:0000461 (normal), or MONDO descendants of MONDO:0000001 (disease) or MONDO:0021178 "
            f"(injury, itself allowed), several joined by {MULTI_DELIMITER!r}"
        ),
    ),
    "self_reported_ethnicity/human": TermRule(
        prefixes=("HANCESTRO", "AfPO"),
        roots=("HANCESTRO:0601", "HANCESTRO:0602"),
        forbidden=FORBIDDEN_ETHNICITIES,
        literals=("unknown",),
        multi_prefixes=("HANCESTRO", "AfPO"),
        split_commas=True,
        valid=(
            "HANCESTRO or AfPO descendants of HANCESTRO:0601 (ethnicity category) or HANCESTRO:0602 "
            f"(geography-based population category), several joined by {MULTI_DELIMITER!r}, or 'unknown'"
        ),
    ),
    "sex": TermRule(
        prefixes=("PATO",),
        terms=("PATO:0000383", "PATO:0000384", "PATO:0001340"),
        literals=("unknown",),
        valid="PATO:0000383 (female), PATO:0000384 (male), PATO:0001340 (hermaphrodite) or 'unknown'",
    ),
    "tissue/tissue": TermRule(
        prefixes=("UBERON",),
        roots=("UBERON:0001062",),
        forbidden=frozenset({"UBERON:0001062"}),
        valid="an UBERON descendant of UBERON:0001062 (anatomical entity)",
    ),
    "tissue/organoid": TermRule(
        prefixes=("UBERON",),
        roots=("UBERON:0001062",),
        forbidden=frozenset({"UBERON:0001062", "UBERON:0000922"}),
        valid="an UBERON descendant of UBERON:0001062 (anatomical entity) other than UBERON:0000922 (embryo)",
    ),
    "tissue/primary cell culture": TermRule(
        prefixes=("CL",),
        roots=_CELL_TYPE.roots,
        forbidden=_CELL_TYPE.forbidden,
        literals=("unknown",),
        valid="a CL cell type more specific than CL:0000000 (cell), or 'unknown' (as tissue_type is 'primary cell culture')",
    ),
}
#: Prefixes some rule uses; ids of other prefixes are refused without loading their ontology
#: (NCBITaxon alone takes ~25 s to load).
RULE_PREFIXES: frozenset[str] = frozenset(p for r in _RULES.values() for p in r.prefixes)


def term_rule(field_name: str, organism: str, tissue_type: TissueType = "tissue") -> TermRule:
    """The :class:`TermRule` of an ontology field for an organism (and, for tissue, tissue type)."""
    if field_name == "development_stage":
        kind = {HUMAN: "human", MOUSE: "mouse"}.get(organism, "other")
        return _RULES[f"development_stage/{kind}"]
    if field_name == "self_reported_ethnicity":
        return _RULES["self_reported_ethnicity/human"]
    if field_name == "tissue":
        return _RULES[f"tissue/{tissue_type}"]
    return _RULES[field_name]
