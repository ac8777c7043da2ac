"""
Tests for :mod:`txsmtp.mx`: finding a domain's mail exchangers (RFC 5321
§5.1, RFC 7505 null MX) and delivering through them in turn.

No network: DNS answers come from :class:`FakeResolver`, a
:class:`~twisted.names.common.ResolverBase` over a dictionary, and the SMTP
attempts from :class:`FakeSendmail`.
"""

from __future__ import annotations

import inspect
import io
import random
import sys
import types
from typing import Any
from unittest import mock

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.names import dns
from twisted.names.common import ResolverBase
from twisted.names.error import (
    AuthoritativeDomainError,
    DNSNameError,
    DNSQueryRefusedError,
    DNSQueryTimeoutError,
    DNSServerError,
)
from twisted.trial import unittest

from txsmtp import mx
from txsmtp.mx import (
    MailExchanger,
    NoMailExchangerError,
    NullMXError,
    lookupMailExchangers,
    sendmailMX,
)


class FakeResolver(ResolverBase):
    """
    An :class:`~twisted.internet.interfaces.IResolver` answering from *zone*,
    a mapping of names (bytes, as queried) to records.

    A name absent from *zone* is NXDOMAIN; a name present without records of
    the queried type is NODATA (an empty answer).  CNAME records of the name
    are included in every answer, as a recursive server includes the CNAME
    it followed.  *errors* maps ``(name, type)`` to the exception that query
    fails with.  Every query is recorded in :attr:`queries`.
    """

    def __init__(
        self,
        zone: dict[bytes, list[Any]] | None = None,
        errors: dict[tuple[bytes, int], Exception] | None = None,
    ) -> None:
        super().__init__()
        self.zone = zone or {}
        self.errors = errors or {}
        self.queries: list[tuple[bytes, int]] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        self.queries.append((name, type))
        if (name, type) in self.errors:
            return defer.fail(self.errors[(name, type)])
        if name not in self.zone:
            return defer.fail(DNSNameError(name))
        answers = [
            dns.RRHeader(name, record.TYPE, payload=record)
            for record in self.zone[name]
            if record.TYPE in (type, dns.CNAME)
        ]
        return defer.succeed((answers, [], []))


