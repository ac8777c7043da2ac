"""
Delivery status notifications (DSN): the messages that tell a sender what
became of their mail (RFC 3464, requested with RFC 3461's parameters).

A :class:`Reporter` turns the results of one delivery attempt into at most
one report of each kind, and queues each like any other mail (from ``<>``
to the original sender):

- a *failure* report for the recipients that failed (unless their NOTIFY
  excludes FAILURE, as NOTIFY=NEVER does);
- a *delay* report for the still deferred recipients it is given (the
  scheduler passes only those to warn about), when NOTIFY is absent or
  includes DELAY;
- a *success* report for the delivered or relayed recipients whose NOTIFY
  includes SUCCESS.

No report is ever sent about a message from ``<>`` (RFC 3461 §6.2, RFC
5321 §4.5.5): that is how loops of reports are avoided.

Each report is ``multipart/report; report-type=delivery-status`` (RFC
6522) with three parts: a text for people, a ``message/delivery-status``
part (RFC 3464 §2) and the original message: whole (``message/rfc822``)
in a failure report when the sender asked for ``RET=FULL``, else its header
section only (``text/rfc822-headers``; RFC 3461 §4.3 asks for headers only
in the other reports).  The original is copied from its body file in
chunks of :data:`CHUNK` octets, never read whole into memory; its header
section is returned up to :data:`HEADER_LIMIT` octets.

8-bit and internationalised mail: the original is returned as it was
received.  When it was sent with ``BODY=8BITMIME`` the returned part is
marked ``8bit`` and the report itself is queued with ``BODY=8BITMIME``;
when it was sent with ``SMTPUTF8`` the parts are ``message/global`` and
``message/global-headers`` (RFC 6532 §3.7, RFC 6533 §6) and the report is
queued with ``SMTPUTF8`` too.  The outbound delivery then treats the
report like any 8-bit message (a next hop that cannot take it defers or
bounces it, as it would the original).  A ``BODY=BINARYMIME`` original
(which may hold lines no 8-bit MIME part may) is returned as headers only.
The ``message/delivery-status`` part stays 7-bit: a non-ASCII address is
written with the ``utf-8`` address type in its ``\\x{HEX}`` form (RFC 6533
§3).
"""

from __future__ import annotations

import quopri
import secrets
import textwrap
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from txsmtp.queue.events import NO_QUEUE_EVENTS, QueueEvents
from txsmtp.queue.model import AttemptResult, QueuedMessage, QueuedRecipient, Result
from txsmtp.queue.retry import DEFAULT_LIFETIME

__all__ = ["Reporter", "CHUNK", "HEADER_LIMIT", "FAILURE", "DELAY", "SUCCESS"]

_log = Logger(namespace="txsmtp.queue.reports")

#: The size of each read of a body file.
CHUNK = 64 * 1024
#: The most octets of a header section returned in a report.
HEADER_LIMIT = 64 * 1024
#: The longest value written in a delivery-status field (lines stay
#: within RFC 5322's 998 octets).
_FIELD_LIMIT = 900

#: The kinds of report, in the order they are queued.
FAILURE = "failure"
DELAY = "delay"
SUCCESS = "success"

_ACTION = {Result.FAILED: "failed", Result.DEFERRED: "delayed", Result.DELIVERED: "delivered", Result.RELAYED: "relayed"}


def _kind(rcpt: QueuedRecipient, result: AttemptResult) -> str | None:
    """The kind of report ``result`` belongs in, given the recipient's NOTIFY (RFC 3461 §4.1)."""
    notify = rcpt.notify
    if result.result == Result.FAILED:
        return FAILURE if notify is None or "FAILURE" in notify else None
    if result.result == Result.DEFERRED:
        return DELAY if notify is None or "DELAY" in notify else None
    if result.result in (Result.DELIVERED, Result.RELAYED) and not result.passedOn:
        return SUCCESS if notify is not None and "SUCCESS" in notify else None
    return None


def _date(t: float) -> str:
    """An RFC 5322 date-time, in UTC."""
    return format_datetime(datetime.fromtimestamp(t, timezone.utc))


def _clean(text: str) -> str:
    """A field value on one line, printable ASCII, bounded (RFC 3464 fields are 7-bit)."""
    out = "".join(c if " " <= c <= "~" else ("?" if c not in "\r\n\t" else " ") for c in text)
    return " ".join(out.split())[:_FIELD_LIMIT]


