"""API tokens of a lake's users: created once, stored as hashes, revocable, optionally expiring.

``<lake>/tokens.json`` (``schema_name`` ``aivc.tokens``) lists each token's id, user,
creation and expiry times, revocation time and the SHA-256 of its secret, never the secret
itself. It is rewritten atomically under the lake's write lock (every backend), like
``access.json``. A token is ``aivc_<id>_<secret>``: the id finds the entry, the secret is
compared by hash in constant time. A token stops working when it is revoked, when it
expires, or when its user is removed from ``access.json``.

Example
-------
>>> import tempfile
>>> from aivc.store.access import add_user
>>> from aivc.store.lake import Lake
>>> lake = Lake.init(tempfile.mkdtemp() + "/lake")
>>> _ = add_user(lake, "alice", ["consortium"])
>>> token, info = create_token(lake, "alice", expires_days=30)
>>> principal_for_token(lake, token)
'alice'
>>> _ = revoke_token(lake, info.id)
>>> try:
...     principal_for_token(lake, token)
... except InvalidToken as exc:
...     print(exc.message[:29])
invalid token: it was revoked
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import math
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any

from aivc.errors import AivcError, LakeError, NotFoundError, UsageError

TOKENS_FILE = "tokens.json"
TOKENS_SCHEMA = "aivc.tokens"
_TOKEN = re.compile(r"^aivc_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_ID = re.compile(r"^[0-9a-f]{12}$")


class InvalidToken(AivcError):
    """A token that is malformed, unknown, revoked, expired, or whose user is gone."""

    code = "INVALID_TOKEN"


@dataclass(frozen=True)
class TokenInfo:
    id: str
    user: str
    created_at: str
    expires_at: str | None = None
    revoked_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.timezone.utc)


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _load(lake: Any) -> dict[str, dict[str, Any]]:
    """id -> entry (with its ``sha256``)."""
    try:
        raw = json.loads(lake.storage.read_bytes(TOKENS_FILE))
    except (FileNotFoundError, IsADirectoryError):
        return {}
    except (OSError, ValueError) as exc:
        raise LakeError(f"tokens.json is unreadable ({exc}); fix or remove it", where=lake.location(TOKENS_FILE)) from None
    if not isinstance(raw, dict) or raw.get("schema_name") != TOKENS_SCHEMA or not isinstance(raw.get("tokens"), dict):
        raise LakeError("tokens.json is not an aivc token list", where=lake.location(TOKENS_FILE))
    return raw["tokens"]


def _save(lake: Any, tokens: dict[str, dict[str, Any]]) -> None:
    lake.storage.write_json(TOKENS_FILE, {"schema_name": TOKENS_SCHEMA, "schema_version": 1, "tokens": tokens})


def _info(tid: str, e: dict[str, Any]) -> TokenInfo:
    return TokenInfo(tid, e["user"], e["created_at"], e.get("expires_at"), e.get("revoked_at"))


def _check_user(lake: Any, user: str) -> None:
    from aivc.store.access import PUBLIC, AccessConfig, lake_owner

    if user == PUBLIC:
        raise UsageError("'public' is the anonymous principal: it needs no token", where="USER")
    if user != lake_owner(lake) and user not in AccessConfig.load(lake).users:
        raise NotFoundError(f"no user {user!r} in this lake: add it first with `aivc access add-user {user} --groups …`", where="USER")


def create_token(lake: Any, user: str, expires_days: float | None = None, *, now: dt.datetime | None = None, wait: float = 600.0) -> tuple[str, TokenInfo]:
    """A new token for ``user`` (a user of the lake, or its owner): ``(token, info)``.

    The token is returned once and never stored; ``expires_days`` (positive) sets an expiry.
    """
    if expires_days is not None and not (isinstance(expires_days, (int, float)) and math.isfinite(expires_days) and expires_days > 0):
        raise UsageError(f"--expires must be a positive number of days, not {expires_days}", where="--expires")
    _check_user(lake, user)
    t = _now(now)
    try:
        expires_at = _iso(t + dt.timedelta(days=expires_days)) if expires_days else None
    except OverflowError:
        raise UsageError(f"--expires {expires_days} days is past the year 9999; give fewer days (or none: no expiry)", where="--expires") from None
    secret = secrets.token_urlsafe(32)
    with lake.write_lock(wait=wait):
        tokens = _load(lake)
        tid = secrets.token_hex(6)
        while tid in tokens:
            tid = secrets.token_hex(6)
        seq = 1 + max((int(e.get("seq", 0)) for e in tokens.values()), default=0)  # creation order, for ties in time
        entry = {"seq": seq, "user": user, "created_at": _iso(t), "expires_at": expires_at, "revoked_at": None, "sha256": _hash(secret)}
        tokens[tid] = entry
        _save(lake, tokens)
    return f"aivc_{tid}_{secret}", _info(tid, entry)


def revoke_token(lake: Any, token_id: str, *, now: dt.datetime | None = None, wait: float = 600.0) -> TokenInfo:
    """Revoke a token by its id (as ``aivc access token list`` shows); revoking twice keeps the first time."""
    if token_id.startswith("aivc_"):  # the whole token was pasted: its id is the middle part
        m = _TOKEN.match(token_id)
        token_id = m.group(1) if m else token_id
    if not _ID.match(token_id):
        raise UsageError(f"{token_id[:40]!r} is not a token id (12 hex digits, as `aivc access token list` shows)", where="ID")
    with lake.write_lock(wait=wait):
        tokens = _load(lake)
        if token_id not in tokens:
            raise NotFoundError(f"no token {token_id!r} in this lake; `aivc access token list` shows them", where="ID")
        if not tokens[token_id].get("revoked_at"):
            tokens[token_id]["revoked_at"] = _iso(_now(now))
            _save(lake, tokens)
        return _info(token_id, tokens[token_id])


def revoke_user_tokens(lake: Any, user: str, *, now: dt.datetime | None = None, wait: float = 600.0) -> list[TokenInfo]:
    """Revoke every live token of ``user`` (``aivc access remove-user`` does); returns those it revoked."""
    with lake.write_lock(wait=wait):
        tokens = _load(lake)
        live = sorted(k for k, e in tokens.items() if e.get("user") == user and not e.get("revoked_at"))
        if live:
            t = _iso(_now(now))
            for k in live:
                tokens[k]["revoked_at"] = t
            _save(lake, tokens)
        return [_info(k, tokens[k]) for k in live]


def list_tokens(lake: Any) -> list[TokenInfo]:
    """Every token's id, user and times (never a secret or a hash), oldest first (ties in creation order)."""
    tokens = _load(lake)
    order = sorted(tokens, key=lambda k: (tokens[k]["created_at"], int(tokens[k].get("seq", 0)), k))
    return [_info(k, tokens[k]) for k in order]