class NoDNS:
    """A resolver that must not be asked anything."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected DNS use: {name}")


def mxRecords(*pairs: tuple[int, str]) -> list[dns.Record_MX]:
    return [dns.Record_MX(preference, exchange.encode()) for preference, exchange in pairs]


def reverse(exchangers: list[MailExchanger]) -> None:
    exchangers.reverse()


def hosts(exchangers: list[MailExchanger]) -> list[str]:
    return [e.host for e in exchangers]


class Transient(Exception):
    permanent = False


class Permanent(Exception):
    permanent = True


class FakeSendmail:
    """
    Stands in for :func:`txsmtp.client.sendmail`: records each call (with
    the message bytes it could read) and answers from *outcomes*, host to
    result or exception (success ``"sent via HOST"`` by default).
    """

    def __init__(self, outcomes: dict[str, Any] | None = None) -> None:
        self.outcomes = outcomes or {}
        self.calls: list[dict[str, Any]] = []
        self.pending: Deferred[Any] | None = None
        self.cancelled: list[Deferred[Any]] = []

    def __call__(
        self, host: str, sender: str, recipients: Any, message: Any, **kwargs: Any
    ) -> Deferred[Any]:
        data = message if isinstance(message, bytes) else message.read()
        self.calls.append(
            {
                "host": host,
                "sender": sender,
                "recipients": recipients,
                "data": data,
                "kwargs": kwargs,
            }
        )
        outcome = self.outcomes.get(host, f"sent via {host}")
        if outcome == "pending":
            self.pending = Deferred(self.cancelled.append)
            return self.pending
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        return defer.succeed(outcome)

    @property
    def hosts(self) -> list[str]:
        return [call["host"] for call in self.calls]


# -- lookupMailExchangers ------------------------------------------------------------------


class LookupMailExchangersTests(unittest.TestCase):
    def lookup(self, domain: str, resolver: Any, **kwargs: Any) -> list[MailExchanger]:
        return self.successResultOf(lookupMailExchangers(domain, resolver=resolver, **kwargs))

    def lookupFails(self, domain: str, resolver: Any, error: type[Exception]) -> Exception:
        return self.failureResultOf(lookupMailExchangers(domain, resolver=resolver), error).value

    def test_preferenceOrder(self) -> None:
        """
        MX records come lowest preference first, as host names without the
        trailing dot; without ties the shuffle is not used.
        """
        resolver = FakeResolver(
            {
                b"example.com": mxRecords(
                    (20, "mx2.example.com."), (5, "mx0.example.com"), (10, "mx1.example.com.")
                )
            }
        )
        shuffled: list[list[MailExchanger]] = []
        result = self.lookup("example.com", resolver, shuffle=shuffled.append)
        self.assertEqual(
            result,
            [
                MailExchanger("mx0.example.com", 5),
                MailExchanger("mx1.example.com", 10),
                MailExchanger("mx2.example.com", 20),
            ],
        )
        self.assertEqual(shuffled, [])
        self.assertFalse(any(e.implicit for e in result))
        # An explicit MX means no address lookups (RFC 5321 §5.1).
        self.assertEqual(resolver.queries, [(b"example.com", dns.MX)])

    def test_equalPreferencesShuffled(self) -> None:
        """
        Each group of equal preference is passed to the shuffle; what the
        shuffle does is the order returned, and groups stay in preference order.
        """
        resolver = FakeResolver(
            {
                b"example.com": mxRecords(
                    (10, "a.example.com"),
                    (20, "d.example.com"),
                    (10, "b.example.com"),
                    (1, "first.example.com"),
                    (10, "c.example.com"),
                    (20, "e.example.com"),
                )
            }
        )
        groups: list[list[str]] = []

        def recordingReverse(exchangers: list[MailExchanger]) -> None:
            groups.append(hosts(exchangers))
            exchangers.reverse()

        result = self.lookup("example.com", resolver, shuffle=recordingReverse)
        self.assertEqual(
            hosts(result),
            [
                "first.example.com",
                "c.example.com",
                "b.example.com",
                "a.example.com",
                "e.example.com",
                "d.example.com",
            ],
        )
        self.assertEqual([e.preference for e in result], [1, 10, 10, 10, 20, 20])
        self.assertEqual(
            groups,
            [
                ["a.example.com", "b.example.com", "c.example.com"],
                ["d.example.com", "e.example.com"],
            ],
        )

    def test_defaultShuffleIsRandom(self) -> None:
        """
        Both functions shuffle with random.shuffle unless told otherwise, and
        the default lookup gives the records of a tie in every order.
        """
        for function in (lookupMailExchangers, sendmailMX):
            default = inspect.signature(function).parameters["shuffle"].default
            self.assertIs(default, random.shuffle)
        resolver = FakeResolver({b"example.com": mxRecords((10, "a.test"), (10, "b.test"))})
        random.seed(4)
        orders = {tuple(hosts(self.lookup("example.com", resolver))) for _ in range(64)}
        self.assertEqual(orders, {("a.test", "b.test"), ("b.test", "a.test")})

    def test_duplicateExchanger(self) -> None:
        """A host named twice (in any case) is kept once, at its best preference."""
        resolver = FakeResolver(
            {b"example.com": mxRecords((30, "MX.example.com"), (10, "mx.example.com"))}
        )
        self.assertEqual(
            self.lookup("example.com", resolver), [MailExchanger("mx.example.com", 10)]
        )

    def test_cnameInAnswers(self) -> None:
        """
        CNAME records that a resolver includes with the MX answer are not
        exchangers (RFC 5321 §5.1: the CNAME's target is looked up instead).
        """
        resolver = FakeResolver(
            {
                b"alias.example": [
                    dns.Record_CNAME(b"real.example"),
                    dns.Record_MX(10, b"mx.real.example"),
                ]
            }
        )
        self.assertEqual(
            self.lookup("alias.example", resolver), [MailExchanger("mx.real.example", 10)]
        )

    def test_nullMX(self) -> None:
        """
        A single MX 0 with the root as exchange (however the root is spelled)
        is a null MX: a permanent NullMXError, and no address lookup.
        """
        for root in (b".", b""):
            resolver = FakeResolver(
                {b"nomail.example": [dns.Record_MX(0, root), dns.Record_A("192.0.2.1")]}
            )
            error = self.lookupFails("nomail.example", resolver, NullMXError)
            self.assertIs(error.permanent, True)
            self.assertEqual(error.domain, "nomail.example")
            self.assertIn("nomail.example accepts no mail", str(error))
            self.assertEqual(resolver.queries, [(b"nomail.example", dns.MX)])

    def test_nullMXAmongOthers(self) -> None:
        """
        RFC 7505 §3 defines the null MX as the only MX record; a root
        exchange beside real ones is skipped (with a warning) and the real
        ones are used.
        """
        events: list[dict[str, Any]] = []
        self.patch(mx, "_log", Logger(observer=events.append))
        resolver = FakeResolver({b"odd.example": mxRecords((0, "."), (10, "mx.odd.example"))})
        self.assertEqual(
            self.lookup("odd.example", resolver), [MailExchanger("mx.odd.example", 10)]
        )
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn("odd.example publishes a null MX", formatEvent(event))

    def test_nxdomain(self) -> None:
        """A domain that does not exist is a permanent NoMailExchangerError."""
        for error in (DNSNameError(b"nowhere.example"), AuthoritativeDomainError()):
            resolver = FakeResolver(errors={(b"nowhere.example", dns.MX): error})
            failure = self.lookupFails("nowhere.example", resolver, NoMailExchangerError)
            self.assertIs(failure.permanent, True)
            self.assertEqual(failure.domain, "nowhere.example")
            self.assertIn("does not exist", str(failure))
            self.assertEqual(resolver.queries, [(b"nowhere.example", dns.MX)])

    def test_nxdomainFromZone(self) -> None:
        """NXDOMAIN as the resolver reports it for a name it does not know."""
        failure = self.lookupFails("nowhere.example", FakeResolver(), NoMailExchangerError)
        self.assertIs(failure.permanent, True)

    def test_dnsFailureIsTransient(self) -> None:
        """SERVFAIL, a timeout or a refusal is transient: retry later."""
        for error in (
            DNSServerError(),
            DNSQueryTimeoutError(7),
            DNSQueryRefusedError(),
        ):
            resolver = FakeResolver(errors={(b"example.com", dns.MX): error})
            failure = self.lookupFails("example.com", resolver, NoMailExchangerError)
            self.assertIs(failure.permanent, False)
            self.assertIn(type(error).__name__, str(failure))
            self.assertIn("MX lookup failed", str(failure))

    def test_noMXButA(self) -> None:
        """NODATA for MX and an A record: the domain is its own (implicit) MX."""
        resolver = FakeResolver({b"example.com": [dns.Record_A("192.0.2.1")]})
        self.assertEqual(
            self.lookup("example.com", resolver),
            [MailExchanger("example.com", 0, implicit=True)],
        )
        self.assertIn((b"example.com", dns.A), resolver.queries)

    def test_noMXOnlyAAAA(self) -> None:
        """An IPv6-only domain has an implicit MX too."""
        resolver = FakeResolver({b"v6.example": [dns.Record_AAAA("2001:db8::25")]})
        self.assertEqual(
            self.lookup("v6.example", resolver),
            [MailExchanger("v6.example", 0, implicit=True)],
        )
        self.assertEqual(
            sorted(resolver.queries),
            sorted([(b"v6.example", dns.MX), (b"v6.example", dns.A), (b"v6.example", dns.AAAA)]),
        )

    def test_noMXNoAddress(self) -> None:
        """Neither MX nor A nor AAAA (a TXT record only): permanent."""
        resolver = FakeResolver({b"example.com": [dns.Record_TXT(b"v=spf1 -all")]})
        failure = self.lookupFails("example.com", resolver, NoMailExchangerError)
        self.assertIs(failure.permanent, True)
        self.assertIn("no MX, A or AAAA", str(failure))

    def test_cnameWithoutAddress(self) -> None:
        """CNAME records in the address answers are no address."""
        resolver = FakeResolver({b"alias.example": [dns.Record_CNAME(b"gone.example")]})
        failure = self.lookupFails("alias.example", resolver, NoMailExchangerError)
        self.assertIs(failure.permanent, True)

    def test_addressLookupFailure(self) -> None:
        """
        No MX, and one address lookup fails while the other finds nothing:
        transient, since the address may exist.  One that finds an address
        is enough whatever happens to the other.
        """
        resolver = FakeResolver(
            {b"example.com": []}, errors={(b"example.com", dns.A): DNSServerError()}
        )
        failure = self.lookupFails("example.com", resolver, NoMailExchangerError)
        self.assertIs(failure.permanent, False)
        self.assertIn("A lookup failed: DNSServerError", str(failure))

        resolver = FakeResolver(
            {b"example.com": [dns.Record_AAAA("2001:db8::25")]},
            errors={(b"example.com", dns.A): DNSQueryTimeoutError(1)},
        )
        self.assertEqual(
            self.lookup("example.com", resolver),
            [MailExchanger("example.com", 0, implicit=True)],
        )

    def test_addressLiteralIPv4(self) -> None:
        """``[192.0.2.1]`` is that address, without DNS."""
        self.assertEqual(
            self.lookup("[192.0.2.1]", NoDNS()),
            [MailExchanger("192.0.2.1", 0, implicit=True)],
        )

    def test_addressLiteralIPv6(self) -> None:
        """``[IPv6:...]`` (tag in any case) is that address, normalized, without DNS."""
        for literal in ("[IPv6:2001:db8::1]", "[ipv6:2001:DB8:0:0::1]"):
            self.assertEqual(
                self.lookup(literal, NoDNS()),
                [MailExchanger("2001:db8::1", 0, implicit=True)],
            )

    def test_badAddressLiteral(self) -> None:
        """Malformed or unsupported literals are permanent failures, without DNS."""
        for literal in (
            "[192.0.2.256]",
            "[192.0.2.1",
            "192.0.2.1]",
            "[2001:db8::1]",
            "[IPv6:192.0.2.1]",
            "[IPv6:fe80::1%eth0]",
            "[x-mail:anything]",
        ):
            d = lookupMailExchangers(literal, resolver=NoDNS())  # type: ignore[arg-type]
            failure = self.failureResultOf(d, NoMailExchangerError).value
            self.assertIs(failure.permanent, True, literal)
            self.assertIn("address literal", str(failure))

    def test_idn(self) -> None:
        """An internationalized domain is queried, and used, in its IDNA form."""
        resolver = FakeResolver({b"xn--bcher-kva.example": [dns.Record_A("192.0.2.7")]})
        self.assertEqual(
            self.lookup("bücher.example", resolver),
            [MailExchanger("xn--bcher-kva.example", 0, implicit=True)],
        )
        self.assertEqual(resolver.queries[0], (b"xn--bcher-kva.example", dns.MX))

    def test_invalidDomain(self) -> None:
        """A name that cannot be encoded fails permanently, without DNS."""
        for domain in ("a..example", "", ".", "x" * 64 + ".example"):
            d = lookupMailExchangers(domain, resolver=NoDNS())  # type: ignore[arg-type]
            failure = self.failureResultOf(d, NoMailExchangerError).value
            self.assertIs(failure.permanent, True, domain)

    def test_trailingDot(self) -> None:
        """A fully qualified ``example.com.`` is queried as ``example.com``."""
        resolver = FakeResolver({b"example.com": mxRecords((10, "mx.example.com"))})
        self.assertEqual(hosts(self.lookup("example.com.", resolver)), ["mx.example.com"])
        self.assertEqual(resolver.queries, [(b"example.com", dns.MX)])

    def test_defaultResolver(self) -> None:
        """Without a resolver, twisted.names.client.getResolver() is asked."""
        resolver = FakeResolver({b"example.com": mxRecords((10, "mx.example.com"))})
        self.patch(mx.dnsclient, "getResolver", lambda: resolver)
        self.assertEqual(
            self.successResultOf(lookupMailExchangers("example.com")),
            [MailExchanger("mx.example.com", 10)],
        )
        self.assertEqual(resolver.queries, [(b"example.com", dns.MX)])

    def test_cancel(self) -> None:
        """Cancelling the lookup cancels the DNS query under way."""
        cancelled: list[Deferred[Any]] = []
        pending: Deferred[Any] = Deferred(cancelled.append)

        class SlowResolver:
            def lookupMailExchange(self, name: str) -> Deferred[Any]:
                return pending

        d = lookupMailExchangers("example.com", resolver=SlowResolver())  # type: ignore[arg-type]
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(cancelled, [pending])

    def test_cancelAddressLookups(self) -> None:
        """Cancelling during the implicit-MX lookups cancels both of them."""
        cancelled: list[Deferred[Any]] = []

        class SlowResolver:
            def lookupMailExchange(self, name: str) -> Deferred[Any]:
                return defer.succeed(([], [], []))

            def lookupAddress(self, name: str) -> Deferred[Any]:
                return Deferred(cancelled.append)

            lookupIPV6Address = lookupAddress

        d = lookupMailExchangers("example.com", resolver=SlowResolver())  # type: ignore[arg-type]
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(len(cancelled), 2)


# -- sendmailMX ----------------------------------------------------------------------------


THREE_MX = FakeResolver(
    {
        b"example.com": mxRecords(
            (10, "mx1.example.com"), (20, "mx2.example.com"), (30, "mx3.example.com")
        )
    }
)


class SendmailMXTests(unittest.TestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.patch(mx, "_log", Logger(observer=self.events.append))

    def send(self, sendmail: FakeSendmail, message: Any = b"hello\r\n", **kwargs: Any) -> Any:
        kwargs.setdefault("resolver", THREE_MX)
        return sendmailMX(
            "me@example.org",
            ["a@example.com", "b@example.com"],
            message,
            sendmail=sendmail,
            **kwargs,
        )

    def test_firstExchanger(self) -> None:
        """
        The best exchanger takes the message: its result is the result, and
        sender, recipients, message and extra arguments reach sendmail.
        """
        sendmail = FakeSendmail()
        d = self.send(sendmail, port=2525, heloName="client.example")
        self.assertEqual(self.successResultOf(d), "sent via mx1.example.com")
        [call] = sendmail.calls
        self.assertEqual(
            call,
            {
                "host": "mx1.example.com",
                "sender": "me@example.org",
                "recipients": ["a@example.com", "b@example.com"],
                "data": b"hello\r\n",
                "kwargs": {"port": 2525, "heloName": "client.example"},
            },
        )
        self.assertEqual(self.events, [])

    def test_fallbackOnTransient(self) -> None:
        """A transient failure moves on to the next exchanger, and is logged."""
        sendmail = FakeSendmail({"mx1.example.com": Transient("421 busy")})
        self.assertEqual(self.successResultOf(self.send(sendmail)), "sent via mx2.example.com")
        self.assertEqual(sendmail.hosts, ["mx1.example.com", "mx2.example.com"])
        [event] = self.events
        self.assertEqual(event["log_level"], LogLevel.info)
        text = formatEvent(event)
        self.assertIn("mx1.example.com", text)
        self.assertIn("421 busy", text)
        self.assertIn("transient", text)

    def test_noPermanentAttributeIsTransient(self) -> None:
        """An exception without ``permanent``, even raised at once, is transient."""

        def sendmail(host: str, *args: Any, **kwargs: Any) -> Deferred[str]:
            if host == "mx1.example.com":
                raise ConnectionRefusedError("refused")
            return recorder(host, *args, **kwargs)

        recorder = FakeSendmail({"mx2.example.com": OSError("unreachable")})
        d = sendmailMX("", ["a@example.com"], b"x", resolver=THREE_MX, sendmail=sendmail)
        self.assertEqual(self.successResultOf(d), "sent via mx3.example.com")
        self.assertEqual(recorder.hosts, ["mx2.example.com", "mx3.example.com"])
        self.assertEqual(len(self.events), 2)

    def test_stopOnPermanent(self) -> None:
        """A permanent failure ends the delivery with that very exception."""
        refusal = Permanent("550 no such user")
        sendmail = FakeSendmail(
            {"mx1.example.com": Transient("timeout"), "mx2.example.com": refusal}
        )
        failure = self.failureResultOf(self.send(sendmail), Permanent)
        self.assertIs(failure.value, refusal)
        self.assertEqual(sendmail.hosts, ["mx1.example.com", "mx2.example.com"])
        self.assertEqual(len(self.events), 2)
        self.assertIn("permanent", formatEvent(self.events[1]))

    def test_stopAfterData(self) -> None:
        """
        A connection lost after the end of the message was sent ends the
        delivery: the exchanger may have the message, and the next one
        could deliver it twice.
        """
        from txsmtp.client import SMTPConnectionLost

        lost = SMTPConnectionLost("lost after the final dot", afterData=True)
        self.assertFalse(lost.permanent)
        sendmail = FakeSendmail({"mx1.example.com": lost})
        failure = self.failureResultOf(self.send(sendmail), SMTPConnectionLost)
        self.assertIs(failure.value, lost)
        self.assertEqual(sendmail.hosts, ["mx1.example.com"])

    def test_tlsFailureTriesNextExchanger(self) -> None:
        """
        A TLS failure at one exchanger (a certificate that does not verify,
        under the default policy) is no verdict on the message: the next
        exchanger is tried, and it takes the message.
        """
        from txsmtp.client import SMTPTLSError

        refused = SMTPTLSError("TLS with mx1.example.com failed: certificate verify failed")
        self.assertTrue(refused.permanent)
        sendmail = FakeSendmail({"mx1.example.com": refused})
        self.assertEqual(self.successResultOf(self.send(sendmail)), "sent via mx2.example.com")
        self.assertEqual(sendmail.hosts, ["mx1.example.com", "mx2.example.com"])
        [event] = self.events
        self.assertIn("transient", formatEvent(event))

    def test_tlsFailureEverywhereIsTransient(self) -> None:
        """
        When TLS fails at every exchanger, the delivery fails with the last
        failure, made transient: the message stays queued (a certificate
        gets fixed) instead of bouncing.
        """
        from txsmtp.client import SMTPTLSError

        errors = {f"mx{i}.example.com": SMTPTLSError(f"TLS with mx{i} failed") for i in (1, 2, 3)}
        sendmail = FakeSendmail(dict(errors))
        failure = self.failureResultOf(self.send(sendmail), SMTPTLSError)
        self.assertIs(failure.value, errors["mx3.example.com"])
        self.assertIs(failure.value.permanent, False)
        self.assertEqual(sendmail.hosts, ["mx1.example.com", "mx2.example.com", "mx3.example.com"])

    def test_allFail(self) -> None:
        """When every exchanger fails transiently, the last failure is the result."""
        last = Transient("third")
        sendmail = FakeSendmail(
            {
                "mx1.example.com": Transient("first"),
                "mx2.example.com": Transient("second"),
                "mx3.example.com": last,
            }
        )
        failure = self.failureResultOf(self.send(sendmail), Transient)
        self.assertIs(failure.value, last)
        self.assertEqual(sendmail.hosts, ["mx1.example.com", "mx2.example.com", "mx3.example.com"])
        self.assertEqual(
            [formatEvent(e).split(": ")[-1] for e in self.events], ["first", "second", "third"]
        )

    def test_fileSeekedBack(self) -> None:
        """
        A file message is read from where it stood at the call, again for
        each attempt.
        """
        message = io.BytesIO(b"IGNORED|Subject: x\r\n\r\nbody\r\n")
        message.seek(8)
        sendmail = FakeSendmail(
            {"mx1.example.com": Transient("a"), "mx2.example.com": Transient("b")}
        )
        self.successResultOf(self.send(sendmail, message))
        self.assertEqual(
            [call["data"] for call in sendmail.calls], [b"Subject: x\r\n\r\nbody\r\n"] * 3
        )

    def test_mixedDomains(self) -> None:
        """Recipients of two domains are refused before anything is looked up."""
        sendmail = FakeSendmail()
        with self.assertRaises(ValueError) as raised:
            sendmailMX(
                "me@example.org",
                ["a@example.com", "b@example.net"],
                b"x",
                resolver=NoDNS(),  # type: ignore[arg-type]
                sendmail=sendmail,
            )
        self.assertIn("example.com, example.net", str(raised.exception))
        self.assertEqual(sendmail.calls, [])

    def test_badRecipients(self) -> None:
        """No recipients, or one without a domain: ValueError."""
        for recipients in ([], ["postmaster"], ["user@"]):
            with self.assertRaises(ValueError):
                sendmailMX("", recipients, b"x", resolver=NoDNS(), sendmail=FakeSendmail())  # type: ignore[arg-type]

    def test_domainCaseAndQuotedAt(self) -> None:
        """Domains compare without case; the domain follows the last ``@``."""
        sendmail = FakeSendmail()
        d = sendmailMX(
            "",
            ['"odd@local"@EXAMPLE.com', "b@example.COM"],
            b"x",
            resolver=THREE_MX,
            sendmail=sendmail,
        )
        self.assertEqual(self.successResultOf(d), "sent via mx1.example.com")

    def test_explicitDomain(self) -> None:
        """*domain* overrides the recipients' domains (here an address literal)."""
        sendmail = FakeSendmail()
        d = sendmailMX(
            "",
            ["a@example.com", "b@example.net"],
            b"x",
            domain="[192.0.2.25]",
            resolver=NoDNS(),  # type: ignore[arg-type]
            sendmail=sendmail,
        )
        self.assertEqual(self.successResultOf(d), "sent via 192.0.2.25")
        self.assertEqual(sendmail.calls[0]["recipients"], ["a@example.com", "b@example.net"])

    def test_recipientsIterator(self) -> None:
        """An iterator of recipients is read once and given whole to every attempt."""
        sendmail = FakeSendmail({"mx1.example.com": Transient("busy")})
        d = sendmailMX(
            "",
            iter(["a@example.com", "b@example.com"]),
            b"x",
            resolver=THREE_MX,
            sendmail=sendmail,
        )
        self.successResultOf(d)
        self.assertEqual(
            [call["recipients"] for call in sendmail.calls],
            [["a@example.com", "b@example.com"]] * 2,
        )

    def test_shuffleUsed(self) -> None:
        """The shuffle given decides the order of equally preferred exchangers."""
        resolver = FakeResolver({b"example.com": mxRecords((10, "a.test"), (10, "b.test"))})
        sendmail = FakeSendmail({"b.test": Transient("busy")})
        d = self.send(sendmail, resolver=resolver, shuffle=reverse)
        self.assertEqual(self.successResultOf(d), "sent via a.test")
        self.assertEqual(sendmail.hosts, ["b.test", "a.test"])

    def test_lookupFailure(self) -> None:
        """A lookup failure is the result, and nothing is sent."""
        sendmail = FakeSendmail()
        resolver = FakeResolver({b"example.com": mxRecords((0, "."))})
        failure = self.failureResultOf(self.send(sendmail, resolver=resolver), NullMXError)
        self.assertIs(failure.value.permanent, True)
        self.assertEqual(sendmail.calls, [])

        resolver = FakeResolver(errors={(b"example.com", dns.MX): DNSServerError()})
        failure = self.failureResultOf(self.send(sendmail, resolver=resolver), NoMailExchangerError)
        self.assertIs(failure.value.permanent, False)
        self.assertEqual(sendmail.calls, [])

    def test_defaultSendmail(self) -> None:
        """Without *sendmail*, txsmtp.client.sendmail is used."""
        sendmail = FakeSendmail()
        client = types.ModuleType("txsmtp.client")
        client.sendmail = sendmail  # type: ignore[attr-defined]
        with mock.patch.dict(sys.modules, {"txsmtp.client": client}):
            d = sendmailMX("", ["a@example.com"], b"x", resolver=THREE_MX)
        self.assertEqual(self.successResultOf(d), "sent via mx1.example.com")
        self.assertEqual(sendmail.hosts, ["mx1.example.com"])

    def test_cancel(self) -> None:
        """Cancelling stops the attempt under way, and tries no other exchanger."""
        sendmail = FakeSendmail({"mx1.example.com": "pending"})
        d = self.send(sendmail)
        self.assertIsNotNone(sendmail.pending)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(sendmail.cancelled, [sendmail.pending])
        self.assertEqual(sendmail.hosts, ["mx1.example.com"])
