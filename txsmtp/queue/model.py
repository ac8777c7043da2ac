"""
The plain data the queue's parts pass between them.

- A store (:mod:`txsmtp.queue.interfaces`) keeps :class:`QueuedMessage`
  objects, each with its :class:`QueuedRecipient` rows, and hands them out
  in :class:`Lease` objects.
- The scheduler routes each recipient to a :class:`NextHop`; an outbound
  delivery makes one attempt for several recipients of one message and
  answers an :class:`AttemptResult` for each.
- The scheduler turns each result into a :class:`RecipientOutcome` (with
  the time of the next attempt) and records it in the store; the reports
  (:mod:`txsmtp.queue.reports`) turn the same results into delivery status
  notifications (RFC 3464).

Times are POSIX timestamps (seconds since the epoch, as ``time.time()``
and ``reactor.seconds()`` give): they are stored and survive restarts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RecipientState",
    "Result",
    "QueuedRecipient",
    "QueuedMessage",
    "Lease",
    "NextHop",
    "AttemptResult",
    "RecipientOutcome",
    "statsOf",
]


class RecipientState(str, enum.Enum):
    """Where a recipient that is still in the queue stands."""

    #: never tried yet
    QUEUED = "queued"
    #: tried, and waiting for its next attempt
    DEFERRED = "deferred"
    #: put on hold by the operator: never tried, never expires, until released
    HELD = "held"


class Result(str, enum.Enum):
    """
    What one attempt did for one recipient.  The words are the ``Action``
    values of RFC 3464 §2.3.3, but for ``DEFERRED``, which is RFC 3464's
    ``delayed`` only when a delay report is sent.
    """

    #: the next hop is the final destination and took it (2xx over LMTP,
    #: or a local delivery), or it took it and offered DSN
    DELIVERED = "delivered"
    #: the next hop took it (2xx) but does not offer DSN, so no further
    #: reports will come (RFC 3461 §6.2.1.d: a "relayed" report)
    RELAYED = "relayed"
    #: a permanent failure (5xx, a null MX, no such domain, expired)
    FAILED = "failed"
    #: a temporary failure: try again later
    DEFERRED = "deferred"


@dataclass
class QueuedRecipient:
    """
    One recipient of a queued message.

    :ivar index: its position among the message's recipients (from 0, in
        RCPT order); with the message id it names the recipient in a store.
    :ivar address: the forward-path, as text without angle brackets.
    :ivar notify: DSN's NOTIFY (RFC 3461 §4.1), e.g. ``("SUCCESS",
        "FAILURE")`` or ``("NEVER",)``; ``None`` when not given (failure
        and delay reports are then sent: RFC 3461 §4.1 default).
    :ivar orcpt: DSN's ORCPT as ``(address type, address)``, e.g.
        ``("rfc822", "a@example.com")``, or ``None``.
    :ivar state: a :class:`RecipientState`.
    :ivar attempts: how many delivery attempts were made.
    :ivar nextAttempt: when it is due (a timestamp).
    :ivar lastError: why the last attempt failed, for people (``None``
        before any failure), e.g. ``"127.0.0.2 said: 451 4.3.0 try later"``.
    :ivar delayReported: a delay report was already sent for it.
    """

    index: int
    address: str
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None
    state: RecipientState = RecipientState.QUEUED
    attempts: int = 0
    nextAttempt: float = 0.0
    lastError: str | None = None
    delayReported: bool = False

    @property
    def domain(self) -> str:
        """The part after the last ``@``, lowercased (``""`` for none)."""
        return self.address.rpartition("@")[2].lower()


@dataclass
class QueuedMessage:
    """
    A message in the queue.

    :ivar id: the store's identifier (also the name the CLI takes).
    :ivar sender: the reverse-path without angle brackets, ``""`` for ``<>``.
    :ivar arrival: when it was queued (a timestamp).
    :ivar size: the body's size in octets.
    :ivar envelope: the rest of the envelope as
        :meth:`txsmtp.envelope.Envelope.toDict` gives it (MAIL parameters
        with RET and ENVID, the client's identity, the server's queue id).
        Its ``recipients`` entry is not kept: :attr:`recipients` is the
        truth.
    :ivar recipients: the recipients still in the queue (in a
        :class:`Lease`: only those claimed).
    """

    id: str
    sender: str
    arrival: float
    size: int = 0
    envelope: dict[str, Any] = field(default_factory=dict)
    recipients: list[QueuedRecipient] = field(default_factory=list)

    @property
    def ret(self) -> str | None:
        """DSN's RET (``"FULL"`` or ``"HDRS"``), or ``None``."""
        return (self.envelope.get("parameters") or {}).get("ret")

    @property
    def envid(self) -> str | None:
        """DSN's ENVID (decoded from xtext), or ``None``."""
        return (self.envelope.get("parameters") or {}).get("envid")

    def toJSON(self) -> dict[str, Any]:
        """
        The form ``txsmtp queue list --json`` prints: ``id``, ``sender``,
        ``arrival`` (ISO 8601, UTC), ``size`` and ``recipients``, each with
        ``address``, ``state``, ``attempts``, ``next_attempt`` (ISO 8601)
        and ``last_error``.
        """
        from datetime import datetime, timezone

        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")

        return {
            "id": self.id,
            "sender": self.sender,
            "arrival": iso(self.arrival),
            "size": self.size,
            "recipients": [
                {
                    "address": r.address,
                    "state": RecipientState(r.state).value,
                    "attempts": r.attempts,
                    "next_attempt": iso(r.nextAttempt),
                    "last_error": r.lastError,
                }
                for r in self.recipients
            ],
        }


