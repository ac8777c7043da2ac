"""
The ``local`` next hop: a queued message handed to the server's own
delivery (``--deliver``, an :class:`~txsmtp.interfaces.IDelivery`), as if a
client had sent it again.

The delivery sees what it would see for a message received directly: a
session opened with a :class:`~txsmtp.envelope.ConnectionInfo` rebuilt from
the envelope kept with the message (the original client's address, HELO
name, TLS and login), each recipient checked with ``checkRecipient`` (which
is where :class:`~txsmtp.maildir.VirtualMaildirDelivery` finds the
mailbox), then ``openMessage``, the body written as it is stored (the
``Received:`` header the server added is its first line) and ``finish``.
Refusals are :class:`~txsmtp.errors.SMTPError` replies: a 4xx defers the
recipient, a 5xx fails it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.logger import Logger

from txsmtp.envelope import Envelope, Recipient
from txsmtp.errors import SMTPError
from txsmtp.queue.attempts import deferred, delivered, diagnostic, statusOf
from txsmtp.queue.model import AttemptResult, QueuedMessage, QueuedRecipient, Result
from txsmtp.wire.address import parsePath
from txsmtp.wire.params import RecipientParameters

__all__ = ["deliverLocal"]

_log = Logger(namespace="txsmtp.queue.outbound")

#: How much of the body is read and written at a time.
_CHUNK = 65536


def _refusal(error: SMTPError, what: str) -> AttemptResult:
    code = error.code
    status = statusOf(code, error.enhanced)
    text = " ".join(str(error.text).split())
    diag = diagnostic(code, error.enhanced, text)
    if code < 400:
        return delivered(f"delivered locally: {diag.partition('; ')[2]}", status)
    result = Result.DEFERRED if code < 500 else Result.FAILED
    return AttemptResult(result, status, diag, None, f"local delivery {what}: {diag.partition('; ')[2]}")


def _recipient(queued: QueuedRecipient) -> Recipient:
    address = parsePath(b"<" + queued.address.encode("utf-8") + b">", utf8=True, nullOK=False, postmasterOK=True)
    assert address is not None
    return Recipient(address, RecipientParameters(notify=queued.notify, orcpt=queued.orcpt))


async def _write(receiver: Any, body: BinaryIO) -> None:
    while True:
        chunk = body.read(_CHUNK)
        if not chunk:
            return
        wait = receiver.write(chunk)
        if wait is not None:
            # Back-pressure, as the server honours it.
            await wait


def deliverLocal(
    delivery: Any, message: QueuedMessage, recipients: Sequence[QueuedRecipient], body: BinaryIO
) -> defer.Deferred[list[AttemptResult]]:
    """
    Deliver ``message`` to ``recipients`` through ``delivery``.

    :param delivery: an :class:`~txsmtp.interfaces.IDelivery`, or ``None``
        (then every recipient is deferred: the server has no local
        delivery, a configuration error the operator can fix).
    :return: a Deferred firing with one
        :class:`~txsmtp.queue.model.AttemptResult` per recipient, in order:
        ``DELIVERED`` (never ``RELAYED``: this is the final destination),
        ``DEFERRED`` or ``FAILED``.  Any exception other than an
        :class:`~txsmtp.errors.SMTPError` is logged and defers every
        recipient with ``4.3.0``.
    """
    return defer.Deferred.fromCoroutine(_deliver(delivery, message, list(recipients), body))


async def _deliver(
    delivery: Any, message: QueuedMessage, recipients: list[QueuedRecipient], body: BinaryIO
) -> list[AttemptResult]:
    if delivery is None:
        return [deferred("4.3.5", "no local delivery is configured for local domains (--deliver)")] * len(recipients)
    results: list[AttemptResult | None] = [None] * len(recipients)
    envelope = Envelope.fromDict({**message.envelope, "sender": message.sender or None, "recipients": []})
    session: Any = None
    receiver: Any = None
    try:
        session = await defer.maybeDeferred(delivery.openSession, envelope.connection)
        accepted: list[int] = []
        for i, queued in enumerate(recipients):
            try:
                recipient = _recipient(queued)
            except SMTPError as e:
                results[i] = AttemptResult(Result.FAILED, "5.1.3", None, None, f"bad recipient address: {e.text}")
                continue
            try:
                await defer.maybeDeferred(session.checkRecipient, recipient, envelope)
            except SMTPError as e:
                results[i] = _refusal(e, "refused the recipient")
                continue
            envelope.recipients.append(recipient)
            accepted.append(i)
        if accepted:
            receiver = await defer.maybeDeferred(session.openMessage, envelope)
            await _write(receiver, body)
            outcome = await defer.maybeDeferred(receiver.finish)
            where = _storedAt(receiver)
            receiver = None
            for n, i in enumerate(accepted):
                each = outcome[n] if isinstance(outcome, list) else None
                results[i] = _refusal(each, "failed") if each is not None else delivered(f"delivered locally{where}")
    except SMTPError as e:
        refusal = _refusal(e, "refused the message")
        results = [r if r is not None else refusal for r in results]
    except Exception as e:
        _log.failure("local delivery of {id} failed", id=message.id)
        failure = deferred("4.3.0", f"local delivery failed: {type(e).__name__}: {e}")
        results = [r if r is not None and r.result is Result.FAILED else failure for r in results]
    finally:
        if receiver is not None:
            try:
                receiver.abort("the local delivery from the queue failed")
            except Exception:
                _log.failure("abort of a local delivery failed")
        if session is not None:
            try:
                session.reset()
                session.close()
            except Exception:
                _log.failure("closing a local delivery session failed")
    return [r if r is not None else deferred("4.3.0", "local delivery gave no result") for r in results]


def _storedAt(receiver: Any) -> str:
    """`` (stored as ...)`` from a receiver's optional ``storedAt``, or ``""``."""
    stored = getattr(receiver, "storedAt", None)
    if not stored:
        return ""
    return f" (stored as {', '.join(stored) if isinstance(stored, list) else stored})"
