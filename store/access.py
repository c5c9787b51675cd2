"""Who may see which dataset: principals, groups, grants and the access rules.

The lake's access configuration is one JSON file, ``<lake>/access.json``
(``schema_name`` ``aivc.access``, ``schema_version`` 1), written atomically under the
lake's write lock. It names *users* (principals) with their *groups*, and *grants*: the
groups given access to one dataset.

Principals
----------
- The lake owner (``lake.json``'s ``owner``) is the default principal and sees every dataset.
- ``public`` is built in: anyone anonymous. It has no groups and sees public datasets only.
- Every other principal must be a user of ``access.json``; an unknown name is an error.

Rules (per dataset; the access level of the dataset's *current* version applies to all
its versions, so a resubmission can open or close a dataset)
-----------------------------------------------------------------------------------------
``public``
    everyone.
``consortium``
    principals in group ``consortium``, or in a group granted on the dataset.
``embargoed`` (``embargo_until`` in the future)
    only principals in a group granted on the dataset (and the owner).
``embargoed`` (``embargo_until`` today or in the past)
    the embargo has lifted: the dataset behaves as ``consortium``.

Example
-------
>>> import tempfile
>>> from aivc.store.lake import Lake
>>> lake = Lake.init(tempfile.mkdtemp() + "/lake")
>>> _ = add_user(lake, "alice", ["consortium"])
>>> resolve_principal(lake, "alice").groups
frozenset({'consortium'})
>>> visible_datasets(lake, "public")
set()
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aivc.errors import AccessDeniedError, LakeError, NotFoundError, UsageError
from aivc.store.catalog import Catalog, DatasetVersion, embargo_active
from aivc.store.lake import Lake

ACCESS_FILE = "access.json"
ACCESS_SCHEMA = "aivc.access"
ACCESS_SCHEMA_VERSION = 1
PUBLIC = "public"
CONSORTIUM_GROUP = "consortium"

_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")
_GROUP = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

T = TypeVar("T")


def _check_group(g: str) -> str:
    if not _GROUP.match(g):
        raise ValueError(f"group {g!r} must be lower-case letters, digits, '_', '.', '-' (starting with a letter or digit)")
    return g


class UserEntry(BaseModel):
    """One principal of ``access.json``."""

    model_config = ConfigDict(extra="forbid")

    groups: list[str] = Field(default_factory=list)

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        return sorted({_check_group(g) for g in v})


class AccessConfig(BaseModel):
    """The lake's access configuration: users with groups, and per-dataset group grants."""

    model_config = ConfigDict(extra="forbid")

    schema_name: Literal["aivc.access"] = ACCESS_SCHEMA
    schema_version: Literal[1] = ACCESS_SCHEMA_VERSION
    users: dict[str, UserEntry] = Field(default_factory=dict)
    grants: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("users")
    @classmethod
    def _users(cls, v: dict[str, UserEntry]) -> dict[str, UserEntry]:
        for name in v:
            if not _USER.match(name) or name == PUBLIC:
                raise ValueError(f"user name {name!r} is not allowed (letters, digits, '_.@+-'; 'public' is built in)")
        return v

    @field_validator("grants")
    @classmethod
    def _grants(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        return {ds: sorted({_check_group(g) for g in groups}) for ds, groups in v.items() if groups}

    @staticmethod
    def path(lake: Lake) -> str:
        """Where ``access.json`` lives (a local path or an ``s3://`` URI)."""
        return lake.location(ACCESS_FILE)

    @classmethod
    def load(cls, lake: Lake) -> AccessConfig:
        """The lake's configuration; an empty one when ``access.json`` does not exist."""
        p = cls.path(lake)
        try:
            raw = json.loads(lake.storage.read_bytes(ACCESS_FILE))
        except (FileNotFoundError, IsADirectoryError):
            return cls()
        except (OSError, json.JSONDecodeError) as exc:
            raise LakeError(f"access.json is unreadable ({exc}); fix or remove it", where=str(p)) from None
        if isinstance(raw, dict) and raw.get("schema_name") == ACCESS_SCHEMA and int(raw.get("schema_version", 0)) > ACCESS_SCHEMA_VERSION:
            raise LakeError(f"access.json format {raw['schema_version']} is newer than this aivc understands; upgrade aivc", where=str(p))
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise LakeError(f"access.json is invalid at {loc or 'top level'}: {first['msg']}", where=str(p)) from None

    def save(self, lake: Lake) -> None:
        """Write ``access.json`` atomically (call under ``lake.write_lock()``)."""
        lake.storage.write_json(ACCESS_FILE, self.model_dump(mode="json"))


@dataclass(frozen=True)
class Principal:
    """Who runs a query: a name, its groups, and whether it is the lake owner."""

    name: str
    groups: frozenset[str] = frozenset()
    is_owner: bool = False


def lake_owner(lake: Lake) -> str:
    return str(lake.info().get("owner") or "owner")


def resolve_principal(lake: Lake, name: str | Principal | None, config: AccessConfig | None = None) -> Principal:
    """The principal called ``name``; ``None`` means the lake owner.

    Raises
    ------
    AccessDeniedError
        ``name`` is neither the owner, ``public``, nor a user of ``access.json``.
    """
    if isinstance(name, Principal):
        return name
    owner = lake_owner(lake)
    if name is None or name == owner:
        return Principal(owner, frozenset(), is_owner=True)
    if name == PUBLIC:
        return Principal(PUBLIC)
    cfg = config if config is not None else AccessConfig.load(lake)
    user = cfg.users.get(name)
    if user is None:
        known = ", ".join(sorted(cfg.users)) or "none yet"
        raise AccessDeniedError(
            f"unknown principal {name!r}: add it with `aivc access add-user {name} --groups …` "
            f"(users: {known}; built in: {owner} (owner), {PUBLIC})",
            where="--principal",
            code="UNKNOWN_PRINCIPAL",
        )
    return Principal(name, frozenset(user.groups))


def can_see(principal: Principal, v: DatasetVersion, granted: Iterable[str] = (), today: dt.date | None = None) -> bool:
    """Whether ``principal`` may see a dataset whose current version is ``v``."""
    if principal.is_owner or v.access == "public":
        return True
    granted_to_them = bool(principal.groups & set(granted))
    if v.access == "embargoed" and (not v.embargo_until or embargo_active(v, today)):
        return granted_to_them  # an embargo without an end date stays closed
    if v.access in ("consortium", "embargoed"):  # an embargo that has lifted behaves as consortium
        return CONSORTIUM_GROUP in principal.groups or granted_to_them
    return False  # an access level this build does not know: closed


def visible_datasets(
    lake: Lake,
    principal: str | Principal | None,
    *,
    today: dt.date | None = None,
    config: AccessConfig | None = None,
) -> set[str]:
    """Ids of the datasets whose versions ``principal`` may see (``None``: the owner)."""
    cfg = config if config is not None else AccessConfig.load(lake)
    p = resolve_principal(lake, principal, cfg)
    return {v.dataset_id for v in Catalog(lake).current() if can_see(p, v, cfg.grants.get(v.dataset_id, ()), today)}


# -- changes (each one read-modify-write under the lake's write lock) -------------------
def _update(lake: Lake, change: Callable[[AccessConfig], T], wait: float = 600.0) -> T:
    with lake.write_lock(wait=wait):
        cfg = AccessConfig.load(lake)
        out = change(cfg)
        cfg = AccessConfig.model_validate(cfg.model_dump())  # re-validate (normalizes groups)
        cfg.save(lake)
    return out


def _check_user_name(lake: Lake, name: str) -> None:
    if name == PUBLIC:
        raise UsageError("'public' is the built-in anonymous principal and cannot be a user", where="NAME")
    if name == lake_owner(lake):
        raise UsageError(f"{name!r} is the lake owner and already sees every dataset", where="NAME")
    if not _USER.match(name):
        raise UsageError(f"user name {name!r} must be letters, digits, '_', '.', '@', '+', '-' (at most 128)", where="NAME")


def _check_groups(groups: Iterable[str], where: str) -> list[str]:
    out = []
    for g in groups:
        try:
            out.append(_check_group(g))
        except ValueError as exc:
            raise UsageError(str(exc), where=where) from None
    return sorted(set(out))


def add_user(lake: Lake, name: str, groups: Iterable[str]) -> bool:
    """Create user ``name`` or replace its groups; returns whether it was new."""
    _check_user_name(lake, name)
    gs = _check_groups(groups, "--groups")

    def change(cfg: AccessConfig) -> bool:
        new = name not in cfg.users
        cfg.users[name] = UserEntry(groups=gs)
        return new

    return _update(lake, change)


def remove_user(lake: Lake, name: str) -> None:
    def change(cfg: AccessConfig) -> None:
        if name not in cfg.users:
            raise NotFoundError(f"no user {name!r} in this lake's access.json; `aivc access list` shows them", where="NAME")
        del cfg.users[name]

    _update(lake, change)


def _check_dataset(lake: Lake, dataset_id: str) -> None:
    if not Catalog(lake).versions(dataset_id):
        raise NotFoundError(f"no dataset {dataset_id!r} in this lake; `aivc datasets` lists them", where="DATASET")


def grant(lake: Lake, dataset_id: str, group: str) -> bool:
    """Give ``group`` access to a dataset; returns whether that changed anything."""
    (g,) = _check_groups([group], "--group")
    _check_dataset(lake, dataset_id)

    def change(cfg: AccessConfig) -> bool:
        have = cfg.grants.setdefault(dataset_id, [])
        if g in have:
            return False
        have.append(g)
        return True

    return _update(lake, change)


def revoke(lake: Lake, dataset_id: str, group: str) -> bool:
    """Take a group's grant on a dataset away; returns whether it had one."""
    (g,) = _check_groups([group], "--group")

    def change(cfg: AccessConfig) -> bool:
        have = cfg.grants.get(dataset_id, [])
        if g not in have:
            return False
        have.remove(g)
        return True

    return _update(lake, change)
