"""
The facts a delivery sees: the connection, the envelope, each recipient.

These are plain objects with slots.  The server fills them in; deliveries
read them (and may hang their own data on :attr:`Recipient.data` and
:attr:`Envelope.data`).  The envelope keeps every parameter of MAIL and RCPT
(DSN's RET, ENVID, NOTIFY and ORCPT included) so that a store or a relay
queue can keep it with the message.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress

from txsmtp.wire.address import Address
from txsmtp.wire.params import MailParameters, RecipientParameters

if TYPE_CHECKING:
    from txsmtp.mailauth.results import AuthenticationResults

__all__ = ["ConnectionInfo", "Envelope", "Recipient", "TLSInfo", "peerIP"]


class TLSInfo:
    """
    What is known about a TLS session.

    :ivar version: the protocol version, e.g. ``"TLSv1.3"``.
    :ivar cipher: the cipher suite name.
    :ivar peerCertificate: the client's certificate
        (:class:`OpenSSL.crypto.X509`), or ``None``.
    """

    __slots__ = ("version", "cipher", "peerCertificate")

    def __init__(self, version: str | None = None, cipher: str | None = None, peerCertificate: Any = None) -> None:
        self.version = version
        self.cipher = cipher
        self.peerCertificate = peerCertificate

    def __repr__(self) -> str:
        return f"TLSInfo(version={self.version!r}, cipher={self.cipher!r})"


class ConnectionInfo:
    """
    The facts about one SMTP connection, kept up to date by the protocol.

    A delivery session receives this object when it is opened and may read
    it at any time: :attr:`heloName`, :attr:`tls` and :attr:`authenticated`
    change during the session (EHLO, STARTTLS, AUTH).

    :ivar peer: the client's address (:class:`twisted.internet.interfaces.IAddress`);
        behind a PROXY-protocol front end, the address the proxy reported.
    :ivar host: the local address the client connected to.
    :ivar heloName: the name from HELO/EHLO/LHLO, or ``None`` before it.
    :ivar esmtp: ``True`` after EHLO (or LHLO), ``False`` after HELO.
    :ivar tls: a :class:`TLSInfo` while TLS is in use, else ``None``.
    :ivar authenticated: the authenticated identity (the avatar ID), or ``None``.
    :ivar protocol: ``"SMTP"`` or ``"LMTP"``.
    :ivar sessionId: a short identifier for this connection, used in logs.
    """

    __slots__ = ("peer", "_host", "_hostSource", "heloName", "esmtp", "tls", "authenticated", "protocol", "sessionId")

    def __init__(
        self,
        peer: IAddress | None = None,
        host: IAddress | None = None,
        protocol: str = "SMTP",
        sessionId: str = "",
        transport: Any = None,
    ) -> None:
        self.peer = peer
        # The local address is rarely needed: with a transport, its getHost()
        # is only called when it is, which keeps idle sessions small.
        self._host = host
        self._hostSource = transport if host is None else None
        self.heloName: str | None = None
        self.esmtp = False
        self.tls: TLSInfo | None = None
        self.authenticated: str | None = None
        self.protocol = protocol
        self.sessionId = sessionId

    @property
    def host(self) -> IAddress | None:
        """The local address the client connected to."""
        if self._host is None and self._hostSource is not None:
            self._host, self._hostSource = self._hostSource.getHost(), None
        return self._host

    @host.setter
    def host(self, value: IAddress | None) -> None:
        self._host, self._hostSource = value, None

    @property
    def peerHost(self) -> str:
        """The client's IP address as text, or a description of the transport."""
        peer = self.peer
        host = getattr(peer, "host", None)
        if host is not None:
            return str(host)
        name = getattr(peer, "name", None)
        if name:
            return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        return "local"

    def __repr__(self) -> str:
        return (
            f"ConnectionInfo(peer={self.peerHost!r}, helo={self.heloName!r}, "
            f"tls={self.tls!r}, authenticated={self.authenticated!r})"
        )


