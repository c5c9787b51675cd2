"""One error hierarchy for aivc.

Every error a user can cause carries a stable ``code`` (for scripts), a ``where``
(file, column, row, path in the manifest) and a one-line ``message`` that says what is
wrong and how to fix it. The CLI prints ``message`` and exits with ``exit_code``; it
shows a traceback only with ``--debug``. Code never inspects message text to decide
what an error is: it dispatches on the class or on ``code``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One validation problem or remark, precise enough to act on.

    Parameters
    ----------
    code
        Stable machine code, e.g. ``"OBS_UNKNOWN_LABEL"``.
    where
        Location, e.g. ``"obs['cell_type'] row 'AAAC-1' (index 3)"``.
    message
        One line: what is wrong, the offending value, and what would be valid.
    severity
        ``"error"`` rejects the submission; ``"warning"`` is reported only.
    """

    code: str
    where: str
    message: str
    severity: Severity = "error"

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "where": self.where, "message": self.message, "severity": self.severity}

    def __str__(self) -> str:
        return f"[{self.code}] {self.where}: {self.message}"


def and_more(n: int, noun: str = "error") -> str:
    """The tail of a message that shows one of ``n + 1`` problems.

    >>> and_more(0), and_more(1), and_more(2)
    ('', ' (and 1 more error)', ' (and 2 more errors)')
    """
    if n <= 0:
        return ""
    return f" (and {n} more {noun}{'' if n == 1 else 's'})"


class AivcError(Exception):
    """Base class of every error aivc raises on purpose."""

    exit_code: int = 1
    code: str = "AIVC_ERROR"

    def __init__(self, message: str, *, where: str = "", code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "where": self.where, "message": self.message}


class UsageError(AivcError):
    """The command was called wrongly (missing file, bad option)."""

    exit_code = 2
    code = "USAGE"


class ManifestError(UsageError):
    """The manifest file cannot be read or does not follow the manifest schema.

    ``findings`` holds every problem, one :class:`Finding` each with its own ``where`` (the
    manifest file and the path in it); ``message`` and ``where`` are those of the first, and
    the message says how many more there are.
    """

    code = "MANIFEST_INVALID"

    def __init__(
        self, message: str, *, where: str = "", code: str | None = None, findings: Sequence[Finding] = ()
    ) -> None:
        super().__init__(message, where=where, code=code)
        self.findings: tuple[Finding, ...] = tuple(findings) or (Finding(self.code, where, message),)

    @classmethod
    def of(cls, findings: Sequence[Finding]) -> ManifestError:
        """One error for several findings (at least one), worded after the first."""
        first = findings[0]
        return cls(first.message + and_more(len(findings) - 1), where=first.where, findings=findings)


class LakeError(AivcError):
    """The lake is missing, of an unknown format, or inconsistent."""

    code = "LAKE_ERROR"


class LakeNotFoundError(LakeError):
    exit_code = 2
    code = "LAKE_NOT_FOUND"


class LakeBusyError(LakeError):
    """Another process holds the lake's write lock."""

    code = "LAKE_BUSY"


class NotFoundError(AivcError):
    """A dataset, version or other named object does not exist."""

    code = "NOT_FOUND"


class AccessDeniedError(AivcError):
    code = "ACCESS_DENIED"


class SqlError(AivcError):
    """A user SQL statement failed or was refused by the sandbox."""

    code = "SQL_ERROR"


@dataclass
class ValidationFailed(AivcError):
    """A submission did not pass validation; ``findings`` lists every error."""

    findings: list[Finding] = field(default_factory=list)
    report_path: str | None = None

    def __post_init__(self) -> None:
        errors = [f for f in self.findings if f.severity == "error"]
        first = str(errors[0]) if errors else "validation failed"
        AivcError.__init__(self, first + and_more(len(errors) - 1), code="VALIDATION_FAILED")

    def __str__(self) -> str:
        return self.message

    def __hash__(self) -> int:
        return id(self)
