"""Self-describing JSON records: every record aivc writes names its schema and version.

Dataset versions, embedding versions and models are frozen dataclasses stored as JSON
with ``schema_name`` / ``schema_version`` first; readers check both before building the
object, so an old lake is read knowingly (the anndata habit of encoding-type/version).
A field holding an object with its own ``to_record`` (a :class:`~aivc.store.lineage.Lineage`)
is written by that method and read back by the function named for it in ``load_record(nested=...)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from aivc.errors import AivcError

T = TypeVar("T")


def dump_record(obj: Any, schema_name: str, schema_version: int = 1) -> dict[str, Any]:
    """``obj`` (a dataclass) as a JSON-ready dict headed by its schema name and version.

    Fields whose value has a ``to_record`` method are written by it.
    """
    body = dataclasses.asdict(obj)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if callable(getattr(value, "to_record", None)):
            body[f.name] = value.to_record()
    return {"schema_name": schema_name, "schema_version": schema_version, **{k: list(v) if isinstance(v, tuple) else v for k, v in body.items()}}


def load_record(
    cls: type[T],
    data: dict[str, Any],
    schema_name: str,
    schema_version: int = 1,
    error: type[AivcError] = AivcError,
    where: str = "",
    nested: Mapping[str, Callable[[Any], Any]] | None = None,
) -> T:
    """Build ``cls`` from a record written by :func:`dump_record`, checking its schema.

    Fields annotated as tuples come back as tuples (JSON stores them as lists); a field
    named in ``nested`` is built by its function (``{"lineage": Lineage.from_record}``).
    """
    if data.get("schema_name") != schema_name or int(data.get("schema_version", 0)) != schema_version:
        raise error(f"unknown record format {data.get('schema_name')}/{data.get('schema_version')}, expected {schema_name}/{schema_version}", where=where)
    body = {k: v for k, v in data.items() if k not in ("schema_name", "schema_version")}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in body and str(f.type).startswith("tuple") and isinstance(body[f.name], list):
            body[f.name] = tuple(body[f.name])
    for name, build in (nested or {}).items():
        if name in body:
            body[name] = build(body[name])
    return cls(**body)


def pick_version(versions: list[T], version: int | None, *, ref: str, what: str, hint: str) -> T:
    """The record of ``version`` among ``versions`` (ordered; ``None``: the latest).

    ``what`` names the thing in messages (``model 'cell-vae'``), ``hint`` says where to
    look when there is none (``aivc models list``). Raises :class:`NotFoundError`.
    """
    from aivc.errors import NotFoundError

    if not versions:
        raise NotFoundError(f"no {what} in this lake; `{hint}` shows them", where=ref)
    if version is None:
        return versions[-1]
    for v in versions:
        if v.version == version:  # type: ignore[attr-defined]
            return v
    have = ", ".join(str(v.version) for v in versions)  # type: ignore[attr-defined]
    raise NotFoundError(f"{what} has no version {version} (versions: {have})", where=ref)