def _utf8AddrXtext(address: str) -> str:
    """RFC 6533 §3's utf-8-addr-xtext: ``\\``, ``+``, ``=``, controls and non-ASCII as ``\\x{HEX}``."""
    return "".join(
        c if "!" <= c <= "~" and c not in "\\+=" else f"\\x{{{ord(c):X}}}" for c in address
    )[:_FIELD_LIMIT]


def _typedAddress(addressType: str, address: str) -> str:
    """``type; address`` for Final-Recipient and Original-Recipient (RFC 3464 §2.3.1, §2.3.2)."""
    addressType = _clean(addressType).lower() or "unknown"
    if addressType == "utf-8" or not address.isascii():
        return f"utf-8; {_utf8AddrXtext(address)}"
    return f"{addressType}; {_clean(address)}"


def _readHeaders(body: BinaryIO, limit: int = HEADER_LIMIT) -> bytes:
    """
    The header section of the message in ``body`` (without the empty line
    that ends it), read ``CHUNK`` octets at a time; cut after the last whole
    line within ``limit`` octets when it is longer.
    """
    buf = b""
    while True:
        if buf.startswith(b"\r\n") or buf.startswith(b"\n"):
            return b""
        ends = [i for i in (buf.find(b"\r\n\r\n"), buf.find(b"\n\n")) if i >= 0]
        if ends:
            end = min(ends)
            buf = buf[: end + (2 if buf.startswith(b"\r\n", end) else 1)]
            if len(buf) <= limit:
                return buf
            break
        if len(buf) >= limit:
            break
        chunk = body.read(CHUNK)
        if not chunk:
            break
        buf += chunk
    buf = buf[:limit]
    if len(buf) == limit:
        cut = buf.rfind(b"\n")
        buf = buf[: cut + 1] if cut >= 0 else b""
    elif buf and not buf.endswith(b"\n"):
        buf += b"\r\n"
    return buf


