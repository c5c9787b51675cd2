"""Offline ontology service: term lookup, label resolution and hierarchy checks.

Everything is read from the ontology files that ``cellxgene-ontology-guide`` ships (CL, UBERON,
EFO, MONDO, NCBITaxon, HANCESTRO with AfPO, HsapDv, MmusDv, PATO, ...), pinned to one CELLxGENE
schema version; nothing touches the network. Each ontology file is decompressed on first use
(CL 0.03 s, UBERON 0.2 s, EFO 0.06 s, MONDO 0.2 s; NCBITaxon takes about 25 s, so callers
should avoid looking up NCBITaxon ids they do not need).

Example
-------
>>> onto = get_ontologies()
>>> onto.label("CL:0000236")
'B cell'
>>> onto.resolve_label("B-lymphocyte", ("CL",)).term_id
'CL:0000236'
>>> onto.is_descendant_of("CL:0000236", "CL:0000542")  # B cell is a lymphocyte
True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from aivc.errors import NotFoundError
from aivc.term_search import Candidate, TermSearch

#: Values CELLxGENE allows in term-id columns that are not ontology terms.
NON_ONTOLOGY_VALUES: frozenset[str] = frozenset({"unknown", "na"})

_TERM_ID = re.compile(r"^([A-Za-z][A-Za-z0-9]*):(\S+)$")
# ``consider`` entries come in several spellings: "CL:0000001", "obo.HsapDv_0000264",
# "http://purl.obolibrary.org/obo/BTO_0000895".
_OBO_REF = re.compile(r"^(?:obo\.|https?://purl\.obolibrary\.org/obo/)([A-Za-z][A-Za-z0-9]*)_(\w+)$")

MatchHow = Literal["label", "synonym"]

#: Score (0..1, see :mod:`aivc.term_search`) below which a term is not offered as a "closest"
#: suggestion; unrelated strings score below ~0.1, typos ~0.35-0.5, shared words more.
MIN_SIMILARITY = 0.25
#: How many of the best-scored terms :meth:`Ontologies.closest` re-orders by generality.
_GENERALITY_POOL = 20
#: ... and moves a term before a descendant that scores at most this much more.
_GENERALITY_MARGIN = 0.15


def normalize_text(text: str) -> str:
    """Case-fold and collapse whitespace: the key used for label and synonym matching.

    >>> normalize_text("  B   Cell ")
    'b cell'
    """
    return " ".join(text.casefold().split())


def term_prefix(term_id: str) -> str | None:
    """The ontology prefix of ``PREFIX:local`` ids, else ``None``.

    >>> term_prefix("CL:0000236"), term_prefix("B cell")
    ('CL', None)
    """
    m = _TERM_ID.match(term_id)
    return m.group(1) if m else None


#: The article each shipped prefix takes, as it is read aloud: letter by letter ("an EFO",
#: "an NCBITaxon", "a CL") or as a word ("a MONDO", "an UBERON", as CELLxGENE writes it).
_ARTICLES: dict[str, str] = {
    "AfPO": "an", "CHEBI": "a", "CL": "a", "CVCL": "a", "EFO": "an", "FBbt": "an", "FBdv": "an",
    "HANCESTRO": "a", "HsapDv": "an", "MONDO": "a", "MmusDv": "an", "NCBITaxon": "an", "PATO": "a",
    "UBERON": "an", "UniProt": "a", "WBbt": "a", "WBls": "a", "ZFA": "a", "ZFS": "a",
}


def with_article(prefix: str) -> str:
    """``prefix`` with its indefinite article, for messages such as "is an EFO term".

    Other prefixes are read letter by letter when short and in capitals (letters whose names
    start with a vowel sound take "an"), else as a word.

    >>> with_article("EFO"), with_article("CL"), with_article("UBERON"), with_article("MONDO")
    ('an EFO', 'a CL', 'an UBERON', 'a MONDO')
    >>> with_article("SO"), with_article("GO"), with_article("Orphanet")
    ('an SO', 'a GO', 'an Orphanet')
    """
    article = _ARTICLES.get(prefix)
    if article is None:
        spelt = prefix.isupper() and len(prefix) <= 4
        article = "an" if prefix[:1].upper() in ("AEFHILMNORSX" if spelt else "AEIOU") else "a"
    return f"{article} {prefix}"


@dataclass(frozen=True)
class TermInfo:
    """What the pinned ontology says about one term.

    Parameters
    ----------
    term_id
        The CURIE, e.g. ``"CL:0000236"``.
    ontology
        The id's prefix, e.g. ``"CL"`` (``"AfPO"`` for AfPO terms shipped inside HANCESTRO).
    label
        The term's label; some obsolete terms have an empty label.
    deprecated
        Whether the term is obsolete.
    replaced_by
        For obsolete terms, the replacement id if the ontology names one (it may belong to an
        ontology that is not shipped, e.g. ``"CLO:0000019"``).
    synonyms
        Exact synonyms, as shipped.
    consider
        For obsolete terms without a replacement, ids the ontology suggests instead.
    """

    term_id: str
    ontology: str
    label: str
    deprecated: bool
    replaced_by: str | None
    synonyms: tuple[str, ...] = ()
    consider: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelMatch:
    """The result of :meth:`Ontologies.resolve_label`.

    ``term_id`` is set when exactly one current term has the text as its label (``how="label"``)
    or, failing that, as a synonym (``how="synonym"``). When several terms match, ``term_id``
    is ``None`` and ``candidates`` lists them all. ``closest`` holds ``(id, label)`` of the terms
    whose label or synonym is most similar to the text, best first, when the text is unmatched
    or ambiguous.
    """

    term_id: str | None
    how: MatchHow | None
    candidates: tuple[str, ...] = ()
    closest: tuple[tuple[str, str], ...] = ()

    @property
    def ambiguous(self) -> bool:
        return self.term_id is None and len(self.candidates) > 1


@dataclass
class _LabelIndex:
    """Exact label and synonym maps of the current (non-obsolete) terms of one prefix."""

    labels: dict[str, list[str]]
    synonyms: dict[str, list[str]]
    fuzzy: TermSearch | None = None


class Ontologies:
    """Offline access to the ontologies pinned by one CELLxGENE schema version.

    Parameters
    ----------
    schema_version
        CELLxGENE schema version whose ontology releases to use (``"7.1.0"``); ``None`` picks
        the newest the installed ``cellxgene-ontology-guide`` ships.

    Notes
    -----
    Ontology files are loaded lazily, one per prefix, the first time a term of that prefix is
    looked up. Lookups, ancestor sets and label indexes are cached, so repeated calls are cheap.
    """

    def __init__(self, schema_version: str | None = None) -> None:
        from cellxgene_ontology_guide.supported_versions import CXGSchema

        self._schema = CXGSchema(version=schema_version) if schema_version else CXGSchema()
        self._sources: dict[str, str] = {name: name for name in self._schema.supported_ontologies}
        for imported, source in self._schema.imported_ontologies.items():
            self._sources.setdefault(imported, source)
        self._terms: dict[str, TermInfo | None] = {}
        self._ancestors: dict[str, frozenset[str]] = {}
        self._indexes: dict[str, _LabelIndex] = {}

    @property
    def schema_version(self) -> str:
        """The CELLxGENE schema version whose ontology releases are loaded."""
        return str(self._schema.version)

    @property
    def prefixes(self) -> frozenset[str]:
        """Every term prefix this service can look up (e.g. ``CL``, ``AfPO``, ``NCBITaxon``)."""
        return frozenset(self._sources)

    def supports(self, prefix: str) -> bool:
        """Whether ids with this prefix can be looked up (without loading anything)."""
        return prefix in self._sources

    def ontology_version(self, prefix: str) -> str:
        """The pinned release of the ontology that holds ``prefix`` terms, e.g. ``'v2026-03-26'``."""
        return str(self._schema.supported_ontologies[self._source(prefix)]["version"])

    # -- raw data -------------------------------------------------------------------------

    def _source(self, prefix: str) -> str:
        try:
            return self._sources[prefix]
        except KeyError:
            known = ", ".join(sorted(self._sources))
            raise NotFoundError(
                f"no shipped ontology has the prefix {prefix!r}; known prefixes: {known}",
                where="ontology",
                code="ONTOLOGY_UNKNOWN",
            ) from None

    def _data(self, prefix: str) -> Mapping[str, Any]:
        data: Mapping[str, Any] = self._schema.ontology(self._source(prefix))
        return data

    def _raw(self, term_id: str) -> Mapping[str, Any] | None:
        prefix = term_prefix(term_id)
        if prefix is None or prefix not in self._sources:
            return None
        raw: Mapping[str, Any] | None = self._data(prefix).get(term_id)
        return raw

    # -- terms ----------------------------------------------------------------------------

    def lookup(self, term_id: str) -> TermInfo | None:
        """Describe ``term_id``, or return ``None`` if no shipped ontology defines it.

        >>> get_ontologies().lookup("CL:0000054").replaced_by
        'CL:0000062'
        """
        try:
            return self._terms[term_id]
        except KeyError:
            pass
        raw = self._raw(term_id)
        info: TermInfo | None = None
        if raw is not None:
            info = TermInfo(
                term_id=term_id,
                ontology=term_id.split(":", 1)[0],
                label=str(raw.get("label") or ""),
                deprecated=bool(raw.get("deprecated", False)),
                replaced_by=raw.get("replaced_by") or None,
                synonyms=tuple(raw.get("synonyms") or ()),
                consider=tuple(_clean_ref(c) for c in raw.get("consider") or ()),
            )
        self._terms[term_id] = info
        return info

    def _require(self, term_id: str) -> TermInfo:
        info = self.lookup(term_id)
        if info is None:
            raise NotFoundError(
                f"{term_id!r} is not a term of any shipped ontology (schema {self.schema_version})",
                where="ontology",
                code="ONTOLOGY_TERM_UNKNOWN",
            )
        return info

    def label(self, term_id: str) -> str:
        """The label of ``term_id``; ``"unknown"`` and ``"na"`` are returned as they are.

        Raises
        ------
        NotFoundError
            If the term is unknown (``code == "ONTOLOGY_TERM_UNKNOWN"``).
        """
        if term_id in NON_ONTOLOGY_VALUES:
            return term_id
        return self._require(term_id).label

    def ancestors(self, term_id: str) -> frozenset[str]:
        """All ancestors of ``term_id`` (excluding itself), as the shipped closure lists them.

        Obsolete terms have no ancestors. ``"unknown"`` and ``"na"`` have none either.

        Raises
        ------
        NotFoundError
            If the term is unknown.
        """
        if term_id in NON_ONTOLOGY_VALUES:
            return frozenset()
        cached = self._ancestors.get(term_id)
        if cached is not None:
            return cached
        self._require(term_id)
        raw = self._raw(term_id)
        result = frozenset((raw or {}).get("ancestors") or ())
        self._ancestors[term_id] = result
        return result

    def is_descendant_of(self, term_id: str, ancestor_id: str, include_self: bool = True) -> bool:
        """Whether ``term_id`` lies under ``ancestor_id``; unknown terms are under nothing.

        >>> get_ontologies().is_descendant_of("CL:0000236", "CL:0000236")
        True
        >>> get_ontologies().is_descendant_of("CL:0000236", "CL:0000236", include_self=False)
        False
        """
        if term_id == ancestor_id:
            return include_self and self.lookup(term_id) is not None
        if self.lookup(term_id) is None:
            return False
        return ancestor_id in self.ancestors(term_id)

    # -- labels ---------------------------------------------------------------------------

    def _index(self, prefix: str) -> _LabelIndex:
        index = self._indexes.get(prefix)
        if index is not None:
            return index
        labels: dict[str, list[str]] = {}
        synonyms: dict[str, list[str]] = {}
        head = prefix + ":"
        for term_id, raw in self._data(prefix).items():
            if not term_id.startswith(head) or raw.get("deprecated"):
                continue
            label = raw.get("label")
            if label:
                labels.setdefault(normalize_text(label), []).append(term_id)
            for syn in raw.get("synonyms") or ():
                synonyms.setdefault(normalize_text(syn), []).append(term_id)
        index = _LabelIndex(
            labels={k: sorted(set(v)) for k, v in labels.items()},
            synonyms={k: sorted(set(v)) for k, v in synonyms.items()},
        )
        self._indexes[prefix] = index
        return index

    def _fuzzy(self, prefix: str) -> TermSearch:
        index = self._index(prefix)
        if index.fuzzy is None:
            texts: list[str] = []
            ids: list[str] = []
            for table in (index.labels, index.synonyms):
                for text, term_ids in table.items():
                    for term_id in term_ids:
                        texts.append(text)
                        ids.append(term_id)
            index.fuzzy = TermSearch(texts, ids)
        return index.fuzzy

    def build_indexes(self, prefixes: Iterable[str], *, fuzzy: bool = True) -> None:
        """Build the label (and, with ``fuzzy``, closest-term) indexes now rather than lazily."""
        for prefix in prefixes:
            if fuzzy:
                self._fuzzy(prefix)
            else:
                self._index(prefix)

    def resolve_label(self, text: str, ontologies: tuple[str, ...], *, n_closest: int = 3) -> LabelMatch:
        """Find the current term whose label, else synonym, is ``text``.

        Matching ignores case and repeated whitespace, and only considers non-obsolete terms
        whose prefix is in ``ontologies``. An exact label match wins over synonym matches.

        Parameters
        ----------
        text
            A submitted label, e.g. ``"B-lymphocyte"``.
        ontologies
            Prefixes to search, e.g. ``("CL",)`` or ``("MONDO", "PATO")``.
        n_closest
            How many similar terms to suggest when the text is unmatched or ambiguous.

        Raises
        ------
        NotFoundError
            If a prefix is not shipped (``code == "ONTOLOGY_UNKNOWN"``).

        Examples
        --------
        >>> m = get_ontologies().resolve_label("b  CELL", ("CL",))
        >>> (m.term_id, m.how)
        ('CL:0000236', 'label')
        """
        key = normalize_text(text)
        if not key:
            return LabelMatch(None, None)
        prefixes = tuple(dict.fromkeys(ontologies))
        indexes = [self._index(p) for p in prefixes]
        hows: tuple[MatchHow, MatchHow] = ("label", "synonym")
        for how in hows:
            found = sorted({t for ix in indexes for t in (ix.labels if how == "label" else ix.synonyms).get(key, ())})
            if len(found) == 1:
                return LabelMatch(found[0], how)
            if found:
                return LabelMatch(None, None, tuple(found), self.closest(text, prefixes, n=n_closest))
        return LabelMatch(None, None, (), self.closest(text, prefixes, n=n_closest))

    def closest(self, text: str, ontologies: tuple[str, ...], n: int = 3) -> tuple[tuple[str, str], ...]:
        """``(id, label)`` of the ``n`` current terms with the most similar label or synonym.

        Terms are ranked by :class:`aivc.term_search.TermSearch` (shared words, weighted by
        rarity, then spelling), each by its best label or synonym. A term ranks at least as
        high as any of its descendants that contains no more of the submitted words and scores
        at most :data:`_GENERALITY_MARGIN` higher:
        "CD4 T cell" names CD4-positive, alpha-beta T cell before its subtypes "Th1 CD4+ T cell"
        or "CD4-positive helper T cell".

        >>> get_ontologies().closest("B cels", ("CL",), n=1)
        (('CL:0000236', 'B cell'),)
        >>> get_ontologies().closest("CD14 monocyte", ("CL",), n=1)
        (('CL:0001054', 'CD14-positive monocyte'),)
        """
        key = normalize_text(text)
        if not key or n <= 0:
            return ()
        best: dict[str, Candidate] = {}
        for prefix in dict.fromkeys(ontologies):
            for c in self._fuzzy(prefix).search(key):
                if c.score >= MIN_SIMILARITY and c.score > getattr(best.get(c.term_id), "score", -1.0):
                    best[c.term_id] = c
        ranked = sorted(best.values(), key=lambda c: (-c.score, c.term_id))[:_GENERALITY_POOL]
        lifted: dict[str, float] = {}
        for a in ranked:  # a term with no fewer of the words, and nearly as close, goes before its descendants
            below = [
                b.score
                for b in ranked
                if b.coverage <= a.coverage + 1e-9
                and b.score - a.score <= _GENERALITY_MARGIN
                and a.term_id in self.ancestors(b.term_id)
            ]
            lifted[a.term_id] = max([a.score, *below])
        order = sorted(ranked, key=lambda c: (-lifted[c.term_id], len(self.ancestors(c.term_id)), -c.score, c.term_id))
        return tuple((c.term_id, self.label(c.term_id)) for c in order[:n])


def _clean_ref(ref: str) -> str:
    m = _OBO_REF.match(ref)
    return f"{m.group(1)}:{m.group(2)}" if m else ref


@lru_cache(maxsize=1)
def get_ontologies() -> Ontologies:
    """The process-wide :class:`Ontologies` for the newest shipped schema version."""
    return Ontologies()
