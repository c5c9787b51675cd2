"""Closest-term search over ontology labels and synonyms: shared words first, spelling second.

:class:`TermSearch` ranks the label and synonym strings of one ontology against a submitted
text by two measures, both indexed once with numpy so that MONDO's ~100k strings are searched
in milliseconds:

word overlap
    :func:`label_tokens` turns a text into normalized words (lower case, split on anything
    that is not a letter or digit, plurals made singular, ``"CD14+"`` and ``"CD14-positive"``
    both read as ``"cd14"``, ``"CD16-negative"`` as ``"cd16-"``, ``"CD56-bright"`` as
    ``"cd56hi"``). A text scores the
    IDF-weighted Tversky overlap of its words with the query's, so a rare shared word
    (``cd14``) counts for much more than a common one (``cell``), a query word the text lacks
    counts against it fully and a word the query lacks half (:data:`EXTRA_WEIGHT`).
spelling
    The mean of the character-trigram Dice overlap and :class:`difflib.SequenceMatcher`'s
    ratio, which still finds typos (``"B cels"``) that share no whole word.

The score is ``WORD_WEIGHT * overlap + (1 - WORD_WEIGHT) * spelling``, in 0..1.

Example
-------
>>> label_tokens("CD14-positive, CD16-negative classical monocytes")
('cd14', 'cd16-', 'classical', 'monocyte')
>>> search = TermSearch(["cd14-positive monocyte", "monocyte"], ["CL:0001054", "CL:0000576"])
>>> [c.term_id for c in sorted(search.search("cd14 monocyte"), key=lambda c: -c.score)]
['CL:0001054', 'CL:0000576']
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["EXTRA_WEIGHT", "WORD_WEIGHT", "Candidate", "TermSearch", "label_tokens"]

#: Share of word overlap in the score (the rest is spelling similarity).
WORD_WEIGHT = 0.6
#: Weight of a text's words the query lacks, relative to the query's words the text lacks:
#: a suggestion should contain what was written; extra words cost less.
EXTRA_WEIGHT = 0.5
#: How many candidates each measure proposes before the final scoring.
_N_CANDIDATES = 40

_WORD = re.compile(r"[^\W_]+|\+|(?<=[^\W_])-$")
_SIGNED = re.compile(r"([^\W_]+)([+-])")
_SIGNED_RUN = re.compile(r"(?:[^\W_]+[+-])+")
_EDGE_PUNCTUATION = ",;:()[]{}\"'."
_POSITIVE = frozenset({"+", "positive"})
_NEGATIVE = frozenset({"-", "negative"})
#: Expression levels after a marker ("CD56-bright", "CD14-low"), folded into it as hi/lo.
_LEVELS = {"high": "hi", "hi": "hi", "bright": "hi", "low": "lo", "lo": "lo", "dim": "lo"}
_MARKER = re.compile(r"[a-z]+\d+[a-z]*")


def label_tokens(text: str) -> tuple[str, ...]:
    """The normalized words of a label, in order, without repeats.

    Lower case, split on everything but letters and digits; a plural ``-s``/``-ies`` becomes
    singular; a marker's ``positive`` or ``+`` is dropped (a bare marker means positive, as
    people write "CD14 monocyte"), its ``negative`` or ``-`` is kept as a ``-`` suffix and its
    ``high``/``bright`` or ``low``/``dim`` as ``hi``/``lo``; a number is joined to the word
    before it, however it was spelled ("COVID-19", "covid 19" and "covid19" all read ``covid19``).

    >>> label_tokens("CD4+ T-cells"), label_tokens("CD4-CD8- thymocyte")
    (('cd4', 't', 'cell'), ('cd4-', 'cd8-', 'thymocyte'))
    """
    out: list[str] = []
    for chunk in text.casefold().split():
        chunk = chunk.strip(_EDGE_PUNCTUATION)
        if _SIGNED_RUN.fullmatch(chunk):  # "cd4-cd8-", "cd8+cd28-": every marker carries its sign
            out.extend(m.group(1) + ("-" if m.group(2) == "-" else "") for m in _SIGNED.finditer(chunk))
            continue
        for word in _WORD.findall(chunk):
            if word in _POSITIVE:
                continue
            if word in _NEGATIVE:
                if out and not out[-1].endswith("-"):
                    out[-1] += "-"
                continue
            if word in _LEVELS and out and _MARKER.fullmatch(out[-1]):
                out[-1] += _LEVELS[word]
                continue
            if word == "s":  # the "s" of a possessive ("Alzheimer's")
                continue
            if word.isdigit() and out and not out[-1].endswith("-"):  # "type 2", "COVID-19", "Smart-seq2"
                out[-1] += word
                continue
            out.append(_singular(word))
    return tuple(dict.fromkeys(out))


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@dataclass(frozen=True)
class Candidate:
    """One scored label or synonym string: ``score`` in 0..1, ``coverage`` the share of the
    query's (IDF-weighted) words it contains."""

    score: float
    term_id: str
    text: str
    coverage: float


