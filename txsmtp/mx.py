"""
Delivery to a domain's mail exchangers.

- :func:`lookupMailExchangers` finds where mail for a domain goes, following
  RFC 5321 §5.1 (MX records ordered by preference, equal preferences in
  random order, the "implicit MX" when there is none) and RFC 7505 (the
  null MX of a domain that accepts no mail).  Address literals such as
  ``[192.0.2.1]`` and ``[IPv6:2001:db8::1]`` need no DNS.
- :func:`sendmailMX` sends one message to recipients of one domain through
  :func:`txsmtp.client.sendmail`, trying each mail exchanger in turn until
  one takes it or refuses it permanently.

Every failure carries ``permanent``, as the exceptions of
:mod:`txsmtp.client` do: ``True`` means retrying later will not help (the
domain does not exist, or accepts no mail), ``False`` means the message
should stay queued and be retried later (RFC 5321 §4.5.4.1).

.. code-block:: python

    from txsmtp.mx import sendmailMX

    d = sendmailMX("me@example.org", ["you@example.com"], b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
"""

from __future__ import annotations

import ipaddress
import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.names import client as dnsclient
from twisted.names import dns
from twisted.names.error import AuthoritativeDomainError, DNSNameError
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from txsmtp.client import SendResult

__all__ = [
    "MailExchanger",
    "NoMailExchangerError",
    "NullMXError",
    "lookupMailExchangers",
    "sendmailMX",
]

_log = Logger(namespace="txsmtp.mx")


@dataclass(frozen=True)
class MailExchanger:
    """
    One host that accepts mail for a domain.

    :ivar host: the host name (ASCII, IDNA-encoded, without a trailing dot;
        lowercase for an implicit MX), or the IP address of an address
        literal.
    :ivar preference: the MX preference; lower values are tried first.
    :ivar implicit: ``True`` when the domain has no MX records and the
        domain itself is used, as if it had an MX record of preference 0
        pointing to itself (RFC 5321 §5.1), and for address literals.
    """

    host: str
    preference: int
    implicit: bool = False


class NullMXError(Exception):
    """
    The domain publishes a null MX (``MX 0 .``, RFC 7505): it accepts no
    mail at all.  Always permanent; a relay reports it with ``556 5.1.10``
    (RFC 7505 §4.1).

    :ivar domain: the domain that was looked up.
    :ivar permanent: always ``True``.
    """

    permanent = True

    def __init__(self, domain: str) -> None:
        super().__init__(f"{domain} accepts no mail (it publishes a null MX, RFC 7505)")
        self.domain = domain


class NoMailExchangerError(Exception):
    """
    No mail exchanger could be found for a domain.

    :param domain: the domain that was looked up.
    :param reason: why, in a few words.
    :param permanent: ``True`` when the domain does not exist or has neither
        MX nor address records (RFC 5321 §5.1: reported as an error);
        ``False`` for a DNS failure such as SERVFAIL or a timeout, after which
        the message is queued and retried later (RFC 5321 §5.1, §4.5.4.1).
    """

    def __init__(self, domain: str, reason: str, *, permanent: bool) -> None:
        super().__init__(f"no mail exchanger for {domain}: {reason}")
        self.domain = domain
        self.reason = reason
        self.permanent = permanent


def lookupMailExchangers(
    domain: str,
    *,
    resolver: IResolver | None = None,
    shuffle: Callable[[list[MailExchanger]], None] = random.shuffle,
) -> Deferred[list[MailExchanger]]:
    """
    Find the hosts that accept mail for *domain*, in the order to try them.

    - MX records come in order of preference, lowest first; exchangers of
      equal preference are put in random order, to spread the load
      (RFC 5321 §5.1).
    - A domain whose only MX record names the root (``MX 0 .``) accepts no
      mail: :class:`NullMXError` (RFC 7505 §3).  Should a null MX appear
      beside other MX records, against RFC 7505 §3, it names no host and
      is skipped, and the other records are used (RFC 5321 §5.1 uses the
      usable MX records).
    - With no MX records, the domain itself is the one exchanger (the
      "implicit MX"), provided it has an A or an AAAA record (RFC 5321
      §5.1).
    - An address literal, ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``
      (RFC 5321 §4.1.3), is that address, without any DNS lookup.
    - An internationalized domain is looked up in its IDNA (``xn--``) form.

    :param domain: the domain of a recipient, e.g. ``"example.com"``.
    :param resolver: the :class:`~twisted.internet.interfaces.IResolver` to
        ask; by default :func:`twisted.names.client.getResolver`.
    :param shuffle: called with each list of exchangers that share a
        preference, to reorder it in place; :func:`random.shuffle` by
        default.
    :return: a :class:`~twisted.internet.defer.Deferred` that fires with a
        non-empty list of :class:`MailExchanger`, or fails with
        :class:`NullMXError` or :class:`NoMailExchangerError` (which is
        permanent when the domain does not exist or has nowhere to deliver
        to, and transient when DNS failed).
    """
    try:
        literal = _addressLiteral(domain)
        if literal is not None:
            return defer.succeed([MailExchanger(literal, 0, implicit=True)])
        name = _asciiDomain(domain)
    except ValueError as e:
        return defer.fail(NoMailExchangerError(domain, str(e), permanent=True))
    if resolver is None:
        resolver = dnsclient.getResolver()
    return Deferred.fromCoroutine(_lookup(name, resolver, shuffle))


