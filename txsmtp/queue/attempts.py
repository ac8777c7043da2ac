"""
What a next hop answered, as :class:`~txsmtp.queue.model.AttemptResult`
objects: the words the reports (RFC 3464) and the queue listing use.

- A reply becomes a result by its class: 2xx delivered (or relayed), 4xx
  deferred, 5xx failed.  Its enhanced status code (RFC 3463) is the
  result's :attr:`~txsmtp.queue.model.AttemptResult.status` when it has one
  of the right class, else ``2.0.0``, ``4.0.0`` or ``5.0.0``; the reply
  itself is the ``Diagnostic-Code`` (RFC 3464 §2.3.6), ``smtp; 550 5.1.1
  no such user``.
- A failure without a reply (no connection, a timeout, TLS) gets the
  status RFC 3463 gives it: ``4.4.1`` no answer from the host, ``4.4.2``
  bad connection, ``4.7.5`` cryptographic failure, and so on.
"""

from __future__ import annotations

from txsmtp.queue.model import AttemptResult, Result
from txsmtp.wire.reply import Reply

__all__ = [
    "deferred",
    "delivered",
    "diagnostic",
    "failed",
    "replyResult",
    "statusOf",
]

_DEFAULT_STATUS = {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}


def statusOf(code: int, enhanced: str | None) -> str:
    """
    The enhanced status code for a reply: ``enhanced`` when given, with its
    class made to agree with ``code`` (a ``550 4.1.1`` is a permanent
    failure: RFC 3463 §2 makes the reply code decide), else the class's
    ``X.0.0``.
    """
    klass = code // 100
    if klass not in _DEFAULT_STATUS:
        klass = 5 if code >= 500 else 4
    if not enhanced:
        return _DEFAULT_STATUS[klass]
    return f"{klass}{enhanced[1:]}" if enhanced[0] != str(klass) else enhanced


def diagnostic(code: int, enhanced: str | None, text: str) -> str:
    """The ``Diagnostic-Code`` of RFC 3464 §2.3.6: ``smtp; 550 5.1.1 text``."""
    head = f"{code} {enhanced}" if enhanced else str(code)
    return f"smtp; {head} {text}".rstrip()


def _replyText(reply: Reply) -> str:
    # A multi-line reply on one line (the report field is one line, folded).
    return " ".join(line.strip() for line in reply.lines if line.strip())


def replyResult(
    reply: Reply,
    where: str,
    remoteMTA: str | None,
    success: Result = Result.DELIVERED,
) -> AttemptResult:
    """
    The result a reply gives one recipient.

    :param reply: the reply that decided it (to RCPT, or to the data).
    :param where: the server, as the reason names it, e.g.
        ``"mx.example.com[192.0.2.1]:25"``.
    :param remoteMTA: ``"dns; mx.example.com"`` (RFC 3464 §2.3.5), or ``None``.
    :param success: what a 2xx reply means: ``DELIVERED`` or ``RELAYED``.
    """
    code = reply.code
    status = statusOf(code, reply.enhanced)
    diag = diagnostic(code, reply.enhanced, _replyText(reply))
    said = diag.partition("; ")[2]
    if code < 400:
        result = success
        reason = f"{'relayed' if success is Result.RELAYED else 'delivered'} to {where}: {said}"
    else:
        result = Result.DEFERRED if code < 500 else Result.FAILED
        reason = f"{where} said: {said}"
    return AttemptResult(result, status, diag, remoteMTA, reason)


def delivered(reason: str, status: str = "2.0.0", remoteMTA: str | None = None) -> AttemptResult:
    """A ``DELIVERED`` result without a reply (a local delivery)."""
    return AttemptResult(Result.DELIVERED, status, None, remoteMTA, reason)


def deferred(status: str, reason: str, remoteMTA: str | None = None, diagnosticCode: str | None = None) -> AttemptResult:
    """A ``DEFERRED`` result: ``status`` is a ``4.x.y`` code."""
    return AttemptResult(Result.DEFERRED, status, diagnosticCode, remoteMTA, reason)


def failed(status: str, reason: str, remoteMTA: str | None = None, diagnosticCode: str | None = None) -> AttemptResult:
    """A ``FAILED`` result: ``status`` is a ``5.x.y`` code."""
    return AttemptResult(Result.FAILED, status, diagnosticCode, remoteMTA, reason)
