"""
Tests for :mod:`txsmtp.mailauth.dmarc`: record parsing and the From
domain as pure functions, evaluation against the test DNS server
(:mod:`tests.dnsserver`) over real UDP.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.dnsserver import SERVFAIL, startDNSServer
from txsmtp.mailauth.dmarc import (
    DMARCOutcome,
    DMARCRecord,
    DMARCRecordError,
    evaluate,
    fromDomain,
    isAligned,
    organizationalDomain,
    parseRecord,
)
from txsmtp.mailauth.results import MethodResult

ZONES: dict[str, Any] = {
    "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject; sp=quarantine; rua=mailto:agg@example.org"]},
    "_dmarc.strict.example": {"TXT": ["v=DMARC1; p=reject; adkim=s; aspf=s"]},
    "_dmarc.relaxed.example": {"TXT": ["v=DMARC1; p=quarantine"]},
    # A multi-label public suffix: the organizational domain of
    # mail.example.co.uk is example.co.uk, not co.uk.
    "_dmarc.example.co.uk": {"TXT": ["v=DMARC1; p=reject; sp=none"]},
    "_dmarc.co.uk": {"TXT": ["v=DMARC1; p=reject"]},
    "_dmarc.two.example": {"TXT": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]},
    # Only one of these is DMARC: the other is discarded (§6.6.3 step 2).
    "_dmarc.mixed.example": {"TXT": ["v=spf1 -all", ("v=DMARC1; ", "p=reject")]},
    "_dmarc.bad.example": {"TXT": ["v=DMARC1; p=bogus"]},
    "_dmarc.badrua.example": {"TXT": ["v=DMARC1; p=bogus; rua=mailto:r@badrua.example"]},
    # Not DMARC at the subdomain: discarded, so the organizational
    # domain's record applies.
    "_dmarc.sub.notdmarc.example": {"TXT": ["v=DMARC2; p=none"]},
    "_dmarc.notdmarc.example": {"TXT": ["v=DMARC1; p=reject; sp=quarantine"]},
    "_dmarc.broken.example": SERVFAIL,
    "_dmarc.brokenorg.example": SERVFAIL,
    "_dmarc.sampled.example": {"TXT": ["v=DMARC1; p=reject; pct=30"]},
    "_dmarc.never.example": {"TXT": ["v=DMARC1; p=quarantine; pct=0"]},
    "_dmarc.np.example": {"TXT": ["v=DMARC1; p=none; sp=quarantine; np=reject"]},
    "real.np.example": {"A": ["192.0.2.1"]},
    "mx.np.example": {"MX": [(10, "mx.example.net")]},
}


def spf(result: str, mailfrom: str) -> MethodResult:
    return MethodResult("spf", result, None, (("smtp.mailfrom", mailfrom),))


def dkim(result: str, d: str) -> MethodResult:
    return MethodResult("dkim", result, None, (("header.d", d), ("header.s", "sel"), ("header.b", "abcdefgh")))


class RecordTests(unittest.TestCase):
    def test_full(self) -> None:
        """Every tag is read; keyword values and tag names without regard to case."""
        record = parseRecord(
            b"v=DMARC1;P=Reject; sp=quarantine ;np=none; ADKIM=s; aspf=S; pct=25;"
            b" rua=mailto:a@example.org,mailto:b@example.org!10m; ruf=mailto:f@example.org; fo=1:d; ri=3600;"
        )
        self.assertEqual(
            record,
            DMARCRecord(
                policy="reject",
                subdomainPolicy="quarantine",
                nonexistentPolicy="none",
                adkim="s",
                aspf="s",
                pct=25,
                rua=("mailto:a@example.org", "mailto:b@example.org!10m"),
                ruf=("mailto:f@example.org",),
                fo="1:d",
                ri=3600,
            ),
        )

    def test_defaults(self) -> None:
        """Only v= and p=: relaxed alignment, pct 100, no sp/np."""
        self.assertEqual(parseRecord("v=DMARC1; p=none"), DMARCRecord(policy="none"))

    def test_unknownTagsAndBadOptionalValues(self) -> None:
        """Unknown tags are ignored; bad adkim, pct, np, ri leave the defaults (§6.3)."""
        record = parseRecord("v=DMARC1; p=quarantine; x-new=1; adkim=q; pct=101; np=drop; ri=soon")
        self.assertEqual(record, DMARCRecord(policy="quarantine"))
        self.assertEqual(parseRecord("v=DMARC1; p=none; pct=-5").pct, 100)

    def test_notDMARC(self) -> None:
        """v=DMARC1 must come first, spelled so."""
        for text in ("p=reject; v=DMARC1", "v=dmarc1; p=reject", "v=spf1 -all", "", "v=DMARC10; p=none"):
            with self.assertRaises(DMARCRecordError, msg=text):
                parseRecord(text)

    def test_noPolicy(self) -> None:
        """No valid p= (or a bad sp=) and no valid rua: unusable (§6.6.3 step 6.2)."""
        for text in ("v=DMARC1", "v=DMARC1; p=bogus", "v=DMARC1; p=reject; sp=maybe", "v=DMARC1; p=x; rua=nouri"):
            with self.assertRaises(DMARCRecordError, msg=text):
                parseRecord(text)

    def test_noPolicyWithRua(self) -> None:
        """No valid p= but a valid rua URI: as if p=none (§6.6.3 step 6.1)."""
        record = parseRecord("v=DMARC1; p=bogus; sp=reject; rua=mailto:r@example.org")
        self.assertEqual((record.policy, record.subdomainPolicy, record.policyFromRua), ("none", "reject", True))


class FromDomainTests(unittest.TestCase):
    def test_simple(self) -> None:
        """The domain of the one address, lowercased; display names and comments do not matter."""
        block = b'Subject: hi\r\nFrom: "Joe (not@evil.example)" <Joe@Example.ORG> (work)\r\nTo: x@y.example\r\n\r\nbody'
        self.assertEqual(fromDomain(block), "example.org")

    def test_folded(self) -> None:
        """A folded From field is unfolded; the field name is matched without regard to case."""
        self.assertEqual(fromDomain(b"FROM: Joe\r\n <joe@mail.example.co.uk>\r\n\r\n"), "mail.example.co.uk")

    def test_bodyIgnored(self) -> None:
        """A From line after the header section is body."""
        self.assertEqual(fromDomain(b"From: a@one.example\r\n\r\nFrom: b@two.example\r\n"), "one.example")

    def test_none(self) -> None:
        """No From, several From fields, several addresses, no domain: None (the caller's permerror)."""
        for block in (
            b"Subject: x\r\n\r\n",
            b"From: a@one.example\r\nFrom: b@two.example\r\n\r\n",
            b"From: a@one.example, b@two.example\r\n\r\n",
            b"From: group: a@one.example, b@two.example;\r\n\r\n",
            b"From: undisclosed:;\r\n\r\n",
            b"From: joe\r\n\r\n",
            b"From: joe@[192.0.2.1]\r\n\r\n",
            b"From: <@>\r\n\r\n",
            b"From: " + b"a" * 9000 + b"@example.org\r\n\r\n",
        ):
            self.assertIsNone(fromDomain(block), block[:60])

    def test_addressForms(self) -> None:
        """Quoted display names and local parts holding "@", comments anywhere, obs-route, a one-member group."""
        for value in (
            b'"a@evil.example" <joe@Example.org>',
            b'"quoted@evil.example"@example.org',
            b"joe(c)@(c)example(c).(c)org",
            b"<@route.example:joe@example.org>",
            b"friends: joe@example.org;",
            b"joe@example.org,",
        ):
            self.assertEqual(fromDomain(b"From: " + value + b"\r\n\r\n"), "example.org", value)
        for value in (
            b"Joe <joe@example.org> trailing",
            b'joe@"example.org"',
            b"joe@example..org",
            b"joe@.example.org",
            b"<joe@example.org",
            b"(unclosed <joe@example.org>",
            b"joe@a@example.org",
        ):
            self.assertIsNone(fromDomain(b"From: " + value + b"\r\n\r\n"), value)

    def test_pathological(self) -> None:
        """Deep comments, runs of quotes or brackets: None, without recursion or quadratic time."""
        for value in (b"(" * 4000 + b")" * 4000, b'"' * 8000, b"<" * 8000, b"a," * 4000, b"[" * 8000):
            self.assertIsNone(fromDomain(b"From: " + value + b"\r\n\r\n"))
        self.assertEqual(fromDomain(b"From: " + b"(" * 3000 + b")" * 3000 + b"joe@example.org\r\n"), "example.org")

    def test_internationalized(self) -> None:
        """A U-label domain (SMTPUTF8) comes back in A-labels, as DNS wants it."""
        self.assertEqual(fromDomain("From: joe@bücher.example\r\n\r\n".encode()), "xn--bcher-kva.example")


class AlignmentTests(unittest.TestCase):
    def test_organizationalDomain(self) -> None:
        """The public suffix and one label more, from the Public Suffix List."""
        self.assertEqual(organizationalDomain("a.b.example.co.uk"), "example.co.uk")
        self.assertEqual(organizationalDomain("mail.example.org"), "example.org")
        self.assertEqual(organizationalDomain("example.org"), "example.org")
        self.assertEqual(organizationalDomain("co.uk"), "co.uk")

    def test_relaxedAndStrict(self) -> None:
        self.assertTrue(isAligned("mail.example.co.uk", "example.co.uk", "r"))
        self.assertFalse(isAligned("mail.example.co.uk", "example.co.uk", "s"))
        self.assertTrue(isAligned("Example.CO.uk.", "example.co.uk", "s"))
        # Two registrants under one public suffix are not aligned.
        self.assertFalse(isAligned("other.co.uk", "example.co.uk", "r"))


class EvaluateTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dns = startDNSServer(self, ZONES)
        self.resolver = self.dns.resolver()

    def evaluate(self, domain: str | None, spfResult: MethodResult | None = None, dkimResults: Any = (), **kw: Any) -> Any:
        return defer.Deferred.fromCoroutine(
            evaluate(self.resolver, domain, spfResult, list(dkimResults), timeout=(2,), **kw)
        )

    def check(self, outcome: DMARCOutcome, result: str, policy: str | None = None, disposition: str | None = None) -> None:
        self.assertEqual(outcome.result.method, "dmarc")
        self.assertEqual(
            (outcome.result.result, outcome.policy, outcome.disposition),
            (result, policy, disposition),
            outcome.result.reason,
        )

    @defer.inlineCallbacks
    def test_passSPFAligned(self) -> Any:
        """An SPF pass for a subdomain of the From domain passes in relaxed mode."""
        outcome = yield self.evaluate("example.org", spf("pass", "bounces@mail.example.org"), [dkim("fail", "example.org")])
        self.check(outcome, "pass", "reject")
        self.assertEqual(outcome.result.properties, (("header.from", "example.org"),))
        self.assertIn("SPF", outcome.result.reason)
        self.assertEqual(outcome.recordDomain, "example.org")

    @defer.inlineCallbacks
    def test_passDKIMAligned(self) -> Any:
        """One passing aligned signature among others is enough."""
        outcome = yield self.evaluate(
            "example.org",
            spf("pass", "bounces@esp.example"),
            [dkim("pass", "esp.example"), dkim("pass", "EXAMPLE.org")],
        )
        self.check(outcome, "pass", "reject")
        self.assertIn("DKIM", outcome.result.reason)

    @defer.inlineCallbacks
    def test_failUnaligned(self) -> Any:
        """Passes for other domains, or aligned results that are not pass: fail, with the policy."""
        outcome = yield self.evaluate(
            "example.org",
            spf("softfail", "x@example.org"),
            [dkim("pass", "esp.example"), dkim("fail", "example.org"), dkim("temperror", "example.org")],
        )
        self.check(outcome, "fail", "reject", "reject")
        self.assertFalse(outcome.sampledOut)

    @defer.inlineCallbacks
    def test_strict(self) -> Any:
        """adkim=s/aspf=s: a subdomain's pass does not align; the exact domain's does."""
        sub = yield self.evaluate(
            "strict.example", spf("pass", "b@mail.strict.example"), [dkim("pass", "mail.strict.example")]
        )
        self.check(sub, "fail", "reject", "reject")
        exact = yield self.evaluate("strict.example", spf("pass", "b@strict.example"))
        self.check(exact, "pass", "reject")

    @defer.inlineCallbacks
    def test_relaxedFromSubdomain(self) -> Any:
        """Relaxed: a From subdomain aligns with a pass of its organizational domain, and the record found there applies."""
        outcome = yield self.evaluate("news.relaxed.example", None, [dkim("pass", "relaxed.example")])
        self.check(outcome, "pass", "quarantine")
        self.assertEqual(outcome.recordDomain, "relaxed.example")

    @defer.inlineCallbacks
    def test_subdomainPolicy(self) -> Any:
        """A From subdomain without a record of its own gets the organizational domain's sp=."""
        outcome = yield self.evaluate("lists.example.org", spf("fail", "a@lists.example.org"))
        self.check(outcome, "fail", "quarantine", "quarantine")
        self.assertEqual(outcome.recordDomain, "example.org")
        self.assertEqual(self.dns.queries, [("_dmarc.lists.example.org", "TXT"), ("_dmarc.example.org", "TXT")])

    @defer.inlineCallbacks
    def test_multiLabelPublicSuffix(self) -> Any:
        """The fallback goes to example.co.uk (the PSL's organizational domain), never to co.uk."""
        outcome = yield self.evaluate("a.mail.example.co.uk", spf("pass", "x@other.co.uk"))
        self.check(outcome, "fail", "none", "none")
        self.assertEqual(outcome.organizationalDomain, "example.co.uk")
        self.assertEqual(self.dns.queries, [("_dmarc.a.mail.example.co.uk", "TXT"), ("_dmarc.example.co.uk", "TXT")])

    @defer.inlineCallbacks
    def test_noRecord(self) -> Any:
        """No record at the From domain nor its organizational domain: none."""
        outcome = yield self.evaluate("mail.nothing.example", spf("pass", "a@nothing.example"))
        self.check(outcome, "none")
        self.assertEqual(outcome.result.properties, (("header.from", "mail.nothing.example"),))
        self.assertEqual(
            self.dns.queries, [("_dmarc.mail.nothing.example", "TXT"), ("_dmarc.nothing.example", "TXT")]
        )

    @defer.inlineCallbacks
    def test_twoRecords(self) -> Any:
        """Two DMARC records: none, and no fallback to another domain (§6.6.3 step 5)."""
        outcome = yield self.evaluate("two.example", spf("fail", "a@two.example"))
        self.check(outcome, "none")
        self.assertIn("2 DMARC records", outcome.result.reason)

    @defer.inlineCallbacks
    def test_otherTXTDiscarded(self) -> Any:
        """A TXT record that is not DMARC beside the DMARC one is not a second record."""
        outcome = yield self.evaluate("mixed.example", spf("fail", "a@mixed.example"))
        self.check(outcome, "fail", "reject", "reject")

    @defer.inlineCallbacks
    def test_badRecordIgnored(self) -> Any:
        """A DMARC record without a valid p= (and no rua): as no record, result none."""
        outcome = yield self.evaluate("bad.example", spf("fail", "a@bad.example"))
        self.check(outcome, "none")
        self.assertIn("unusable", outcome.result.reason)

    @defer.inlineCallbacks
    def test_badPolicyWithRua(self) -> Any:
        """A bad p= with a valid rua: evaluated as p=none."""
        outcome = yield self.evaluate("badrua.example", spf("fail", "a@badrua.example"))
        self.check(outcome, "fail", "none", "none")

    @defer.inlineCallbacks
    def test_nonDMARCRecordFallsBack(self) -> Any:
        """A record that is not DMARC at the From domain is discarded: the organizational domain's applies."""
        outcome = yield self.evaluate("sub.notdmarc.example", spf("fail", "a@sub.notdmarc.example"))
        self.check(outcome, "fail", "quarantine", "quarantine")

    @defer.inlineCallbacks
    def test_servfail(self) -> Any:
        """SERVFAIL at the From domain, or at the organizational domain: temperror."""
        outcome = yield self.evaluate("broken.example", spf("pass", "a@broken.example"))
        self.check(outcome, "temperror")
        self.assertIn("SERVFAIL", outcome.result.reason)
        outcome = yield self.evaluate("sub.brokenorg.example", spf("pass", "a@brokenorg.example"))
        self.check(outcome, "temperror")

    @defer.inlineCallbacks
    def test_noFromDomain(self) -> Any:
        """No single From domain: permerror, without asking the DNS."""
        outcome = yield self.evaluate(None, spf("pass", "a@example.org"))
        self.check(outcome, "permerror")
        outcome = yield self.evaluate("not a domain", spf("pass", "a@example.org"))
        self.check(outcome, "permerror")
        self.assertEqual(self.dns.queries, [])

    @defer.inlineCallbacks
    def test_pctSampling(self) -> Any:
        """pct=30: a draw under 30% gets the policy, others the next lower one (§6.6.4)."""
        failing = spf("fail", "a@sampled.example")
        draws: list[float] = []

        def draw(value: float) -> Any:
            def random() -> float:
                draws.append(value)
                return value

            return random

        picked = yield self.evaluate("sampled.example", failing, random=draw(0.29))
        self.check(picked, "fail", "reject", "reject")
        self.assertFalse(picked.sampledOut)
        left = yield self.evaluate("sampled.example", failing, random=draw(0.30))
        self.check(left, "fail", "reject", "quarantine")
        self.assertTrue(left.sampledOut)
        self.assertEqual(draws, [0.29, 0.30])
        # A pass draws nothing.
        yield self.evaluate("sampled.example", spf("pass", "a@sampled.example"), random=draw(0.5))
        self.assertEqual(draws, [0.29, 0.30])

    @defer.inlineCallbacks
    def test_pctZero(self) -> Any:
        """pct=0: never enacted, without drawing."""

        def random() -> float:
            raise AssertionError("drawn")

        outcome = yield self.evaluate("never.example", spf("fail", "a@never.example"), random=random)
        self.check(outcome, "fail", "quarantine", "none")

    @defer.inlineCallbacks
    def test_nonexistentSubdomain(self) -> Any:
        """RFC 9091: np= for a From subdomain that does not exist, sp= for one that does."""
        failing = spf("fail", "a@x.example")
        ghost = yield self.evaluate("ghost.np.example", failing)
        self.check(ghost, "fail", "reject", "reject")
        real = yield self.evaluate("real.np.example", failing)
        self.check(real, "fail", "quarantine", "quarantine")
        mx = yield self.evaluate("mx.np.example", failing)
        self.check(mx, "fail", "quarantine", "quarantine")
        # The organizational domain itself: p=.
        org = yield self.evaluate("np.example", failing)
        self.check(org, "fail", "none", "none")
