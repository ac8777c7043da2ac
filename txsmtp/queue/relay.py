"""
The server side of the relay: what an SMTP server accepts for onward
delivery, and how each accepted message goes into the queue.

:class:`RelayDelivery` is an :class:`~txsmtp.interfaces.IDelivery`.  With
it, every accepted message (local domains too) is streamed into a queue
store (:class:`~txsmtp.queue.interfaces.IQueueStore`) and answered ``250``
only once the store's :meth:`~txsmtp.queue.interfaces.IQueueWriter.commit`
has fired, that is once the body and its row are durable.  The scheduler
then hands it to the next hop: the ``local`` hop (the server's own
``--deliver`` delivery), a route, a smart host or the domain's MX hosts.

Who may send what (the :class:`RelayPolicy`):

- A recipient in a local domain (or a domain routed to a mail store over
  LMTP) is accepted from anyone, as an MX does; when an inner delivery is
  given, its session's ``checkRecipient`` decides about the mailbox at
  RCPT time (unknown users are refused there, never accepted and bounced).
- Any other recipient is relayed only for authenticated sessions and for
  clients in the relay networks (the address a PROXY header reported
  counts); anyone else gets ``554 5.7.1`` at RCPT.  The percent hack
  (``user%elsewhere@local``), UUCP bang paths and quoted local parts
  holding ``@`` name further destinations to hops that honour them: such
  an address is relayed only when every domain it names is local, or the
  client may relay.  Address literals (``user@[192.0.2.1]``) are never
  local.
- An authenticated user may use as ``MAIL FROM`` only the addresses it
  owns (:meth:`RelayDelivery.senderAllowed`), else ``553 5.7.1``.
- A message with more ``Received:`` header fields than
  :attr:`RelayPolicy.maxHops` (RFC 5321 §6.3; the server's own counts) is
  refused after the final dot with ``554 5.4.6``: a loop of routes or
  smart hosts ends there instead of going round forever.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtp.envelope import ConnectionInfo, Envelope, Recipient, peerIP
from txsmtp.errors import SMTPError
from txsmtp.interfaces import IDelivery, IDeliverySession, IMessageReceiver
from txsmtp.queue.errors import QueueError, QueueFullError
from txsmtp.queue.model import QueuedRecipient
from txsmtp.queue.senders import SenderLoginMap, normalizeAddress, normalizeDomain
from txsmtp.wire.address import Address
from txsmtp.wire.params import MailParameters

__all__ = [
    "DEFAULT_MAX_HOPS",
    "HopCounter",
    "RelayDelivery",
    "RelayPolicy",
    "RelayReceiver",
    "RelaySession",
    "parseNetworks",
]

_log = Logger(namespace="txsmtp.queue.relay")

#: The most ``Received:`` header fields a message may carry (RFC 5321 §6.3
#: leaves the number to the server; Postfix's ``hop_count_limit`` is 50).
DEFAULT_MAX_HOPS = 50

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parseNetworks(text: str) -> tuple[Network, ...]:
    """
    The networks of ``--relay-networks``: comma-separated CIDR blocks
    (``192.0.2.0/24``, ``2001:db8::/32``) or single addresses.

    :raise ValueError: with a readable sentence for a bad entry.
    """
    networks: list[Network] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]")))
        except ValueError as e:
            try:
                loose = ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not a network: write an address or CIDR block such as "
                    "192.0.2.0/24 or 2001:db8::/32"
                ) from None
            raise ValueError(f"{entry!r} has host bits set ({e}): did you mean {loose}?") from None
    if not networks:
        raise ValueError("no network given: write CIDR blocks such as 192.0.2.0/24,2001:db8::/32")
    return tuple(networks)




class RelayPolicy:
    """
    The relay's rules that are not about domains.

    :param relayNetworks: the client networks that may relay without
        authenticating (``ipaddress`` networks, or text for
        :func:`parseNetworks`); none by default.
    :param maxHops: the most ``Received:`` header fields a message may
        carry, the server's own included (default 50).
    :param senderLogins: a :class:`~txsmtp.queue.senders.SenderLoginMap`
        saying which sender addresses each authenticated user owns, or
        ``None`` for the default rule of
        :meth:`RelayDelivery.senderAllowed`.
    """

    def __init__(
        self,
        relayNetworks: Iterable[Network | str] | str = (),
        *,
        maxHops: int = DEFAULT_MAX_HOPS,
        senderLogins: SenderLoginMap | None = None,
    ) -> None:
        if isinstance(relayNetworks, str):
            relayNetworks = parseNetworks(relayNetworks)
        networks: list[Network] = []
        for n in relayNetworks:
            networks.extend(parseNetworks(n) if isinstance(n, str) else (n,))
        self.relayNetworks: tuple[Network, ...] = tuple(networks)
        if maxHops < 1:
            raise ValueError("maxHops must be at least 1")
        self.maxHops = maxHops
        self.senderLogins = senderLogins

    def inRelayNetworks(self, connection: ConnectionInfo) -> bool:
        """Whether the client's address is in one of :attr:`relayNetworks`."""
        ip = peerIP(connection)
        if ip is None:
            return False
        return any(ip.version == n.version and ip in n for n in self.relayNetworks)

    def mayRelay(self, connection: ConnectionInfo) -> bool:
        """Whether this client may send mail to any domain: authenticated, or in the relay networks."""
        return bool(connection.authenticated) or self.inRelayNetworks(connection)

    def __repr__(self) -> str:
        networks = ",".join(str(n) for n in self.relayNetworks) or "none"
        return f"RelayPolicy(relayNetworks={networks}, maxHops={self.maxHops})"