class Recipient:
    """
    One accepted recipient of a transaction.

    :ivar address: the :class:`~txsmtp.wire.address.Address` from RCPT.
    :ivar parameters: the parsed :class:`~txsmtp.wire.params.RecipientParameters`
        (DSN's NOTIFY and ORCPT among them).
    :ivar data: free for the delivery to use (for example the mailbox path
        it resolved while checking the recipient).
    """

    __slots__ = ("address", "parameters", "data")

    def __init__(self, address: Address, parameters: RecipientParameters | None = None, data: Any = None) -> None:
        self.address = address
        self.parameters = parameters if parameters is not None else RecipientParameters()
        self.data = data

    def __repr__(self) -> str:
        return f"Recipient(<{self.address}>)"

    def toDict(self) -> dict[str, Any]:
        """The recipient as JSON-ready data (see :meth:`Envelope.toDict`)."""
        p = self.parameters
        return {
            "address": _addressText(self.address),
            "notify": list(p.notify) if p.notify is not None else None,
            "orcpt": list(p.orcpt) if p.orcpt is not None else None,
            "extra": dict(p.extra),
        }

    @classmethod
    def fromDict(cls, data: dict[str, Any]) -> Recipient:
        """The inverse of :meth:`toDict`."""
        address = _parseAddress(data["address"])
        assert address is not None
        params = RecipientParameters(
            notify=tuple(data["notify"]) if data.get("notify") is not None else None,
            orcpt=(str(data["orcpt"][0]), str(data["orcpt"][1])) if data.get("orcpt") is not None else None,
            extra=dict(data.get("extra") or {}),
        )
        return cls(address, params)