@dataclass
class Lease:
    """
    A claim on some recipients of one message, held by one owner until
    :attr:`expires`.  A store records outcomes for these recipients only
    while :attr:`token` still holds (it changes at every claim), so that a
    delivery that outlived its lease cannot overwrite a newer claim.

    :ivar message: the message, with only the claimed recipients.
    :ivar owner: who claimed it (a node name).
    :ivar token: a random string, new at every claim.
    :ivar expires: when the claim lapses (a timestamp).
    """

    message: QueuedMessage
    owner: str
    token: str
    expires: float


@dataclass(frozen=True)
class NextHop:
    """
    Where a recipient's mail goes next.

    :ivar kind: ``"mx"`` (the domain's mail exchangers, :mod:`txsmtp.mx`),
        ``"smtp"`` (one host: a smart host or a ``--route``), ``"lmtp"``
        (a mail store over LMTP) or ``"local"`` (the server's own
        ``--deliver`` delivery).
    :ivar destination: what the kind needs: the domain for ``"mx"``;
        ``"[host]:port"`` for ``"smtp"``; ``"unix:/path"`` or
        ``"[host]:port"`` for ``"lmtp"``; ``""`` for ``"local"``.
    :ivar options: further settings of a route (TLS policy, credentials),
        as a tuple of ``(name, value)`` pairs so that the hop stays hashable.
    """

    kind: str
    destination: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """The name concurrency limits and log lines use, e.g. ``mx:example.com``."""
        return f"{self.kind}:{self.destination}"

    def option(self, name: str, default: Any = None) -> Any:
        """The value of one of :attr:`options`."""
        for key, value in self.options:
            if key == name:
                return value
        return default


@dataclass
class AttemptResult:
    """
    What one delivery attempt did for one recipient.

    :ivar result: a :class:`Result`.
    :ivar status: the enhanced status code, e.g. ``"5.1.1"`` (RFC 3463),
        from the reply when it had one, else the best fit.
    :ivar diagnostic: the reply as RFC 3464 §2.3.6 writes it, e.g.
        ``"smtp; 550 5.1.1 no such user"``, or ``None`` when there was no
        reply (then :attr:`reason` says why).
    :ivar remoteMTA: the host that answered, e.g. ``"dns; mx.example.com"``
        (RFC 3464 §2.3.5), or ``None``.
    :ivar reason: a line for people and logs, e.g.
        ``"mx.example.com[127.0.0.2] said: 550 5.1.1 no such user"``.
    :ivar passedOn: for ``DELIVERED``: the message went to a next hop that
        offers DSN, with the recipient's NOTIFY, so any further report is
        that hop's to send, and none is sent here (RFC 3461 §6.2.1: a
        success report comes from where the message ends, or a "relayed"
        one from the last hop that speaks DSN).
    :ivar tls: the TLS version the message went under when the next hop
        took it (``"TLSv1.3"``), else ``None`` (for the log line).
    """

    result: Result
    status: str
    diagnostic: str | None = None
    remoteMTA: str | None = None
    reason: str = ""
    passedOn: bool = False
    tls: str | None = field(default=None, compare=False)


@dataclass
class RecipientOutcome:
    """
    What a store records for one claimed recipient.

    :ivar index: the recipient's :attr:`QueuedRecipient.index`.
    :ivar result: a :class:`Result`; every result but ``DEFERRED`` removes
        the recipient from the queue (and the message with its last one).
    :ivar nextAttempt: for ``DEFERRED``, when to try again.
    :ivar lastError: for ``DEFERRED``, the reason to show.
    :ivar delayReported: for ``DEFERRED``, set once a delay report was sent.
    """

    index: int
    result: Result
    nextAttempt: float | None = None
    lastError: str | None = None
    delayReported: bool = False


def statsOf(messages: list[QueuedMessage]) -> dict[str, Any]:
    """
    What :meth:`~txsmtp.queue.interfaces.IQueueStore.stats` answers,
    counted from ``messages`` (a store's ``list()``): for a store that
    cannot count otherwise.
    """
    counts = {s.value: 0 for s in RecipientState}
    for message in messages:
        for rcpt in message.recipients:
            counts[rcpt.state.value] = counts.get(rcpt.state.value, 0) + 1
    return {
        "recipients": counts,
        "messages": len(messages),
        "oldestArrival": min((m.arrival for m in messages), default=None),
    }