_ROUTING_CHARACTERS = re.compile(r"[@%!]")


@implementer(IDelivery)
class RelayDelivery:
    """
    Accepts mail by the relay's rules and queues every message.

    :param store: the :class:`~txsmtp.queue.interfaces.IQueueStore`
        (opened) that accepted messages go into.
    :param router: what knows the domains: ``isLocal(domain)``,
        ``hasRoute(domain)`` and ``route(address)`` returning a
        :class:`~txsmtp.queue.model.NextHop` (a
        :class:`txsmtp.queue.routing.Router`).
    :param policy: the :class:`RelayPolicy` (default: no relay networks,
        50 hops, no sender login map).
    :param inner: the delivery local domains end in (``--deliver``), or
        ``None``; its sessions' ``checkSender`` and, for recipients it
        will receive (:meth:`deliversLocally`), ``checkRecipient`` are
        asked at MAIL and RCPT time.
        Messages reach it later, through the queue's ``local`` hop.
    :param hostname: the server's name, for log lines.
    :param filters: message filters the message streams through before
        the queue, each a callable ``(receiver, envelope, trusted)``
        returning the receiver to use (itself, or a
        :class:`~txsmtp.mailauth.filters.MessageFilter` around it);
        ``trusted`` says whether the session may relay (authenticated, or
        in the relay networks).  DKIM signing
        (:func:`txsmtp.mailauth.signing.signingFilter`) applies to trusted
        sessions, the inbound checks
        (:func:`txsmtp.mailauth.inbound.checkingFilter`) to the others.
    """

    def __init__(
        self,
        store: Any,
        router: Any,
        policy: RelayPolicy | None = None,
        inner: IDelivery | None = None,
        hostname: str | None = None,
        filters: Iterable[Any] = (),
    ) -> None:
        self.store = store
        self.router = router
        self.policy = policy if policy is not None else RelayPolicy()
        self.inner = inner
        self.hostname = hostname
        self.filters = list(filters)

    def openSession(self, connection: ConnectionInfo) -> Any:
        if self.inner is None:
            return RelaySession(self, connection, None)
        d = defer.maybeDeferred(self.inner.openSession, connection)
        return d.addCallback(lambda inner: RelaySession(self, connection, inner))

    def startCleanup(self, *args: Any, **kwargs: Any) -> None:
        """Start the inner delivery's sweeps of stale files, when it has them (the Maildir deliveries)."""
        start = getattr(self.inner, "startCleanup", None)
        if callable(start):
            start(*args, **kwargs)

    # -- the policy hooks -----------------------------------------------------

    def acceptsFromAnyone(self, domain: str) -> bool:
        """
        Whether mail for ``domain`` (normalized: lower case, no trailing
        dot) is accepted from any client: a local domain, the empty
        domain of ``<Postmaster>``, or a domain routed over LMTP to a mail
        store.  Address literals never are.
        """
        if not domain:
            return True
        if domain.startswith("["):
            return False
        if self.router.isLocal(domain):
            return True
        if self.router.hasRoute(domain):
            return bool(self.router.route(f"postmaster@{domain}").kind == "lmtp")
        return False

    def deliversLocally(self, address: Address) -> bool:
        """
        Whether mail for ``address`` ends in the inner delivery (the
        router's ``local`` hop): a local domain without a ``--route`` of
        its own, or ``<Postmaster>``.
        """
        return bool(self.router.route(str(address)).kind == "local")

    def localDomains(self) -> list[str]:
        """The local domains, as the router knows them (sorted)."""
        return sorted(getattr(self.router, "localDomains", ()) or ())

    def senderAllowed(self, user: str, sender: str) -> bool:
        """
        Whether the authenticated ``user`` may use ``sender`` (an address
        as text) in ``MAIL FROM``.  Override it to ask a directory.

        With a :attr:`RelayPolicy.senderLogins` map, the map decides.
        Without one, a user may send as its own login when the login is an
        address, and as ``login@D`` for each local domain ``D``; anything
        else is refused.  The null sender ``<>`` is never asked about.
        """
        logins = self.policy.senderLogins
        if logins is not None:
            return logins.allows(user, sender)
        wanted = normalizeAddress(sender)
        if "@" in user:
            return normalizeAddress(user) == wanted
        local, _, domain = wanted.rpartition("@")
        return local == user.lower() and domain in {normalizeDomain(d) for d in self.localDomains()}

    def __repr__(self) -> str:
        return f"RelayDelivery({self.store!r}, {self.policy!r})"