def sendmailMX(
    sender: str,
    recipients: Iterable[str],
    message: bytes | BinaryIO,
    *,
    domain: str | None = None,
    resolver: IResolver | None = None,
    sendmail: Callable[..., Deferred[Any]] | None = None,
    shuffle: Callable[[list[MailExchanger]], None] = random.shuffle,
    **sendmailArgs: Any,
) -> Deferred[SendResult]:
    """
    Send a message to recipients of one domain through that domain's mail
    exchangers.

    The exchangers come from :func:`lookupMailExchangers` and are tried in
    order with ``sendmail(host, sender, recipients, message,
    **sendmailArgs)``.  A failure whose exception has a true ``permanent``
    attribute ends the delivery at once with that exception, and so does a
    connection lost after the end of the message was sent (``afterData``:
    the exchanger may have the message); any other failure is logged and
    the next exchanger is tried (RFC 5321 §5.1: the client tries each of
    the addresses in the list, in order).  A TLS failure
    (:class:`txsmtp.client.SMTPTLSError`: a certificate that does not
    verify under the default policy, STARTTLS refused or missing when
    required) belongs to one exchanger: it is made transient
    (``permanent = False``) and the next exchanger is tried.  When every
    exchanger failed, the delivery fails with the last failure's exception.

    :param sender: the reverse-path, ``""`` for the null reverse-path.
    :param recipients: the recipients' addresses, e.g.
        ``["alice@example.com"]``; unless *domain* is given, they must all
        have the same domain (compared without regard to case).
    :param message: the message, as :class:`bytes` or as a binary file
        that can seek; a file is read from its current position, and moved
        back to it before each further attempt.
    :param domain: the domain whose exchangers to use, instead of the
        recipients' domain; an address literal such as ``[192.0.2.1]`` is
        accepted.
    :param resolver: passed to :func:`lookupMailExchangers`.
    :param sendmail: the function that makes one attempt; by default
        :func:`txsmtp.client.sendmail`.
    :param shuffle: passed to :func:`lookupMailExchangers`.
    :param sendmailArgs: passed on to *sendmail*, e.g. ``port``, ``tls``,
        ``heloName``.
    :return: a :class:`~twisted.internet.defer.Deferred` that fires with
        the result of the successful *sendmail* call (a
        :class:`txsmtp.client.SendResult`), or fails with
        :class:`NullMXError`, :class:`NoMailExchangerError` or the
        exception of the last *sendmail* failure.
    :raises ValueError: when there are no recipients, when one has no
        domain, or when *domain* is not given and the recipients do not
        all share one domain.
    """
    recipientList = list(recipients)
    if not recipientList:
        raise ValueError("no recipients")
    if domain is None:
        domain = _commonDomain(recipientList)
    if sendmail is None:
        # Imported here rather than at the top: txsmtp.client imports much
        # more than a lookup needs, and this module must import without it.
        from txsmtp.client import sendmail as clientSendmail

        sendmail = clientSendmail
    start = None if isinstance(message, bytes | bytearray | memoryview) else message.tell()
    return Deferred.fromCoroutine(
        _deliver(
            domain,
            sender,
            recipientList,
            message,
            start,
            resolver,
            sendmail,
            shuffle,
            sendmailArgs,
        )
    )


# -- lookup --------------------------------------------------------------------------------


def _addressLiteral(domain: str) -> str | None:
    """
    The IP address of an address literal, or ``None`` for a domain name.

    :raises ValueError: for a malformed or unsupported address literal.
    """
    if not domain.startswith("[") and not domain.endswith("]"):
        return None
    if not (domain.startswith("[") and domain.endswith("]")):
        raise ValueError(f"malformed address literal {domain!r}")
    inner = domain[1:-1]
    # RFC 5321 §4.1.3: IPv4-address-literal is the bare dotted quad;
    # IPv6-address-literal is "IPv6:" and the address (ABNF strings such as
    # "IPv6" are case-insensitive, RFC 5234 §2.3); any other tag is a
    # General-address-literal, which no standard defines for delivery.
    tag, colon, address = inner.partition(":")
    try:
        if not colon:
            return str(ipaddress.IPv4Address(inner))
        if tag.lower() == "ipv6" and "%" not in address:
            return str(ipaddress.IPv6Address(address))
    except ValueError:
        pass
    raise ValueError(f"malformed or unsupported address literal {domain!r}")


