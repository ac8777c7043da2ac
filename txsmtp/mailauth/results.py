"""
The results of the mail authentication checks, in the terms of
``Authentication-Results:`` (RFC 8601 §2.2): each check gives one or more
:class:`MethodResult` (a method, a result, an optional reason, and
properties such as ``smtp.mailfrom`` or ``header.d``), and
:class:`AuthenticationResults` gathers them for one message.

A delivery reads them from :attr:`txsmtp.envelope.Envelope.authentication`
to decide for itself; they are kept with a queued message
(:meth:`AuthenticationResults.toDict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AuthenticationResults", "MethodResult"]


@dataclass(frozen=True)
class MethodResult:
    """
    One ``method=result`` of an ``Authentication-Results:`` field.

    :ivar method: ``spf``, ``dkim``, ``dmarc`` (RFC 8601 §2.7).
    :ivar result: ``pass``, ``fail``, ``softfail``, ``neutral``, ``none``,
        ``temperror``, ``permerror``, ``policy`` (the method's own words).
    :ivar reason: a sentence saying why, for people (the ``reason=``).
    :ivar properties: ``(ptype.property, value)`` pairs in order, e.g.
        ``("smtp.mailfrom", "example.org")`` or ``("header.d", "example.org")``.
    """

    method: str
    result: str
    reason: str | None = None
    properties: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        """The value of the property ``name`` (``"header.d"``), or ``None``."""
        for key, value in self.properties:
            if key == name:
                return value
        return None

    def toDict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "result": self.result,
            "reason": self.reason,
            "properties": [list(p) for p in self.properties],
        }

    @classmethod
    def fromDict(cls, data: dict[str, Any]) -> MethodResult:
        return cls(
            data["method"],
            data["result"],
            data.get("reason"),
            tuple((str(k), str(v)) for k, v in data.get("properties", [])),
        )


@dataclass
class AuthenticationResults:
    """
    Everything the checks found about one message.

    :ivar authservId: the name of the server that checked (RFC 8601 §2.5).
    :ivar results: the :class:`MethodResult` objects, SPF first, then
        DKIM (one per signature), then DMARC.
    :ivar dmarcPolicy: the policy the From domain asks for when DMARC
        failed (``none``, ``quarantine``, ``reject``), else ``None``.
    """

    authservId: str
    results: list[MethodResult] = field(default_factory=list)
    dmarcPolicy: str | None = None

    def method(self, name: str) -> list[MethodResult]:
        """The results of one method (``"dkim"`` may have several)."""
        return [r for r in self.results if r.method == name]

    def toDict(self) -> dict[str, Any]:
        return {
            "authservId": self.authservId,
            "results": [r.toDict() for r in self.results],
            "dmarcPolicy": self.dmarcPolicy,
        }

    @classmethod
    def fromDict(cls, data: dict[str, Any]) -> AuthenticationResults:
        return cls(
            data["authservId"],
            [MethodResult.fromDict(r) for r in data.get("results", [])],
            data.get("dmarcPolicy"),
        )