class Envelope:
    """
    The envelope of one transaction: sender, parameters and recipients.

    :ivar sender: the reverse-path :class:`~txsmtp.wire.address.Address`, or
        ``None`` for the null sender ``<>`` (bounces).
    :ivar parameters: the parsed :class:`~txsmtp.wire.params.MailParameters`.
    :ivar recipients: the accepted :class:`Recipient` objects, in RCPT order.
    :ivar connection: the :class:`ConnectionInfo` of the session.
    :ivar queueId: the identifier given to this message (in the 250 reply,
        the ``Received:`` header and the logs).
    :ivar receivedHeader: the ``Received:`` header line the server prepends,
        as bytes ending in CRLF (set when DATA starts).
    :ivar addedHeaders: header fields (bytes, each ending in CRLF) that
        the relay adds above the message once it has all of it: a
        ``DKIM-Signature:`` made as the body streamed in, an
        ``Authentication-Results:`` (the message filters of
        :mod:`txsmtp.mailauth.filters` set them before the receiver's
        ``finish``).  The queue keeps them with the message and puts them
        in front of it at every delivery (:mod:`txsmtp.queue.prefixed`).
    :ivar authentication: the
        :class:`~txsmtp.mailauth.results.AuthenticationResults` of the
        inbound checks (SPF, DKIM, DMARC), or ``None`` when the message
        was not checked; set before the delivery's ``finish``.
    :ivar data: free for the delivery to use.
    """

    __slots__ = (
        "sender",
        "parameters",
        "recipients",
        "connection",
        "queueId",
        "receivedHeader",
        "addedHeaders",
        "authentication",
        "data",
    )

    def __init__(
        self,
        sender: Address | None,
        parameters: MailParameters | None = None,
        connection: ConnectionInfo | None = None,
        queueId: str = "",
    ) -> None:
        self.sender = sender
        self.parameters = parameters if parameters is not None else MailParameters()
        self.recipients: list[Recipient] = []
        self.connection = connection if connection is not None else ConnectionInfo()
        self.queueId = queueId
        self.receivedHeader = b""
        self.addedHeaders: list[bytes] = []
        self.authentication: AuthenticationResults | None = None
        self.data: Any = None

    @property
    def returnPath(self) -> str:
        """The sender as it goes in a ``Return-Path:`` header: ``<a@b>`` or ``<>``."""
        return f"<{self.sender}>" if self.sender is not None else "<>"

    def __repr__(self) -> str:
        return f"Envelope(sender={self.returnPath}, recipients={self.recipients!r}, queueId={self.queueId!r})"

    def toDict(self) -> dict[str, Any]:
        """
        The envelope as JSON-ready data, for a store or a queue to keep with
        the message: the sender, every MAIL parameter (SIZE, BODY, SMTPUTF8,
        AUTH, and DSN's RET and ENVID, RFC 3461), each recipient with its
        NOTIFY and ORCPT, the queue id, and the facts about the connection
        that a Received: header or a delivery status notification (RFC 3464)
        needs.  :meth:`fromDict` reads it back.
        """
        p = self.parameters
        c = self.connection
        data: dict[str, Any] = {
            "sender": _addressText(self.sender) if self.sender is not None else None,
            "parameters": {
                "size": p.size,
                "body": p.body,
                "smtputf8": p.smtputf8,
                "auth": p.auth,
                "ret": p.ret,
                "envid": p.envid,
                "extra": dict(p.extra),
            },
            "recipients": [r.toDict() for r in self.recipients],
            "queueId": self.queueId,
            "connection": {
                "peer": c.peerHost,
                "heloName": c.heloName,
                "esmtp": c.esmtp,
                "protocol": c.protocol,
                "tls": {"version": c.tls.version, "cipher": c.tls.cipher} if c.tls is not None else None,
                "authenticated": c.authenticated,
                "sessionId": c.sessionId,
            },
        }
        if p.requireTLS:
            # RFC 8689: kept only when given, so other envelopes read as before.
            data["parameters"]["requiretls"] = True
        if self.addedHeaders:
            # Made by the server: ASCII, or UTF-8 under SMTPUTF8.
            data["addedHeaders"] = [h.decode("utf-8") for h in self.addedHeaders]
        if self.authentication is not None:
            data["authentication"] = self.authentication.toDict()
        return data

    @classmethod
    def fromDict(cls, data: dict[str, Any]) -> Envelope:
        """
        The inverse of :meth:`toDict`.  The connection comes back as a
        :class:`ConnectionInfo` whose peer is an
        :class:`~twisted.internet.address.IPv4Address` or ``IPv6Address``
        when the text was an IP address.
        """
        from twisted.internet.abstract import isIPv6Address
        from twisted.internet.address import IPv4Address, IPv6Address

        p = data.get("parameters") or {}
        params = MailParameters(
            size=p.get("size"),
            body=p.get("body"),
            smtputf8=bool(p.get("smtputf8")),
            auth=p.get("auth"),
            ret=p.get("ret"),
            envid=p.get("envid"),
            requireTLS=bool(p.get("requiretls")),
            extra=dict(p.get("extra") or {}),
        )
        c = data.get("connection") or {}
        peerText = c.get("peer")
        peer: Any = None
        if peerText and peerText != "local":
            peer = IPv6Address("TCP", peerText, 0) if isIPv6Address(peerText) else IPv4Address("TCP", peerText, 0)
        connection = ConnectionInfo(peer, protocol=c.get("protocol", "SMTP"), sessionId=c.get("sessionId", ""))
        connection.heloName = c.get("heloName")
        connection.esmtp = bool(c.get("esmtp"))
        tls = c.get("tls")
        connection.tls = TLSInfo(tls.get("version"), tls.get("cipher")) if tls else None
        connection.authenticated = c.get("authenticated")
        sender = data.get("sender")
        envelope = cls(_parseAddress(sender) if sender is not None else None, params, connection, data.get("queueId", ""))
        envelope.recipients = [Recipient.fromDict(r) for r in data.get("recipients", [])]
        envelope.addedHeaders = [h.encode("utf-8") for h in data.get("addedHeaders", [])]
        if data.get("authentication"):
            from txsmtp.mailauth.results import AuthenticationResults

            envelope.authentication = AuthenticationResults.fromDict(data["authentication"])
        return envelope


def _addressText(address: Address) -> str:
    return str(address)


def _parseAddress(text: str) -> Address | None:
    """An address written by :meth:`Envelope.toDict` (UTF-8 allowed, Postmaster too)."""
    from txsmtp.wire.address import parsePath

    return parsePath(b"<" + text.encode("utf-8") + b">", utf8=True, nullOK=True, postmasterOK=True)


def peerIP(connection: ConnectionInfo) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """
    The client's IP address (an IPv4-mapped IPv6 address as IPv4; behind
    PROXY, the address the header named), or ``None`` for a client without
    one (a UNIX socket).
    """
    host = getattr(connection.peer, "host", None)
    return _parseIP(host) if isinstance(host, str) else None


@functools.lru_cache(maxsize=4096)
def _parseIP(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # Parsing an address costs some 10 µs, and the limits ask at every
    # MAIL and RCPT: the clients of the moment are remembered.
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
