"""
One mail transaction and everything in flight for it, and the rule for the
replies owed at its end.

A :class:`Transaction` is created by ``MAIL`` and ended by its final reply,
``RSET``, ``EHLO``/``HELO``/``LHLO``, ``STARTTLS``, a disconnect, a timeout
or a shutdown.  It owns the envelope, the delivery's receiver, the body
decoder, the count of receiver writes not yet answered, and (as a
:class:`~txsmtp.session.actions.Scope`) every hook call made for it.
:meth:`Transaction.end` cancels those calls and aborts the receiver; a
result that arrives afterwards belongs to a dead transaction and can never
reach a live one.
"""

from __future__ import annotations

from typing import Any

from txsmtp.envelope import Envelope
from txsmtp.errors import SMTPError
from txsmtp.session.actions import Action, Notify, Scope

__all__ = ["Transaction", "finalReplies", "PARTIAL_FAILURE"]

#: Over SMTP a message stored for only some recipients cannot be reported
#: recipient by recipient (one reply); RFC 5321 §6.1 then asks the server to
#: deliver or bounce.  Until txsmtp has a queue to bounce from, the whole
#: message is refused with a temporary failure, and the client sends it
#: again: the recipients whose copy was stored may receive it twice.
PARTIAL_FAILURE = SMTPError(
    451,
    "4.3.0",
    "Message not stored for every recipient; try again later (some may receive it twice)",
)


class Transaction(Scope):
    """
    The state of one mail transaction.

    :ivar envelope: the :class:`~txsmtp.envelope.Envelope` (sender,
        recipients, parameters, queue id).
    :ivar receiver: the delivery's ``IMessageReceiver`` once the message is
        opened, until it is finished or aborted.
    :ivar decoder: the DATA or BDAT decoder while the body is read.
    :ivar pendingWrites: receiver writes handed out and not yet answered.
    :ivar slowWrites: those of them whose result comes later (back-pressure).
    :ivar error: the error that already decides the message's fate (too
        big, a bare line end, a failed write); the body is still read.
    :ivar chunked: the message is sent with BDAT (RFC 3030).
    """

    __slots__ = (
        "envelope",
        "receiver",
        "decoder",
        "pendingWrites",
        "slowWrites",
        "error",
        "chunked",
        "size",
        "storedAt",
    )

    def __init__(self, envelope: Envelope) -> None:
        super().__init__()
        self.envelope = envelope
        self.receiver: Any = None
        self.decoder: Any = None
        self.pendingWrites = 0
        self.slowWrites = 0
        self.error: SMTPError | None = None
        self.chunked = False
        self.size = 0
        #: Where the delivery stored the message (its receiver's optional
        #: ``storedAt``), for the log.
        self.storedAt: Any = None

    def end(self, why: str = "transaction ended") -> list[Action]:
        """
        End the transaction: cancel what is in flight and abort the receiver
        (if it was opened and not finished).
        """
        actions = super().end()
        receiver, self.receiver = self.receiver, None
        self.decoder = None
        if receiver is not None:
            actions.append(Notify(receiver, "abort", (why,), "receiver abort()"))
        return actions

    def repliesOwed(self, lmtp: bool) -> int:
        """
        How many replies end this message: one over SMTP; under LMTP one per
        accepted recipient (RFC 2033 §4.2), for DATA's final dot and BDAT
        LAST alike.
        """
        return len(self.envelope.recipients) if lmtp else 1


Reply = tuple[int, str, str]


def finalReplies(
    envelope: Envelope, results: list[SMTPError | None] | None, lmtp: bool
) -> tuple[list[Reply], str, SMTPError | None]:
    """
    The replies to the end of a stored message, from what the receiver's
    ``finish()`` returned: ``None`` (stored for all) or one entry per
    recipient, ``None`` or an :class:`~txsmtp.errors.SMTPError`.

    :returns: the replies, the outcome for the log (``"accepted"``,
        ``"refused"``, ``"accepted for N of M"``), and the error to log.
    """
    recipients = envelope.recipients
    queueId = envelope.queueId
    if results is not None and len(results) != len(recipients):
        # A delivery bug; the safe answer is "not stored, try again".
        error = SMTPError(451, "4.3.0", "Local error in processing; try again later")
        return [_reply(error)] * (len(recipients) if lmtp else 1), "refused", error
    failures = [r for r in results or () if isinstance(r, SMTPError)]
    if lmtp:
        replies: list[Reply] = []
        for recipient, result in zip(recipients, results or [None] * len(recipients), strict=True):
            if isinstance(result, SMTPError):
                replies.append(_reply(result))
            else:
                replies.append((250, "2.0.0", f"<{recipient.address}> OK: delivered as {queueId}"))
        stored = len(recipients) - len(failures)
        if not failures:
            return replies, "accepted", None
        if stored:
            return replies, f"accepted for {stored} of {len(recipients)}", failures[0]
        return replies, "refused", failures[0]
    if not failures:
        return [(250, "2.0.0", f"OK: queued as {queueId}")], "accepted", None
    if len(failures) == len(recipients):
        return [_reply(failures[0])], "refused", failures[0]
    return [_reply(PARTIAL_FAILURE)], "refused (stored for some recipients)", failures[0]


def _reply(error: SMTPError) -> Reply:
    return (error.code, error.enhanced or f"{error.code // 100}.0.0", error.text)