@implementer(IDeliverySession)
class RelaySession:
    """
    One connection's session of a :class:`RelayDelivery`.

    :ivar inner: the inner delivery's session, or ``None``.
    """

    def __init__(self, delivery: RelayDelivery, connection: ConnectionInfo, inner: Any) -> None:
        self.delivery = delivery
        self.connection = connection
        self.inner = inner

    def checkSender(self, sender: Address | None, parameters: MailParameters) -> Any:
        user = self.connection.authenticated
        if user and sender is not None and not self.delivery.senderAllowed(user, str(sender)):
            raise SMTPError(
                553, "5.7.1", f"Sender address <{sender}> not owned by user {user}"
            )
        if self.inner is not None:
            return self.inner.checkSender(sender, parameters)
        return None

    def checkRecipient(self, recipient: Recipient, envelope: Envelope) -> Any:
        address = recipient.address
        delivery = self.delivery
        domain = normalizeDomain(address.domain)
        mayRelay = delivery.policy.mayRelay(self.connection)
        if not mayRelay:
            if not delivery.acceptsFromAnyone(domain) or not self._routesOnlyHere(address):
                raise SMTPError(
                    554,
                    "5.7.1",
                    f"<{address}>: Relay access denied: this server takes mail for other "
                    "domains only from its own users; authenticate first (AUTH), or send "
                    "to the recipient's own mail server",
                )
        if self.inner is not None and delivery.deliversLocally(address):
            return self.inner.checkRecipient(recipient, envelope)
        return None

    def _routesOnlyHere(self, address: Address) -> bool:
        """
        Whether every destination the local part could name (the percent
        hack, bang paths, a quoted ``@``) is one accepted from anyone: at
        most one piece of it may be other than such a domain (the user).
        """
        local = address.unquotedLocalPart
        if not _ROUTING_CHARACTERS.search(local):
            return True
        pieces = _ROUTING_CHARACTERS.split(local)
        foreign = [
            p for p in pieces if not p or not self.delivery.acceptsFromAnyone(normalizeDomain(p))
        ]
        return len(foreign) <= 1

    def openMessage(self, envelope: Envelope) -> Any:
        delivery = self.delivery
        try:
            writer = delivery.store.newMessage()
        except QueueError as e:
            raise _queueReply(e, envelope) from e
        receiver: Any = RelayReceiver(writer, envelope, delivery.policy.maxHops)
        if delivery.filters:
            trusted = delivery.policy.mayRelay(self.connection)
            for makeFilter in delivery.filters:
                receiver = makeFilter(receiver, envelope, trusted)
        return receiver

    def verify(self, address: str) -> Any:
        if self.inner is not None:
            return self.inner.verify(address)
        return None

    def reset(self) -> None:
        if self.inner is not None:
            self.inner.reset()

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