def _asciiDomain(domain: str) -> str:
    """
    *domain* as the name to query: IDNA-encoded, lowercase, without a trailing dot.

    :raises ValueError: when the domain cannot be encoded (an empty or too
        long label, for instance).
    """
    name = domain[:-1] if domain.endswith(".") else domain
    if not name:
        raise ValueError("empty domain")
    try:
        # DNS names are compared without regard to case (RFC 4343 §3); the
        # lowercase form makes MailExchanger.host the same however a
        # recipient spelled the domain.
        return name.encode("idna").decode("ascii").lower()
    except UnicodeError as e:
        raise ValueError(f"invalid domain name ({e})") from e


def _hostName(name: dns.Name) -> str:
    """The text of a DNS name, without the trailing dot: ``""`` for the root."""
    return name.name.decode("ascii", "backslashreplace").rstrip(".")


_DNS_ERROR_WORDS = {
    "DNSServerError": "the DNS server failed (SERVFAIL)",
    "DNSQueryRefusedError": "the DNS server refused the query (REFUSED)",
    "DNSFormatError": "the DNS server could not read the query (FORMERR)",
    "DNSNotImplementedError": "the DNS server does not support the query (NOTIMP)",
    "DNSUnknownError": "the DNS server gave an unknown error",
}


def _dnsFailure(domain: str, rrType: str, error: BaseException) -> NoMailExchangerError:
    """The :class:`NoMailExchangerError` for a failed DNS query."""
    if isinstance(error, DNSNameError | AuthoritativeDomainError):
        # RFC 5321 §5.1: a non-existent domain MUST be reported as an error.
        return NoMailExchangerError(domain, "the domain does not exist", permanent=True)
    # RFC 5321 §5.1: after a temporary error the message MUST be queued and
    # retried later.
    kind = type(error).__name__
    # twisted.names puts the whole response message in these errors; say
    # what the server answered instead (RFC 1035 §4.1.1 RCODE names).
    detail = _DNS_ERROR_WORDS.get(kind) or str(error)
    return NoMailExchangerError(
        domain,
        f"{rrType} lookup failed: {kind}: {detail}"
        if detail
        else f"{rrType} lookup failed: {kind}",
        permanent=False,
    )


async def _lookup(
    domain: str,
    resolver: IResolver,
    shuffle: Callable[[list[MailExchanger]], None],
) -> list[MailExchanger]:
    try:
        # IResolver declares timeout as required; every resolver defaults it.
        lookup: Any = resolver.lookupMailExchange
        answers, _, _ = await defer.maybeDeferred(lookup, domain)
    except CancelledError:
        raise
    except Exception as e:
        raise _dnsFailure(domain, "MX", e) from e

    # The answers may hold the CNAME records that led to the MX records
    # (RFC 5321 §5.1: a CNAME's target is processed as the initial name);
    # only the MX records matter.
    records = [rr.payload for rr in answers if rr.type == dns.MX]
    if not records:
        # RFC 5321 §5.1: "If an empty list of MXs is returned, the address
        # is treated as if it was associated with an implicit MX RR, with a
        # preference of 0, pointing to that host."
        return await _implicitExchanger(domain, resolver)

    best: dict[str, MailExchanger] = {}
    nullRecords = 0
    for record in records:
        host = _hostName(record.name)
        if not host:
            # RFC 7505 §3: an exchange of "." (the zero-length root label)
            # is no host at all.
            nullRecords += 1
            continue
        key = host.lower()
        if key not in best or record.preference < best[key].preference:
            best[key] = MailExchanger(host, record.preference)
    if not best:
        # RFC 7505 §3: a single MX RR with the root as exchange says that
        # the domain accepts no mail.  (Any preference: with no usable MX
        # record, RFC 5321 §5.1 makes it an error all the same.)
        raise NullMXError(domain)
    if nullRecords:
        # RFC 7505 §3: "A domain that advertises a null MX MUST NOT
        # advertise any other MX RR."  This one does; the null MX is not
        # usable, the others are (RFC 5321 §5.1).
        _log.warn(
            "{domain} publishes a null MX beside other MX records (RFC 7505 §3); using the others",
            domain=domain,
        )

    # RFC 5321 §5.1: the MX records MUST be sorted by preference, lowest
    # first; equal preferences SHOULD be put in random order to spread the
    # load.  sorted() is stable, so the shuffle alone decides each group.
    ordered: list[MailExchanger] = []
    byPreference = sorted(best.values(), key=lambda exchanger: exchanger.preference)
    for _, group in itertools.groupby(byPreference, key=lambda exchanger: exchanger.preference):
        exchangers = list(group)
        if len(exchangers) > 1:
            shuffle(exchangers)
        ordered.extend(exchangers)
    return ordered