def _lines(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


class Reporter:
    """
    Builds delivery status notifications and queues them.

    :param store: the :class:`~txsmtp.queue.interfaces.IQueueStore` the
        reports are queued in.
    :param hostname: this server's name (``Reporting-MTA``, the
        ``MAILER-DAEMON@`` sender and the ``Message-ID``).
    :param clock: the :class:`~twisted.internet.interfaces.IReactorTime`
        whose ``seconds()`` dates the reports (default: the store's clock,
        else the reactor).
    :param lifetime: the queue lifetime in seconds (as the scheduler's
        :class:`~txsmtp.queue.retry.RetryPolicy` has it), for the
        ``Will-Retry-Until`` field of delay reports.
    """

    def __init__(
        self, store: Any, hostname: str, clock: IReactorTime | None = None, *, lifetime: float = DEFAULT_LIFETIME
    ) -> None:
        self.store = store
        self.hostname = hostname
        if clock is None:
            clock = getattr(store, "clock", None)
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        self.lifetime = lifetime
        #: told of every report queued (:class:`~txsmtp.queue.events.QueueEvents`)
        self.events: QueueEvents = NO_QUEUE_EVENTS

    def report(
        self,
        message: QueuedMessage,
        results: list[tuple[QueuedRecipient, AttemptResult]],
        openBody: Callable[[], Deferred[BinaryIO]],
    ) -> Deferred[list[str]]:
        """
        Queue the reports that ``results`` call for.

        :param message: the message the results are about.
        :param results: ``(recipient, result)`` pairs; a ``DEFERRED``
            result stands for a delay to report.
        :param openBody: a function returning a Deferred that fires with the
            message's body file (readable, seekable); each report that
            needs the body opens and closes it.
        :return: a Deferred firing with the ids of the reports queued (an
            empty list when none is due).
        """
        return Deferred.fromCoroutine(self._report(message, results, openBody))

    async def _report(
        self,
        message: QueuedMessage,
        results: list[tuple[QueuedRecipient, AttemptResult]],
        openBody: Callable[[], Deferred[BinaryIO]],
    ) -> list[str]:
        if not message.sender:
            return []
        byKind: dict[str, list[tuple[QueuedRecipient, AttemptResult]]] = {}
        for rcpt, result in results:
            kind = _kind(rcpt, result)
            if kind is not None:
                byKind.setdefault(kind, []).append((rcpt, result))
        ids = []
        for kind in (FAILURE, DELAY, SUCCESS):
            if kind in byKind:
                reportId = await self._queue(kind, message, byKind[kind], openBody)
                _log.info(
                    "{queueId}: {kind} report {reportId} queued for <{sender}> about {recipients}",
                    queueId=message.id,
                    kind=kind,
                    reportId=reportId,
                    sender=message.sender,
                    recipients=",".join(f"<{r.address}>" for r, _ in byKind[kind]),
                )
                ids.append(reportId)
                self.events.reportQueued(kind)
        return ids

    async def _queue(
        self,
        kind: str,
        message: QueuedMessage,
        items: list[tuple[QueuedRecipient, AttemptResult]],
        openBody: Callable[[], Deferred[BinaryIO]],
    ) -> str:
        now = self.clock.seconds()
        params = message.envelope.get("parameters") or {}
        smtputf8 = bool(params.get("smtputf8"))
        bodyType = str(params.get("body") or "7BIT").upper()
        # RFC 3461 §4.3: the whole message only in a failure report, and
        # only when asked for; never a BINARYMIME one (see the module text).
        # RFC 8689 §5: a report on a REQUIRETLS message holds no body, and
        # goes back with REQUIRETLS itself.
        requireTLS = bool(params.get("requiretls"))
        full = kind == FAILURE and message.ret == "FULL" and bodyType != "BINARYMIME" and not requireTLS
        headers = b""
        if not full:
            body = await openBody()
            try:
                headers = _readHeaders(body)
            finally:
                body.close()
        eightBit = (
            smtputf8
            or (full and bodyType == "8BITMIME")
            or any(b >= 0x80 for b in headers)
            or not message.sender.isascii()
        )
        returnedNote = "full" if full else ("binary" if kind == FAILURE and message.ret == "FULL" and not requireTLS else "headers")
        boundary = f"txsmtp-report-{secrets.token_hex(16)}"
        head = self._head(kind, message, items, boundary, now, eightBit)
        text = _humanText(kind, self.hostname, message, items, returnedNote, message.arrival + self.lifetime)
        parts = [head, self._textPart(boundary, text), self._statusPart(boundary, message, items, now)]
        if full:
            ctype = "message/global" if smtputf8 else "message/rfc822"
            cte = "8bit" if eightBit else "7bit"
            parts.append(_lines(f"--{boundary}\nContent-Type: {ctype}\nContent-Transfer-Encoding: {cte}\n"
                                "Content-Description: your message\n\n"))
        else:
            ctype = "message/global-headers" if smtputf8 else "text/rfc822-headers"
            cte = "8bit" if any(b >= 0x80 for b in headers) else "7bit"
            parts.append(_lines(f"--{boundary}\nContent-Type: {ctype}\nContent-Transfer-Encoding: {cte}\n"
                                "Content-Description: the headers of your message\n\n"))
            parts.append(headers)
        envelope = self._envelope(kind, message, eightBit, smtputf8 or not message.sender.isascii())
        if requireTLS:
            envelope["parameters"]["requiretls"] = True
        writer = self.store.newMessage()
        try:
            await self._write(writer, parts)
            if full:
                body = await openBody()
                try:
                    await self._copy(writer, body)
                finally:
                    body.close()
            await self._write(writer, [f"\r\n--{boundary}--\r\n".encode("ascii")])
            reportId: str = await writer.commit("", [QueuedRecipient(0, message.sender)], envelope)
        except BaseException:
            writer.abort()
            raise
        return reportId

    async def _write(self, writer: Any, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            wait = writer.write(chunk)
            if wait is not None:
                await wait

    async def _copy(self, writer: Any, body: BinaryIO) -> None:
        """Copy ``body`` to ``writer``, :data:`CHUNK` octets at a time."""
        while True:
            chunk = body.read(CHUNK)
            if not chunk:
                return
            wait = writer.write(chunk)
            if wait is not None:
                await wait

    def _head(
        self,
        kind: str,
        message: QueuedMessage,
        items: list[tuple[QueuedRecipient, AttemptResult]],
        boundary: str,
        now: float,
        eightBit: bool,
    ) -> bytes:
        messageId = f"<{int(now)}.{secrets.token_hex(8)}@{self.hostname}>"
        return _lines(
            f"From: Mail Delivery System <MAILER-DAEMON@{self.hostname}>\n"
            f"To: <{message.sender}>\n"
            f"Subject: {_subject(kind, items)}\n"
            f"Date: {_date(now)}\n"
            f"Message-ID: {messageId}\n"
            # RFC 3834 §5: automatic responses are marked so that other
            # responders do not answer them.
            "Auto-Submitted: auto-replied\n"
            "MIME-Version: 1.0\n"
            "Content-Type: multipart/report; report-type=delivery-status;\n"
            f'\tboundary="{boundary}"\n'
            f"Content-Transfer-Encoding: {'8bit' if eightBit else '7bit'}\n"
            "\n"
            "This is a delivery status notification in MIME format (RFC 3464).\n"
            "\n"
        )

    def _textPart(self, boundary: str, text: str) -> bytes:
        if text.isascii():
            return _lines(
                f"--{boundary}\nContent-Type: text/plain; charset=us-ascii\n"
                "Content-Description: what happened\nContent-Transfer-Encoding: 7bit\n\n"
            ) + _lines(text) + b"\r\n"
        encoded = quopri.encodestring(text.replace("\r\n", "\n").encode("utf-8"))
        return (
            _lines(
                f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n"
                "Content-Description: what happened\nContent-Transfer-Encoding: quoted-printable\n\n"
            )
            + encoded.replace(b"\n", b"\r\n")
            + b"\r\n"
        )

    def _statusPart(
        self, boundary: str, message: QueuedMessage, items: list[tuple[QueuedRecipient, AttemptResult]], now: float
    ) -> bytes:
        # RFC 3464 §2.2: the per-message fields, then one block per
        # recipient (§2.3), blocks separated by empty lines.
        lines = [f"--{boundary}", "Content-Type: message/delivery-status", "Content-Description: delivery report", ""]
        lines.append(f"Reporting-MTA: dns; {_clean(self.hostname)}")
        envid = message.envid
        if envid:
            # §2.2.1: the ENVID as given (decoded from xtext, RFC 3461 §4.4).
            lines.append(f"Original-Envelope-Id: {_clean(envid)}")
        lines.append(f"Arrival-Date: {_date(message.arrival)}")
        for rcpt, result in items:
            lines.append("")
            if rcpt.orcpt is not None:
                lines.append(f"Original-Recipient: {_typedAddress(rcpt.orcpt[0], rcpt.orcpt[1])}")
            lines.append(f"Final-Recipient: {_typedAddress('rfc822', rcpt.address)}")
            lines.append(f"Action: {_ACTION[result.result]}")
            lines.append(f"Status: {_clean(result.status)}")
            if result.remoteMTA:
                lines.append(f"Remote-MTA: {_clean(result.remoteMTA)}")
            if result.diagnostic:
                lines.append(f"Diagnostic-Code: {_clean(result.diagnostic)}")
            lines.append(f"Last-Attempt-Date: {_date(now)}")
            if result.result == Result.DEFERRED:
                lines.append(f"Will-Retry-Until: {_date(message.arrival + self.lifetime)}")
        lines.append("")
        return _lines("\n".join(lines) + "\n")

    def _envelope(self, kind: str, message: QueuedMessage, eightBit: bool, smtputf8: bool) -> dict[str, Any]:
        """The envelope a report is queued with (as :meth:`txsmtp.envelope.Envelope.toDict` gives one)."""
        return {
            "sender": None,
            "parameters": {
                "size": None,
                "body": "8BITMIME" if eightBit else None,
                "smtputf8": smtputf8,
                "auth": None,
                "ret": None,
                "envid": None,
                "extra": {},
            },
            "queueId": "",
            "connection": {
                "peer": "local",
                "heloName": self.hostname,
                "esmtp": True,
                "protocol": "SMTP",
                "tls": None,
                "authenticated": None,
                "sessionId": "",
            },
            "report": {"kind": kind, "about": message.id},
        }


# -- the text for people --------------------------------------------------

#: Plain explanations of enhanced status codes (RFC 3463), by subject and
#: detail, then by subject alone.
_EXPLAIN = {
    "1.1": "the address does not exist at the destination (no such mailbox)",
    "1.2": "the domain of the address does not exist, or has no mail server",
    "1.3": "the address is not written correctly",
    "1.10": "the domain of the address does not accept any mail (it says so in the DNS)",
    "2.1": "the recipient's mailbox is disabled and takes no mail",
    "2.2": "the recipient's mailbox is full",
    "2.3": "the message is larger than the recipient's mailbox accepts",
    "3.4": "the message is larger than the receiving server accepts",
    "4.1": "the receiving server could not be reached",
    "4.2": "the connection to the receiving server failed or was cut",
    "4.4": "no mail server could be found or reached for the destination",
    "4.6": "the message went round in a loop between mail servers",
    "4.7": "it stayed in the queue too long (every attempt failed until the time limit)",
    "5.4": "the mail servers did not understand each other",
    "6.3": "the message could not be converted for the receiving server",
    "1": "there is a problem with the address",
    "2": "there is a problem with the recipient's mailbox",
    "3": "there is a problem with the receiving mail system",
    "4": "there is a problem with the network or the routing of mail",
    "5": "the mail servers did not understand each other",
    "6": "there is a problem with the content of the message",
    "7": "the receiving server refused it for policy or security reasons "
    "(for example it judged it to be spam, or does not accept mail from this sender)",
}


def _explain(result: AttemptResult) -> str:
    """One sentence for people about why ``result`` is what it is."""
    if result.result == Result.DELIVERED:
        return "delivered."
    if result.result == Result.RELAYED:
        return "passed on to the next mail system, which does not send delivery notices."
    parts = result.status.split(".")
    words = None
    if len(parts) == 3:
        words = _EXPLAIN.get(f"{parts[1]}.{parts[2]}") or _EXPLAIN.get(parts[1])
    if words is None:
        words = "it was refused" if result.result == Result.FAILED else "a temporary problem stopped it"
    prefix = "not delivered: " if result.result == Result.FAILED else "not delivered yet: "
    return prefix + words + "."


def _subject(kind: str, items: list[tuple[QueuedRecipient, AttemptResult]]) -> str:
    if kind == FAILURE:
        return "Undelivered Mail: your message could not be delivered"
    if kind == DELAY:
        return "Delayed Mail: your message has not been delivered yet"
    if all(result.result == Result.RELAYED for _, result in items):
        return "Relayed Mail: your message was passed on"
    return "Delivered Mail: your message was delivered"


def _fill(text: str) -> list[str]:
    return textwrap.wrap(text, 72) + [""]


def _humanText(
    kind: str,
    hostname: str,
    message: QueuedMessage,
    items: list[tuple[QueuedRecipient, AttemptResult]],
    returned: str,
    until: float,
) -> str:
    """The ``text/plain`` part: what happened, why, and what the sender can do."""
    out = [f"This is the mail system at {hostname}.", ""]
    if kind == FAILURE:
        out += _fill(
            "Your message could not be delivered to the recipients listed below. "
            "The mail system has given up on them and will not try again."
        )
    elif kind == DELAY:
        out += _fill(
            "Your message has not been delivered yet to the recipients listed below. "
            "This is only a warning: the mail system keeps trying."
        )
    else:
        out += _fill("Here is what became of your message, as you asked to be told:")
    for rcpt, result in items:
        out.append(f"<{rcpt.address}>:")
        out += ["    " + line for line in textwrap.wrap(_explain(result), 68)]
        if result.reason:
            out += ["    " + line for line in textwrap.wrap("Details: " + result.reason, 68)]
        out.append("")
    out.append("What you can do:")
    if kind == FAILURE:
        out += _fill(
            "Check each address above for typing mistakes, and send your message again "
            "to the corrected address. If the address is right, the problem is on the "
            "recipient's side: reach the recipient another way, or send this notice to "
            "your mail administrator (the details above tell them what went wrong)."
        )
    elif kind == DELAY:
        out += _fill(
            "Nothing: do not send the message again. The mail system will keep trying "
            f"until {_date(until)}. If it still cannot deliver it by then, you will get "
            "another notice and your message back."
        )
    else:
        out += _fill("Nothing: no action is needed.")
    if returned == "full":
        out += _fill("Your message is attached below, in full.")
    elif returned == "binary":
        out += _fill("Your message was sent in binary form, so only its headers are attached below.")
    else:
        out += _fill("The headers of your message are attached below (not the whole message).")
    out.append(f"Queue id: {message.id}; received {_date(message.arrival)}.")
    return "\n".join(out) + "\n"