def _queueReply(error: BaseException, envelope: Envelope) -> SMTPError:
    """The reply for a store that failed to take a message (and the log line)."""
    if isinstance(error, QueueFullError):
        _log.error(
            "queue full: message {queueId} refused with 452 ({error})",
            queueId=envelope.queueId,
            error=str(error) or type(error).__name__,
        )
        return SMTPError(
            452, "4.3.1", "Insufficient system storage: the mail queue is full; try again later"
        )
    _log.error(
        "queue error: message {queueId} refused with 451 ({error})",
        queueId=envelope.queueId,
        error=str(error) or type(error).__name__,
    )
    return SMTPError(451, "4.3.0", "Local error in processing (mail queue); try again later")


class HopCounter:
    """
    Counts the ``Received:`` header fields of a message fed in chunks of
    any size, in the header section only (up to the first empty line),
    and in at most ``limit`` octets of it.  Only the start of the current
    line is kept between chunks: memory stays bounded whatever comes.

    It also notes a ``TLS-Required: No`` field (RFC 8689 §5): the sender
    asks that the recipient domain's TLS policies (MTA-STS, DANE) not stop
    the delivery.

    :ivar count: the ``Received:`` fields seen so far.
    :ivar tlsOptional: a ``TLS-Required: No`` field was seen.
    :ivar done: the header section ended (or ``limit`` was reached).
    """

    _PREFIX = 32
    _RECEIVED = re.compile(rb"received[ \t]*:", re.I)
    _TLS_OPTIONAL = re.compile(rb"tls-required[ \t]*:[ \t]*no[ \t]*\r?\n", re.I)

    def __init__(self, limit: int = 1024 * 1024) -> None:
        self.count = 0
        self.tlsOptional = False
        self.done = False
        self.limit = limit
        self._scanned = 0
        self._prefix = b""
        self._skipping = False

    def _line(self, start: bytes) -> None:
        if self._RECEIVED.match(start):
            self.count += 1
        elif self._TLS_OPTIONAL.match(start):
            self.tlsOptional = True

    def feed(self, chunk: bytes) -> None:
        """Scan the next chunk."""
        if self.done:
            return
        room = self.limit - self._scanned
        if len(chunk) > room:
            chunk = chunk[:room]
        n = len(chunk)
        i = 0
        while i < n:
            if self._skipping:
                j = chunk.find(b"\n", i)
                if j < 0:
                    break
                i = j + 1
                self._skipping = False
                continue
            take = chunk[i : i + self._PREFIX - len(self._prefix)]
            j = take.find(b"\n")
            if j >= 0:
                line = self._prefix + take[: j + 1]
                self._prefix = b""
                i += j + 1
                if line in (b"\r\n", b"\n"):
                    self.done = True  # the empty line: the header section ends
                    return
                self._line(line)
                continue
            self._prefix += take
            i += len(take)
            if len(self._prefix) >= self._PREFIX:
                self._line(self._prefix)
                self._prefix = b""
                self._skipping = True
        self._scanned += n
        if self._scanned >= self.limit:
            self.done = True


