"""The one versioned collection: what the lake publishes, referenced ``kind:name@version``.

Everything the lake publishes after ingestion (cell / gene / niche URs, models,
instruments, prediction versions) is a :class:`Collection` of immutable versions stored
the same way::

    <lake>/<folder>/[<kind>/]<name>/v000001/<record>   the version's record (JSON, self-describing)
                                           …            its files (Parquet parts, weights, report)

and referenced with one syntax (:func:`parse_ref`): ``kind:name@version``, where
``@latest`` or no ``@`` means the newest version and the ``kind:`` prefix may be left out
where a collection has one kind (``cell-vae@2`` is ``model:cell-vae@2``). Names follow
one rule (:data:`NAME_RULE`: a lower-case letter, then lower-case letters, digits, ``_``
or ``-``, at most 41 characters); :func:`sql_name` gives the SQL identifier of a name.

Publishing is stage-and-commit: a writer fills a local folder from :meth:`Lake.new_staging`,
then :meth:`Collection.publish` numbers the version under the lake's write lock, writes
the record into the folder and publishes it: locally one rename, on S3 the files first and
the record last with a conditional put (:mod:`aivc.store.storage`). Readers see a whole
version or none (a version is listed only with its record), and a crash leaves only a
staging folder, or objects no record names, that the next writer removes.
:meth:`Collection.version_dir` gives a local folder of a committed version (on S3 a cached
copy) for readers that need files.
Dataset versions (:mod:`aivc.store.catalog`) use the same reference syntax with kind
``dataset``; their commit point is the catalog record, since their cells live in SOMA.

Example
-------
>>> parse_ref("cell:pca@2", kinds=("cell", "gene", "niche"))
Ref(kind='cell', name='pca', version=2)
>>> str(parse_ref("cell-vae", kinds=("model",)))
'model:cell-vae@latest'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from aivc.errors import AivcError, LakeError, UsageError
from aivc.store.lake import Lake, write_json_atomic
from aivc.store.records import pick_version

__all__ = ["NAME_RULE", "Collection", "Ref", "check_name", "parse_ref", "sql_name"]

NAME_RULE = re.compile(r"^[a-z][a-z0-9_-]{0,40}$")
_REF = re.compile(r"^(?:([a-z]+):)?([^@:]+)(?:@(\d+|latest))?$")
_VERSION_DIR = re.compile(r"^v(\d{6})$")
_RECORDS: dict[tuple[str, str, str], bytes] = {}


class Versioned(Protocol):
    name: str
    version: int

    def to_record(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Versioned)


@dataclass(frozen=True)
class Ref:
    """A parsed reference; ``version`` None means the latest."""

    kind: str
    name: str
    version: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}@{'latest' if self.version is None else self.version}"


def check_name(name: str, what: str = "name", where: str = "--name") -> str:
    """``name`` if it follows :data:`NAME_RULE`, else a one-line :class:`UsageError`."""
    if not isinstance(name, str) or not NAME_RULE.match(name):
        raise UsageError(
            f"{what} {name!r} must start with a lower-case letter, then lower-case letters, digits, '_' or '-' (at most 41)", where=where
        )
    return name


def sql_name(name: str) -> str:
    """The SQL identifier part of a name (``-`` becomes ``_``)."""
    return name.replace("-", "_")


def parse_ref(ref: str, *, kinds: tuple[str, ...], what: str = "reference", form: str | None = None, example: str | None = None) -> Ref:
    """``[kind:]name[@version|@latest]`` -> :class:`Ref`.

    The kind may be left out when ``kinds`` has one element. Raises a one-line
    :class:`UsageError` naming the expected ``form`` and an ``example``.
    """
    form = form or ((f"[{kinds[0]}:]" if len(kinds) == 1 else "KIND:") + "NAME[@VERSION]")
    eg = example or f"{kinds[0]}:example@1"
    bad = UsageError(f"{what} {ref!r} must look like {form}, e.g. {eg}", where=str(ref))
    m = _REF.match(ref) if isinstance(ref, str) else None
    if not m:
        raise bad
    kind, name, version = m.groups()
    if kind is None:
        if len(kinds) != 1:
            raise bad
        kind = kinds[0]
    if kind not in kinds:
        raise UsageError(f"{what} {ref!r}: {kind!r} is not one of {', '.join(kinds)}", where=ref)
    if not NAME_RULE.match(name):
        raise bad
    return Ref(kind, name, None if version in (None, "latest") else int(version))


class Collection(Generic[R]):
    """The published versions of one part of the lake (features, models, …).

    Parameters
    ----------
    folder
        Top folder under the lake (``features``, ``models``, …).
    kinds
        The kinds it holds; with more than one, each kind has its own sub-folder
        (``features/cell/…``) and references must name it.
    record_name
        File name of each version's record.
    load
        Builds a record object from its JSON.
    what, hint
        How messages name it (``embedding``) and where to look (``aivc features list``).
    """

    def __init__(
        self,
        lake: Lake,
        *,
        folder: str,
        kinds: tuple[str, ...],
        record_name: str,
        load: Callable[[dict[str, Any]], R],
        what: str,
        hint: str,
        error: type[AivcError] = LakeError,
        form: str | None = None,
        example: str | None = None,
    ) -> None:
        self.lake, self.folder, self.kinds, self.record_name = lake, folder, kinds, record_name
        self._load, self.what, self.hint, self.error = load, what, hint, error
        self.form, self.example = form, example

    def parse(self, ref: str | Ref) -> Ref:
        if isinstance(ref, Ref):
            return ref
        return parse_ref(ref, kinds=self.kinds, what=f"{self.what} reference", form=self.form, example=self.example)

    def _kind_key(self, kind: str) -> str:
        return f"{self.folder}/{kind}" if len(self.kinds) > 1 else self.folder

    def version_key(self, kind: str, name: str, version: int) -> str:
        """The lake key of a version's folder."""
        return f"{self._kind_key(kind)}/{name}/v{version:06d}"

    def version_dir(self, kind: str, name: str, version: int) -> Path:
        """A local folder with the files of a *committed* version (on S3 a cached copy)."""
        return self.lake.storage.materialize(self.version_key(kind, name, version))

    def _read(self, key: str) -> R:
        st = self.lake.storage
        try:
            if st.is_local:
                raw = st.read_bytes(key)
            else:  # one GET per record and process: a committed record never changes
                cache_key = (self.lake.uri, str(self.lake.info().get("lake_id")), key)
                raw = _RECORDS.get(cache_key)
                if raw is None:
                    raw = _RECORDS[cache_key] = st.read_bytes(key)
            return self._load(json.loads(raw))
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as exc:
            raise self.error(f"{self.what} record is unreadable ({exc})", where=self.lake.location(key)) from None

    def _committed(self, base: str, name: str | None) -> list[tuple[str, str]]:
        """(name, version folder) of every committed version under ``base``."""
        st = self.lake.storage
        found: list[tuple[str, str]] = []
        if st.is_local:
            for nm in [name] if name is not None else st.children(base)[0]:
                found += [(nm, vd) for vd in st.children(f"{base}/{nm}")[0] if st.exists(f"{base}/{nm}/{vd}/{self.record_name}")]
        else:  # one listing instead of a request per version
            prefix = f"{base}/{name}" if name is not None else base
            for key in st.files(prefix):
                parts = ([name] if name is not None else []) + key.split("/")
                if len(parts) == 3 and parts[2] == self.record_name:
                    found.append((parts[0], parts[1]))
        return sorted(found)

    def list(self, kind: str | None = None, name: str | None = None) -> list[R]:
        """Every published version (optionally of one kind / name), by kind, name, version."""
        out: list[R] = []
        for k in self.kinds:
            if (kind and k != kind) or (name is not None and not NAME_RULE.match(name)):
                continue
            base = self._kind_key(k)
            for nm, vd in self._committed(base, name):
                if NAME_RULE.match(nm) and _VERSION_DIR.match(vd):
                    out.append(self._read(f"{base}/{nm}/{vd}/{self.record_name}"))
        return out

    def latest(self) -> list[R]:
        """The newest version of each name."""
        newest: dict[tuple[str, str], R] = {}
        for r in self.list():
            key = (getattr(r, "entity", self.kinds[0]), r.name)
            if key not in newest or r.version > newest[key].version:
                newest[key] = r
        return [newest[k] for k in sorted(newest)]

    def get(self, ref: str | Ref) -> R:
        """The version ``ref`` names (the latest when it names none)."""
        r = self.parse(ref)
        label = f"{self.what} {r.kind}:{r.name}" if len(self.kinds) > 1 else f"{self.what} {r.name!r}"
        return pick_version(self.list(r.kind, r.name), r.version, ref=str(ref), what=label, hint=self.hint)

    def publish(
        self,
        staging: Path,
        kind: str,
        name: str,
        make: Callable[[int], R],
        *,
        before_rename: Callable[[Path, R], None] | None = None,
        fault: str = "",
        fault_exit: int = 17,
        wait: float = 600.0,
    ) -> R:
        """Publish a staged folder as the next version of ``kind:name``.

        Under the lake's write lock: number the version, build its record with
        ``make(version)``, let ``before_rename(staging, record)`` add last files, write the
        record and rename the folder into place (the commit). ``fault`` names the
        ``AIVC_FAULT`` value at which tests crash just before the rename.
        """
        check_name(name, self.what + " name")
        if kind not in self.kinds:
            raise UsageError(f"{self.what} kind {kind!r} is not one of {', '.join(self.kinds)}", where="kind")
        with self.lake.write_lock(wait=wait):
            clash = sorted({r.name for r in self.list(kind) if r.name != name and sql_name(r.name) == sql_name(name)})
            if clash:
                raise UsageError(f"{self.what} name {name!r} would share SQL names with {clash[0]!r}; choose another name", where="--name")
            existing = self.list(kind, name)
            record = make(existing[-1].version + 1 if existing else 1)
            if before_rename is not None:
                before_rename(staging, record)
            write_json_atomic(staging / self.record_name, record.to_record())
            key = self.version_key(kind, name, record.version)
            if self.lake.storage.exists(key):  # objects of an interrupted publish of this number
                self.lake.storage.delete_tree(key)
            self.lake.publish_staging(staging, key, record=self.record_name, fault=fault, fault_exit=fault_exit)
        return record
