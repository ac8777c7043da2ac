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

import time
from datetime import datetime, timezone
from typing import Any

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from txsmtp.client import (
    SMTPAddressError,
    SMTPAuthError,
    SMTPBadReplyError,
    SMTPClientError,
    SMTPConnectError,
    SMTPConnectionLost,
    SMTPTimeoutError,
    SMTPTLSError,
    SMTPUnsupportedError,
)
from txsmtp.queue.errors import QueueError
from txsmtp.queue.model import AttemptResult, NextHop, QueuedRecipient, RecipientOutcome, Result
from txsmtp.wire.reply import Reply

__all__ = [
    "logStoreError",
    "deferred",
    "delivered",
    "diagnostic",
    "errorResult",
    "failed",
    "logAttempt",
    "replyResult",
    "replyText",
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


def replyText(reply: Reply) -> str:
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
    diag = diagnostic(code, reply.enhanced, replyText(reply))
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


def logAttempt(
    log: Logger,
    queueId: str,
    hop: NextHop,
    recipients: list[QueuedRecipient],
    results: list[AttemptResult],
    outcomes: list[RecipientOutcome],
    duration: float | None = None,
) -> None:
    """
    Log one attempt, one line per group of recipients that fared alike:
    ``QUEUEID: to=<a>,<b> hop=mx:example.com result=deferred status=4.4.1
    attempts=2 next=2026-12-07T01:00:00Z host=mx.example.com tls=TLSv1.3
    duration=0.412 reason="..."`` (what an operator greps for).  ``host``
    is the server that answered (when one did), ``tls`` the TLS version the
    message went under (when it was taken under TLS), ``duration`` the
    seconds the attempt took (the same on each line of one attempt).  The
    event carries each part as a field too (``queueId``, ``recipients``,
    ``hop``, ``result``, ``status``, ``attempts``, ``nextAttempt``,
    ``host``, ``tls``, ``duration``, ``reason``), for structured observers.
    """
    groups: dict[tuple[Any, ...], list[str]] = {}
    for rcpt, result, outcome in zip(recipients, results, outcomes, strict=True):
        nextAt = _iso(outcome.nextAttempt) if outcome.nextAttempt is not None else None
        remote = result.remoteMTA
        host = remote.partition("; ")[2] or None if remote else None
        key = (outcome.result.value, result.status, result.reason, rcpt.attempts + 1, nextAt, host, result.tls)
        groups.setdefault(key, []).append(f"<{rcpt.address}>")
    hopKey = hop.key
    took = round(duration, 3) if duration is not None else None
    durationText = f" duration={took:.3f}" if took is not None else ""
    for (res, status, reason, attempts, nextAt, host, tls), addresses in groups.items():
        to = ",".join(addresses)
        nextText = f" next={nextAt}" if nextAt else ""
        hostText = f" host={host}" if host else ""
        tlsText = f" tls={tls}" if tls else ""
        # One event per attempt, at the rate messages leave: built here and
        # handed to the observer as Logger.emit would, with the text already
        # formatted (twisted.logger's field formatting costs more).
        log.observer(
            {
                "log_logger": log,
                "log_level": LogLevel.info,
                "log_namespace": log.namespace,
                "log_source": None,
                "log_format": "{text}",
                "log_time": time.time(),
                "text": f"{queueId}: to={to} hop={hopKey} result={res} status={status} "
                f"attempts={attempts}{nextText}{hostText}{tlsText}{durationText} reason={_quote(reason)}",
                "queueId": queueId,
                "recipients": to,
                "hop": hopKey,
                "result": res,
                "status": status,
                "attempts": attempts,
                "nextAttempt": nextAt,
                "host": host,
                "tls": tls,
                "duration": took,
                "reason": reason,
            }
        )


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _quote(text: str | None) -> str:
    if not text:
        return '""'
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ") + '"'


def errorResult(error: BaseException, where: str, remoteMTA: str | None) -> tuple[AttemptResult, bool]:
    """
    The result of a failure without a reply to a command, and whether the
    next server (mail exchanger) should be tried.
    """
    text = str(error) or type(error).__name__
    reason = f"{where}: {text}"
    if isinstance(error, SMTPConnectionLost | SMTPTimeoutError):
        if error.afterData:
            # The one duplicate case: the message may have arrived.
            return deferred("4.4.2", reason + " (it may have been delivered; it will be sent again)", remoteMTA), False
        return deferred("4.4.2", reason, remoteMTA), True
    if isinstance(error, SMTPConnectError):
        return deferred("4.4.1", reason, remoteMTA), True
    if isinstance(error, SMTPTLSError):
        status = "4.7.4" if "does not offer STARTTLS" in text else "4.7.5"
        return deferred(status, reason, remoteMTA), True
    if isinstance(error, SMTPAuthError):
        # A smart host refusing the login is the operator's to fix: keep the
        # mail (Postfix's smtp_sasl_auth_soft_bounce).
        reply = error.reply
        status = "4" + statusOf(reply.code, reply.enhanced)[1:] if reply is not None else "4.7.0"
        return deferred(status, reason, remoteMTA), False
    if isinstance(error, SMTPUnsupportedError):
        if "REQUIRETLS" in text:
            # RFC 8689 §4.2.1: not sent; another MX host may do.
            return failed("5.7.10", reason, remoteMTA), True
        if "SMTPUTF8" in text:
            status = "5.6.7"
        elif "8BITMIME" in text:
            status = "5.6.3"
        else:
            status = "5.3.4"
        return failed(status, reason, remoteMTA), False
    if isinstance(error, SMTPAddressError):
        return failed("5.1.3", reason, remoteMTA), False
    if isinstance(error, SMTPBadReplyError):
        return deferred("4.5.0", reason, remoteMTA), True
    if isinstance(error, SMTPClientError):
        return deferred("4.4.0", reason, remoteMTA), True
    Logger(namespace="txsmtp.queue.outbound").failure("unexpected error delivering to {where}", Failure(error), where=where)
    return deferred("4.3.0", f"{where}: internal error: {type(error).__name__}: {text}", remoteMTA), False


def logStoreError(log: Logger, f: Failure, what: str, then: str = "") -> None:
    """
    Log that the scheduler's ``what`` failed: a store error (its database
    away) in one line, anything else with its traceback.
    """
    if f.check(QueueError):
        log.warn("Queue scheduler: {what} failed: {error}{then}", what=what, error=f.getErrorMessage(), then=then)
    else:
        log.failure("Queue scheduler: {what} failed{then}", f, what=what, then=then)