def principal_for_token(lake: Any, token: str, *, now: dt.datetime | None = None) -> str:
    """The user ``token`` authenticates.

    Raises
    ------
    InvalidToken
        Malformed, unknown, revoked, expired, or its user is no longer in the lake.
    """
    from aivc.store.access import AccessConfig, lake_owner

    m = _TOKEN.match(token or "")
    if not m:
        raise InvalidToken("invalid token: not of the form aivc_<id>_<secret> that `aivc access token create` prints", where="token")
    tid, secret = m.groups()
    e = _load(lake).get(tid)
    # compare a hash even for an unknown id, so both take the same time
    if not hmac.compare_digest(_hash(secret), (e or {}).get("sha256", "0" * 64)) or e is None:
        raise InvalidToken("invalid token: unknown to this lake", where="token")
    if e.get("revoked_at"):
        raise InvalidToken(f"invalid token: it was revoked at {e['revoked_at']}", where="token")
    if e.get("expires_at") and _now(now) >= dt.datetime.fromisoformat(e["expires_at"]):
        raise InvalidToken(f"invalid token: it expired at {e['expires_at']}", where="token")
    user = e["user"]
    if user != lake_owner(lake) and user not in AccessConfig.load(lake).users:
        raise InvalidToken(f"invalid token: its user {user!r} is no longer a user of this lake", where="token")
    return user