async def _implicitExchanger(domain: str, resolver: IResolver) -> list[MailExchanger]:
    # RFC 5321 §5.1: the implicit MX is usable when the domain has an
    # address record, IPv4 (A) or IPv6 (AAAA); either one is enough.
    queries: Sequence[tuple[str, int, Callable[..., Deferred[Any]]]] = [
        ("A", dns.A, resolver.lookupAddress),
        ("AAAA", dns.AAAA, resolver.lookupIPV6Address),
    ]
    results = await defer.DeferredList(
        [defer.maybeDeferred(lookup, domain) for _, _, lookup in queries],
        consumeErrors=True,
    )
    failures: list[NoMailExchangerError] = []
    for (rrType, rrCode, _), (ok, result) in zip(queries, results, strict=True):
        if ok:
            answers = result[0]
            if any(rr.type == rrCode for rr in answers):
                return [MailExchanger(domain, 0, implicit=True)]
        else:
            assert isinstance(result, Failure)
            if result.check(CancelledError):
                result.raiseException()
            failures.append(_dnsFailure(domain, rrType, result.value))
    for failure in failures:
        if not failure.permanent:
            # Cannot tell whether an address exists: try again later.
            raise failure
    # RFC 5321 §5.1: "If MX records are present, but none of them are
    # usable, or the implicit MX is unusable, this situation MUST be
    # reported as an error."
    raise NoMailExchangerError(domain, "no MX, A or AAAA records", permanent=True)


# -- delivery ------------------------------------------------------------------------------


def _commonDomain(recipients: list[str]) -> str:
    """
    The domain that all of *recipients* share.

    :raises ValueError: when an address has no domain, or they differ.
    """
    domains: dict[str, str] = {}
    for recipient in recipients:
        # The domain follows the last "@": a quoted local part may hold one.
        _, at, domain = recipient.rpartition("@")
        if not at or not domain:
            raise ValueError(f"recipient {recipient!r} has no domain")
        # Domain names are not case-sensitive (RFC 5321 §2.4).
        domains.setdefault(domain.lower(), domain)
    if len(domains) > 1:
        raise ValueError(
            "recipients of different domains need one sendmailMX call each: "
            + ", ".join(sorted(domains))
        )
    [domain] = domains.values()
    return domain


def _tlsFailure(error: Exception) -> bool:
    """Whether ``error`` is the client's failure to set up or verify TLS."""
    try:
        from txsmtp.client import SMTPTLSError
    except ImportError:  # a stand-in txsmtp.client (tests)
        return False
    return isinstance(error, SMTPTLSError)


async def _deliver(
    domain: str,
    sender: str,
    recipients: list[str],
    message: bytes | BinaryIO,
    start: int | None,
    resolver: IResolver | None,
    sendmail: Callable[..., Deferred[Any]],
    shuffle: Callable[[list[MailExchanger]], None],
    sendmailArgs: dict[str, Any],
) -> Any:
    exchangers = await lookupMailExchangers(domain, resolver=resolver, shuffle=shuffle)
    lastError: Exception | None = None
    for attempt, exchanger in enumerate(exchangers):
        if attempt and start is not None:
            assert not isinstance(message, bytes | bytearray | memoryview)
            message.seek(start)
        try:
            return await defer.maybeDeferred(
                sendmail, exchanger.host, sender, list(recipients), message, **sendmailArgs
            )
        except CancelledError:
            raise
        except Exception as e:
            if _tlsFailure(e):
                # A certificate that does not verify (or TLS that fails in
                # another way) is a fault of this exchanger, not a verdict
                # on the message: the next exchanger may do better (RFC 5321
                # §5.1: try the next address), and with none left the
                # message stays queued until someone fixes the certificate
                # (RFC 5321 §4.5.4.1) instead of bouncing.
                e.permanent = False  # type: ignore[attr-defined]
            permanent = bool(getattr(e, "permanent", False))
            _log.info(
                "Delivery for {domain} to {host} failed ({kind}): {reason}",
                domain=domain,
                host=exchanger.host,
                kind="permanent" if permanent else "transient",
                reason=str(e) or type(e).__name__,
            )
            if permanent:
                raise
            if getattr(e, "afterData", False):
                # The end of the message went out before the connection
                # broke: this exchanger may have taken it, and trying the
                # next one could deliver it twice.  Leave it to a retry of
                # the whole delivery later.
                raise
            lastError = e
    # lookupMailExchangers never gives an empty list, so something failed.
    assert lastError is not None
    raise lastError