@implementer(IMessageReceiver)
class RelayReceiver:
    """
    Streams one message into a queue writer and commits it at the end.

    :param writer: the :class:`~txsmtp.queue.interfaces.IQueueWriter`.
    :param envelope: the message's envelope.
    :param maxHops: the most ``Received:`` fields accepted.

    :ivar storedAt: the queue's id for the message, once committed.
    """

    def __init__(self, writer: Any, envelope: Envelope, maxHops: int = DEFAULT_MAX_HOPS) -> None:
        self.writer = writer
        self.envelope = envelope
        self.maxHops = maxHops
        self.hops = HopCounter()
        self.storedAt: str | None = None
        #: octets above 127 seen: kept with the message, so that each
        #: delivery attempt need not read the body through to learn it
        self.eightBit = False
        self._closed = False

    def write(self, chunk: bytes) -> Any:
        if self._closed:
            return None
        if not self.eightBit and not chunk.isascii():
            self.eightBit = True
        hops = self.hops
        if not hops.done:
            hops.feed(chunk)
            if hops.count > self.maxHops:
                # A loop: what is written is of no use; the rest is read and dropped.
                self._close()
                return None
        try:
            result = self.writer.write(chunk)
        except QueueError as e:
            self._close()
            raise _queueReply(e, self.envelope) from e
        if isinstance(result, defer.Deferred):
            return result.addErrback(self._writeFailed)
        return result

    def _writeFailed(self, failure: Failure) -> None:
        self._close()
        if failure.check(QueueError):
            raise _queueReply(failure.value, self.envelope)
        failure.raiseException()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.writer.abort()

    def finish(self) -> Any:
        if self.hops.count > self.maxHops:
            _log.warn(
                "message {queueId} refused: {count} Received: header fields (at most {limit}); a mail loop?",
                queueId=self.envelope.queueId,
                count=self.hops.count,
                limit=self.maxHops,
            )
            raise SMTPError(
                554,
                "5.4.6",
                f"Too many hops: the message has {self.hops.count} Received: header fields "
                f"(at most {self.maxHops} here); a mail loop?",
            )
        envelope = self.envelope
        data = envelope.toDict()
        data.pop("recipients", None)
        data["eightBit"] = self.eightBit
        if self.hops.tlsOptional and not envelope.parameters.requireTLS:
            # RFC 8689 §4.1: with REQUIRETLS, the field is ignored.
            data["tlsRequiredNo"] = True
        recipients = [
            QueuedRecipient(
                index=i,
                address=str(r.address),
                notify=tuple(r.parameters.notify) if r.parameters.notify is not None else None,
                orcpt=tuple(r.parameters.orcpt) if r.parameters.orcpt is not None else None,  # type: ignore[arg-type]
            )
            for i, r in enumerate(envelope.recipients)
        ]
        sender = str(envelope.sender) if envelope.sender is not None else ""
        self._closed = True
        d = defer.maybeDeferred(self.writer.commit, sender, recipients, data)

        def stored(queueId: str) -> None:
            self.storedAt = queueId
            return None

        def failed(failure: Failure) -> None:
            if failure.check(QueueError):
                raise _queueReply(failure.value, envelope)
            _log.failure(
                "queueing message {queueId} failed; answered 451",
                failure,
                queueId=envelope.queueId,
            )
            raise SMTPError(451, "4.3.0", "Local error in processing (mail queue); try again later")

        return d.addCallbacks(stored, failed)

    def abort(self, reason: str) -> None:
        self._close()