class TermSearch:
    """Word and spelling indexes over ``texts`` (normalized labels and synonyms) of ``ids``.

    Parameters
    ----------
    texts
        Normalized label and synonym strings (see :func:`aivc.ontology.normalize_text`).
    ids
        The term id each text belongs to (a term may own several texts).
    """

    def __init__(self, texts: list[str], ids: list[str]) -> None:
        self.texts = texts
        self.ids = ids
        self._words = _WordIndex(texts)
        self._trigrams = _TrigramIndex(texts)

    def search(self, query: str, k: int = _N_CANDIDATES) -> list[Candidate]:
        """Score the best candidates for a normalized query, in no particular order.

        Candidates are the ``k`` texts with the most word overlap and the ``k`` with the most
        trigram overlap; texts sharing neither a word nor a trigram are never returned.
        """
        if not self.texts or not query:
            return []
        overlap, coverage = self._words.overlap(query)
        dice = self._trigrams.dice(query)
        out: list[Candidate] = []
        for i in np.union1d(_top(overlap, k), _top(dice, k)):
            text = self.texts[i]
            ratio = difflib.SequenceMatcher(None, query, text, autojunk=False).ratio()
            spelling = 0.5 * (ratio + float(dice[i]))
            score = WORD_WEIGHT * float(overlap[i]) + (1.0 - WORD_WEIGHT) * spelling
            out.append(Candidate(score, self.ids[i], text, float(coverage[i])))
        return out


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the ``k`` highest positive scores (fewer if fewer are positive)."""
    positive = np.flatnonzero(scores > 0)
    if len(positive) <= k:
        return positive
    return positive[np.argpartition(-scores[positive], k - 1)[:k]]


class _WordIndex:
    """Inverted index word -> texts with IDF word weights, for a weighted Tversky overlap."""

    def __init__(self, texts: list[str]) -> None:
        vocab: dict[str, int] = {}
        owners: list[int] = []
        words: list[int] = []
        for i, text in enumerate(texts):
            for word in label_tokens(text):
                owners.append(i)
                words.append(vocab.setdefault(word, len(vocab)))
        self._vocab = vocab
        owner = np.asarray(owners, dtype=np.int64)
        word = np.asarray(words, dtype=np.int64)
        self._owners = owner[np.argsort(word, kind="stable")]
        df = np.bincount(word, minlength=len(vocab)).astype(np.float64)
        self._ptr = np.concatenate([[0], np.cumsum(df, dtype=np.int64)])
        n = max(len(texts), 1)
        self._idf = np.log1p(n / np.maximum(df, 1.0))
        self._unseen = float(np.log1p(n))  # the weight of a word no text has
        self._weights = np.bincount(owner, weights=self._idf[word], minlength=len(texts))

    def overlap(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """Overlap score and coverage of the query's words, for every text.

        The score is ``shared / (shared + missing + EXTRA_WEIGHT * extra)`` in IDF weights,
        where ``missing`` are the query's words the text lacks and ``extra`` the text's words
        the query lacks; ``coverage`` is ``shared / query``.
        """
        tokens = label_tokens(query)
        known = np.asarray([self._vocab[t] for t in tokens if t in self._vocab], dtype=np.int64)
        shared = np.zeros(len(self._weights), dtype=np.float64)
        if len(known) == 0:
            return shared, shared
        query_weight = float(self._idf[known].sum()) + self._unseen * (len(tokens) - len(known))
        for w in known:  # each text lists a word once, so these indexes never repeat
            shared[self._owners[self._ptr[w] : self._ptr[w + 1]]] += self._idf[w]
        missing = query_weight - shared
        extra = self._weights - shared
        return shared / (shared + missing + EXTRA_WEIGHT * extra), shared / query_weight


class _TrigramIndex:
    """Character-trigram index (a sorted posting list per trigram) for Dice overlap."""

    def __init__(self, texts: list[str]) -> None:
        self._n = len(texts)
        if not texts:
            texts = [""]  # one empty text keeps the arrays well-formed
        padded = [f"  {t} " for t in texts]
        lens = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
        n_grams = lens - 2
        chars = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32)
        # Re-code the characters present onto a small alphabet so that (text, trigram) packs
        # into one int64 and a single sort both groups and de-duplicates the postings.
        present = np.flatnonzero(np.bincount(chars))
        self._alphabet = np.full(int(present[-1]) + 1 if len(present) else 1, -1, dtype=np.int64)
        self._alphabet[present] = np.arange(len(present), dtype=np.int64)
        self._base = len(present) + 1  # the last code is for characters never seen
        if self._base**3 * len(padded) >= 2**62:  # pragma: no cover - would need ~thousands of distinct characters
            raise OverflowError("trigram index too large for int64 keys")
        small = self._alphabet[chars]
        first = np.repeat(np.cumsum(lens) - lens, n_grams)
        first += np.arange(len(first), dtype=np.int64) - np.repeat(np.cumsum(n_grams) - n_grams, n_grams)
        codes = (small[first] * self._base + small[first + 1]) * self._base + small[first + 2]
        owner = np.repeat(np.arange(len(padded), dtype=np.int64), n_grams)
        width = len(padded)
        pairs = _sorted_unique(codes * width + owner)  # by trigram, then text; duplicates gone
        codes, self._owners = np.divmod(pairs, width)
        new_gram = np.ones(len(codes), dtype=bool)
        new_gram[1:] = codes[1:] != codes[:-1]
        self._starts = np.flatnonzero(new_gram)
        self._grams = codes[self._starts]
        self._ends = np.append(self._starts[1:], len(codes))
        self._sizes = np.bincount(self._owners, minlength=width).astype(np.float64)[: self._n]

    def _codes(self, text: str) -> np.ndarray:
        chars = np.frombuffer(f"  {text} ".encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        small = np.full(len(chars), self._base - 1, dtype=np.int64)
        known = chars < len(self._alphabet)
        small[known] = self._alphabet[chars[known]]
        small[small < 0] = self._base - 1
        return _sorted_unique((small[:-2] * self._base + small[1:-1]) * self._base + small[2:])

    def dice(self, query: str) -> np.ndarray:
        """Trigram Dice overlap of the query with every text (0 where none is shared)."""
        qcodes = self._codes(query)
        slot = np.searchsorted(self._grams, qcodes).clip(0, len(self._grams) - 1)
        slot = slot[self._grams[slot] == qcodes]
        if len(slot) == 0 or self._n == 0:
            return np.zeros(self._n, dtype=np.float64)
        owners = np.concatenate([self._owners[s:e] for s, e in zip(self._starts[slot], self._ends[slot], strict=True)])
        hits = np.bincount(owners, minlength=self._n).astype(np.float64)
        return 2.0 * hits / (len(qcodes) + self._sizes)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    # np.sort + adjacent compare: numpy 2.x's np.unique can be ~20x slower on large int arrays.
    values = np.sort(values)
    if len(values) == 0:
        return values
    keep = np.ones(len(values), dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]
