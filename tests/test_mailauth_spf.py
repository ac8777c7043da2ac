"""
Tests for :mod:`txsmtp.mailauth.spf` and :mod:`txsmtp.mailauth.spfmacro`:
the record grammar and the macros without any DNS, then check_host()
against the test DNS server (:mod:`tests.dnsserver`) over real UDP, and
the same table of cases through pyspf as an independent oracle.
"""

from __future__ import annotations

import importlib
import ipaddress
from typing import Any

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.dnsserver import SERVFAIL, startDNSServer
from tests.peers import PEERS_REQUIRED
from txsmtp.mailauth.results import MethodResult
from txsmtp.mailauth.spf import SPFLimits, checkHelo, checkHost, checkSender
from txsmtp.mailauth.spfmacro import (
    MacroContext,
    SPFSyntaxError,
    expand,
    expandDomain,
    parseDomainSpec,
    parseMacroString,
)
from txsmtp.mailauth.spfrecord import parseRecord

MX11 = [(i, f"mx{i}.mx11.example") for i in range(11)]

ZONES: dict[str, Any] = {
    # Qualifiers, and the record selection of §4.5.
    "pass.example": {"TXT": ["v=spf1 +all"]},
    "fail.example": {"TXT": ["v=spf1 -all"]},
    "softfail.example": {"TXT": ["v=spf1 ~all"]},
    "neutral.example": {"TXT": ["v=spf1 ?all"]},
    "default.example": {"TXT": ["v=spf1 ip4:198.51.100.99"]},
    "norecord.example": {"TXT": ["not spf at all", "v=spf10 +all"], "A": ["192.0.2.1"]},
    "multi.example": {"TXT": ["v=spf1 -all", "v=spf1 +all"]},
    "upper.example": {"TXT": ["V=SPF1 IP4:192.0.2.1 -ALL"]},
    "split.example": {"TXT": [("v=spf1 ip4:192.0.2.1", " -all"), "something else"]},
    # ip4, ip6.
    "ip.example": {"TXT": ["v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"]},
    "ip4host.example": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    # a
    "a.example": {"TXT": ["v=spf1 a -all"], "A": ["192.0.2.10"], "AAAA": ["2001:db8::10"]},
    "acidr.example": {"TXT": ["v=spf1 a:a.example/24//64 -all"]},
    "aother.example": {"TXT": ["v=spf1 a:host.aother.example ~all"]},
    "host.aother.example": {"A": ["198.51.100.1"]},
    # mx
    "mx.example": {"TXT": ["v=spf1 mx -all"], "MX": [(10, "mx1.mx.example"), (20, "mx2.mx.example")]},
    "mx1.mx.example": {"A": ["192.0.2.20"]},
    "mx2.mx.example": {"A": ["192.0.2.21"], "AAAA": ["2001:db8::21"]},
    "mxcidr.example": {"TXT": ["v=spf1 mx:mx.example/30 -all"]},
    "mx11.example": {"TXT": ["v=spf1 mx -all"], "MX": MX11},
    **{name: {"A": ["203.0.113.1"]} for _, name in MX11},
    # ptr
    "ptr.example": {"TXT": ["v=spf1 ptr -all"]},
    "ptrother.example": {"TXT": ["v=spf1 ptr:ptr.example -all"]},
    "30.2.0.192.in-addr.arpa": {"PTR": ["mail.ptr.example"]},
    "31.2.0.192.in-addr.arpa": {"PTR": ["mail.ptr.example"]},  # forged: not validated
    "mail.ptr.example": {"A": ["192.0.2.30"]},
    # exists, macros
    "exists.example": {"TXT": ["v=spf1 exists:%{i}.list.exists.example -all"]},
    "192.0.2.40.list.exists.example": {"A": ["127.0.0.2"]},
    "macro.example": {"TXT": ["v=spf1 exists:%{l1r-}.%{ir}.%{v}._spf.%{d2} -all"]},
    "strong.40.2.0.192.in-addr._spf.macro.example": {"A": ["127.0.0.2"]},
    # include (§5.2's table)
    "include.example": {"TXT": ["v=spf1 include:ip4host.example -all"]},
    "incfail.example": {"TXT": ["v=spf1 include:fail.example ?all"]},
    "incsoft.example": {"TXT": ["v=spf1 include:softfail.example -all"]},
    "incneutral.example": {"TXT": ["v=spf1 include:neutral.example -all"]},
    "incnone.example": {"TXT": ["v=spf1 include:norecord.example +all"]},
    "incnx.example": {"TXT": ["v=spf1 include:nowhere.example +all"]},
    "inctemp.example": {"TXT": ["v=spf1 include:broken.example +all"]},
    "incperm.example": {"TXT": ["v=spf1 include:multi.example +all"]},
    # redirect
    "redirect.example": {"TXT": ["v=spf1 redirect=ip4host.example"]},
    "redirnone.example": {"TXT": ["v=spf1 redirect=norecord.example"]},
    "redirall.example": {"TXT": ["v=spf1 ?all redirect=fail.example"]},
    "redirlater.example": {"TXT": ["v=spf1 redirect=fail.example ip4:192.0.2.1"]},
    "redirtwice.example": {"TXT": ["v=spf1 redirect=pass.example redirect=fail.example"]},
    # modifiers, syntax
    "unknownmod.example": {"TXT": ["v=spf1 foo=bar ip4:192.0.2.1 -all"]},
    "badmech.example": {"TXT": ["v=spf1 foo -all"]},
    "nodot.example": {"TXT": ["v=spf1 a:foo +all"]},
    "badcidr.example": {"TXT": ["v=spf1 ip4:192.0.2.1/33 +all"]},
    "badip.example": {"TXT": ["v=spf1 ip4:192.0.2 +all"]},
    "badmacro.example": {"TXT": ["v=spf1 exists:%{x}.example.com +all"]},
    "badpercent.example": {"TXT": ["v=spf1 exists:%(i).example.com +all"]},
    # limits (§4.6.4)
    "ten.example": {"TXT": ["v=spf1 " + " ".join(["include:neutral.example"] * 10) + " -all"]},
    "eleven.example": {"TXT": ["v=spf1 " + " ".join(["include:neutral.example"] * 11) + " -all"]},
    "loop.example": {"TXT": ["v=spf1 include:loop.example -all"]},
    # gone*.example: NXDOMAIN; default.example has no MX: NODATA.  Both are void.
    "void2.example": {"TXT": ["v=spf1 a:gone1.example mx:default.example +all"]},
    "void3.example": {"TXT": ["v=spf1 a:gone1.example mx:default.example exists:gone3.example +all"]},
    # ptr: only the first 10 names count; %{p}
    "ptr11.example": {"TXT": ["v=spf1 ptr -all"]},
    "70.2.0.192.in-addr.arpa": {"PTR": [f"p{i}.ptr11.example" for i in range(11)]},
    "71.2.0.192.in-addr.arpa": {"PTR": [f"p{i}.ptr11.example" for i in range(11)]},
    # (Names of other addresses, not void: pyspf counts each void forward
    # lookup of a ptr against the void limit; check_host() here counts the
    # terms whose own query is void, §4.6.4.)
    **{f"p{i}.ptr11.example": {"A": ["203.0.113.9"]} for i in range(9)},
    "p10.ptr11.example": {"A": ["192.0.2.70"]},
    "p9.ptr11.example": {"A": ["192.0.2.71"]},
    "pmacro.example": {"TXT": ["v=spf1 exists:%{p}.allowed.pmacro.example -all"]},
    "mail.ptr.example.allowed.pmacro.example": {"A": ["127.0.0.2"]},
    # %{p} prefers a name in the current domain (which an include changes)
    "pref.example": {"TXT": ["v=spf1 exists:%{p}.ok.pref.example include:two.example -all"]},
    "two.example": {"TXT": ["v=spf1 exists:%{p}.ok.two.example -all"]},
    "80.2.0.192.in-addr.arpa": {"PTR": ["a.one.example", "b.two.example"]},
    "a.one.example": {"A": ["192.0.2.80"]},
    "b.two.example": {"A": ["192.0.2.80"]},
    "b.two.example.ok.two.example": {"A": ["127.0.0.2"]},
    "mxbroken.example": {"TXT": ["v=spf1 mx +all"], "MX": [(10, "broken.example")]},
    "ptr6.example": {"TXT": ["v=spf1 ptr:ptr.example -all"]},
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa": {"PTR": ["six.ptr.example"]},
    "six.ptr.example": {"AAAA": ["2001:db8::1"]},
    # exp
    "exp.example": {"TXT": ["v=spf1 ip4:192.0.2.1 -all exp=explain.exp.example"]},
    "explain.exp.example": {"TXT": ["%{i} is not one of %{d}'s designated mail servers."]},
    "expredir.example": {"TXT": ["v=spf1 redirect=exp.example exp=explain.other.example"]},
    "explain.other.example": {"TXT": ["the wrong explanation"]},
    "expinc.example": {"TXT": ["v=spf1 include:exp.example -all"]},
    # temperror
    "broken.example": SERVFAIL,
    "abroken.example": {"TXT": ["v=spf1 a:broken.example +all"]},
    # CNAME
    "cname.example": {"TXT": ["v=spf1 a:alias.cname.example -all"]},
    "alias.cname.example": {"CNAME": "target.cname.example"},
    "target.cname.example": {"A": ["192.0.2.50"]},
    # HELO
    "helo.example": {"TXT": ["v=spf1 a -all"], "A": ["192.0.2.60"]},
}

#: (domain, client address, expected result): run through checkHost and pyspf.
CASES: list[tuple[str, str, str]] = [
    ("pass.example", "192.0.2.1", "pass"),
    ("fail.example", "192.0.2.1", "fail"),
    ("softfail.example", "192.0.2.1", "softfail"),
    ("neutral.example", "192.0.2.1", "neutral"),
    ("default.example", "192.0.2.1", "neutral"),
    ("norecord.example", "192.0.2.1", "none"),
    ("nowhere.example", "192.0.2.1", "none"),
    ("multi.example", "192.0.2.1", "permerror"),
    ("upper.example", "192.0.2.1", "pass"),
    ("upper.example", "192.0.2.2", "fail"),
    ("split.example", "192.0.2.1", "pass"),
    ("split.example", "192.0.2.2", "fail"),
    ("ip.example", "192.0.2.200", "pass"),
    ("ip.example", "192.0.3.1", "fail"),
    ("ip.example", "2001:db8:1::1", "pass"),
    ("ip.example", "2001:db9::1", "fail"),
    ("ip4host.example", "::ffff:192.0.2.1", "pass"),
    ("a.example", "192.0.2.10", "pass"),
    ("a.example", "192.0.2.11", "fail"),
    ("a.example", "2001:db8::10", "pass"),
    ("a.example", "2001:db8::11", "fail"),
    ("acidr.example", "192.0.2.77", "pass"),
    ("acidr.example", "192.0.3.10", "fail"),
    ("acidr.example", "2001:db8::ffff", "pass"),
    ("acidr.example", "2001:db8:0:1::10", "fail"),
    ("aother.example", "198.51.100.1", "pass"),
    ("aother.example", "198.51.100.2", "softfail"),
    ("mx.example", "192.0.2.20", "pass"),
    ("mx.example", "192.0.2.21", "pass"),
    ("mx.example", "192.0.2.22", "fail"),
    ("mx.example", "2001:db8::21", "pass"),
    ("mxcidr.example", "192.0.2.23", "pass"),
    ("mxcidr.example", "192.0.2.24", "fail"),
    ("mx11.example", "192.0.2.1", "permerror"),
    ("ptr.example", "192.0.2.30", "pass"),
    ("ptr.example", "192.0.2.31", "fail"),
    ("ptrother.example", "192.0.2.30", "pass"),
    ("ptr11.example", "192.0.2.70", "fail"),
    ("ptr11.example", "192.0.2.71", "pass"),
    ("pmacro.example", "192.0.2.30", "pass"),
    ("pmacro.example", "192.0.2.31", "fail"),
    ("pref.example", "192.0.2.80", "pass"),
    ("two.example", "192.0.2.80", "pass"),
    ("mxbroken.example", "192.0.2.1", "temperror"),
    ("exists.example", "2001:db8::40", "fail"),
    ("ptr6.example", "2001:db8::1", "pass"),
    ("ptr6.example", "2001:db8::2", "fail"),
    ("exists.example", "192.0.2.40", "pass"),
    ("exists.example", "192.0.2.41", "fail"),
    ("macro.example", "192.0.2.40", "pass"),
    ("macro.example", "192.0.2.41", "fail"),
    ("include.example", "192.0.2.1", "pass"),
    ("include.example", "192.0.2.2", "fail"),
    ("incfail.example", "192.0.2.1", "neutral"),
    ("incsoft.example", "192.0.2.1", "fail"),
    ("incneutral.example", "192.0.2.1", "fail"),
    ("incnone.example", "192.0.2.1", "permerror"),
    ("incnx.example", "192.0.2.1", "permerror"),
    ("inctemp.example", "192.0.2.1", "temperror"),
    ("incperm.example", "192.0.2.1", "permerror"),
    ("redirect.example", "192.0.2.1", "pass"),
    ("redirect.example", "192.0.2.2", "fail"),
    ("redirnone.example", "192.0.2.1", "permerror"),
    ("redirall.example", "192.0.2.1", "neutral"),
    ("redirlater.example", "192.0.2.1", "pass"),
    ("redirlater.example", "192.0.2.2", "fail"),
    ("redirtwice.example", "192.0.2.1", "permerror"),
    ("unknownmod.example", "192.0.2.1", "pass"),
    ("badmech.example", "192.0.2.1", "permerror"),
    ("nodot.example", "192.0.2.1", "permerror"),
    ("badcidr.example", "192.0.2.1", "permerror"),
    ("badip.example", "192.0.2.1", "permerror"),
    ("badmacro.example", "192.0.2.1", "permerror"),
    ("badpercent.example", "192.0.2.1", "permerror"),
    ("ten.example", "192.0.2.1", "fail"),
    ("eleven.example", "192.0.2.1", "permerror"),
    ("loop.example", "192.0.2.1", "permerror"),
    ("void2.example", "192.0.2.1", "pass"),
    ("void3.example", "192.0.2.1", "permerror"),
    ("exp.example", "192.0.2.2", "fail"),
    ("broken.example", "192.0.2.1", "temperror"),
    ("abroken.example", "192.0.2.1", "temperror"),
    ("cname.example", "192.0.2.50", "pass"),
    ("cname.example", "192.0.2.51", "fail"),
]

#: Cases where pyspf reads the RFC otherwise, left out of the comparison.
PYSPF_DIFFERS = {
    # pyspf works out %{p} once per check, for the first <domain> that
    # asks; §7.3 prefers a name in the <domain> being evaluated, which an
    # include changes.
    ("pref.example", "192.0.2.80"),
}

SENDER_LOCAL = "strong-bad"


class RecordSyntaxTests(unittest.TestCase):
    """parseRecord: the grammar of §4.6 and §12, without DNS."""

    def test_terms(self) -> None:
        """Qualifiers, CIDR lengths, domain-specs and modifiers are read as written."""
        record = parseRecord("v=spf1 -a:example.com/24//64 ~mx ?ip6:2001:db8::/32 ip4:192.0.2.1 redirect=x.example foo=%{d}")
        a, mx, ip6, ip4 = record.mechanisms
        self.assertEqual((a.qualifier, a.name, a.cidr4, a.cidr6), ("-", "a", 24, 64))
        self.assertIsNotNone(a.domainSpec)
        self.assertEqual((mx.qualifier, mx.name, mx.domainSpec, mx.cidr4, mx.cidr6), ("~", "mx", None, 32, 128))
        self.assertEqual(ip6.network, ipaddress.ip_network("2001:db8::/32"))
        self.assertEqual((ip4.qualifier, ip4.network), ("+", ipaddress.ip_network("192.0.2.1/32")))
        self.assertEqual(record.redirect.text if record.redirect else None, "redirect=x.example")
        self.assertEqual([m.name for m in record.unknown], ["foo"])

    def test_caseInsensitive(self) -> None:
        """Mechanism and modifier names are case-insensitive."""
        record = parseRecord("v=spf1 A:Example.COM MX Include:x.example Redirect=y.example")
        self.assertEqual([m.name for m in record.mechanisms], ["a", "mx", "include"])
        self.assertIsNotNone(record.redirect)

    def test_errors(self) -> None:
        """Every term outside the grammar is a syntax error."""
        for text in [
            "v=spf1 foo",
            "v=spf1 all:x.example",
            "v=spf1 include",
            "v=spf1 exists",
            "v=spf1 a:foo",
            "v=spf1 a:example.123",
            "v=spf1 a/33",
            "v=spf1 a//129",
            "v=spf1 a/024",
            "v=spf1 ip4:192.0.2.1/33",
            "v=spf1 ip4:192.0.02.1",
            "v=spf1 ip6:192.0.2.1",
            "v=spf1 ip6:2001:db8::/129",
            "v=spf1 ip4",
            "v=spf1 redirect=a.example redirect=b.example",
            "v=spf1 exp=a.example exp=b.example",
            "v=spf1 +redirect=a.example",
            "v=spf1 exists:%{c}.example.com",
            "v=spf1 exists:%{d0}.example.com",
            "v=spf1 exists:100%.example.com",
            "v=spf1 foo=%{z}",
        ]:
            with self.assertRaises(SPFSyntaxError, msg=text):
                parseRecord(text)

    def test_domainEnd(self) -> None:
        """A domain-spec ends in a macro or in a dot and a top label that is not all digits."""
        for good in ["example.com", "example.com.", "%{d}", "x.%{d2}", "%{i}.bl.example", "foo.x-1", "a.%%"]:
            parseDomainSpec(good)
        for bad in ["example", "example.123", "%{d}com", "x.-a", ""]:
            with self.assertRaises(SPFSyntaxError, msg=bad):
                parseDomainSpec(bad)


class MacroTests(unittest.TestCase):
    """The examples of RFC 7208 §7.4, and the rest of §7."""

    def context(self, ip: str = "192.0.2.3") -> MacroContext:
        return MacroContext(
            sender="strong-bad@email.example.com",
            domain="email.example.com",
            ip=ipaddress.ip_address(ip),
            helo="mx.example.org",
            receiver="mx.example.net",
            now=1234567890,
        )

    def expand(self, text: str, ip: str = "192.0.2.3", explain: bool = False) -> str:
        return expand(parseMacroString(text, explain), self.context(ip))

    def test_rfcExamples(self) -> None:
        """§7.4, with <sender> strong-bad@email.example.com and <ip> 192.0.2.3."""
        for text, expected in [
            ("%{s}", "strong-bad@email.example.com"),
            ("%{o}", "email.example.com"),
            ("%{d}", "email.example.com"),
            ("%{d4}", "email.example.com"),
            ("%{d3}", "email.example.com"),
            ("%{d2}", "example.com"),
            ("%{d1}", "com"),
            ("%{dr}", "com.example.email"),
            ("%{d2r}", "example.email"),
            ("%{l}", "strong-bad"),
            ("%{l-}", "strong.bad"),
            ("%{lr}", "strong-bad"),
            ("%{lr-}", "bad.strong"),
            ("%{l1r-}", "strong"),
            ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
            ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
            ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
            ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
            ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ]:
            self.assertEqual(self.expand(text), expected, text)

    def test_rfcExampleIPv6(self) -> None:
        """§7.4: <ip> 2001:db8::cb01 in nibbles."""
        self.assertEqual(
            self.expand("%{ir}.%{v}._spf.%{d2}", ip="2001:db8::cb01"),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com",
        )

    def test_escapesAndUpperCase(self) -> None:
        """%%, %_, %-; an upper-case letter URL-escapes its value."""
        self.assertEqual(self.expand("a%%b%_c%-d", explain=True), "a%b c%20d")
        self.assertEqual(self.expand("%{S}"), "strong-bad%40email.example.com")
        self.assertEqual(self.expand("%{L}"), "strong-bad")

    def test_delimitersAndExplainLetters(self) -> None:
        """Several delimiters at once; c, r, t, h, p in an explanation."""
        ctx = self.context()
        ctx.sender = "a+b=c_d@example.com"
        self.assertEqual(expand(parseMacroString("%{l+=_}"), ctx), "a.b.c.d")
        self.assertEqual(expand(parseMacroString("%{l2r+=_}"), ctx), "b.a")
        self.assertEqual(self.expand("%{c} %{r} %{t} %{h} %{p}", explain=True), "192.0.2.3 mx.example.net 1234567890 mx.example.org unknown")
        self.assertEqual(self.expand("%{c}", ip="2001:db8::cb01", explain=True), "2001:db8::cb01")

    def test_truncation(self) -> None:
        """An expanded name over 253 characters loses labels from the left (§7.3)."""
        ctx = self.context()
        ctx.sender = ("x" * 60 + ".") * 5 + "@example.com"
        name = expandDomain(parseDomainSpec("%{l}.example.com"), ctx)
        self.assertLessEqual(len(name), 253)
        self.assertTrue(name.endswith(".example.com"))
        self.assertTrue(name.startswith("x"))


class CheckHostTests(unittest.TestCase):
    """check_host() against the test DNS server."""

    def setUp(self) -> None:
        self.dns = startDNSServer(self, ZONES, chaseCNAME=True)
        self.resolver = self.dns.resolver()

    def check(self, domain: str, ip: str, sender: str | None = None, **kw: Any) -> defer.Deferred[Any]:
        sender = sender if sender is not None else f"{SENDER_LOCAL}@{domain}"
        return defer.Deferred.fromCoroutine(checkHost(self.resolver, ip, domain, sender, "helo.example", **kw))

    @defer.inlineCallbacks
    def test_table(self) -> Any:
        """Every case of the table gives its expected result."""
        wrong = []
        for domain, ip, expected in CASES:
            result = yield self.check(domain, ip)
            if result.result != expected:
                wrong.append((domain, ip, expected, result))
        self.assertEqual(wrong, [])

    @defer.inlineCallbacks
    def test_mechanismAndDomain(self) -> Any:
        """The result names the deciding term and the domain asked about."""
        result = yield self.check("redirect.example", "192.0.2.1")
        self.assertEqual((result.result, result.mechanism, result.domain), ("pass", "ip4:192.0.2.1", "redirect.example"))
        result = yield self.check("include.example", "192.0.2.1")
        self.assertEqual(result.mechanism, "include:ip4host.example")
        result = yield self.check("default.example", "192.0.2.1")
        self.assertEqual((result.result, result.mechanism), ("neutral", None))

    @defer.inlineCallbacks
    def test_explanation(self) -> Any:
        """exp= is fetched and expanded for fail, with the target's exp= after a redirect, never an include's."""
        result = yield self.check("exp.example", "192.0.2.2")
        self.assertEqual(result.explanation, "192.0.2.2 is not one of exp.example's designated mail servers.")
        result = yield self.check("expredir.example", "192.0.2.2")
        self.assertEqual(result.explanation, "192.0.2.2 is not one of exp.example's designated mail servers.")
        result = yield self.check("expinc.example", "192.0.2.2")
        self.assertEqual((result.result, result.explanation), ("fail", None))
        result = yield self.check("exp.example", "192.0.2.1")
        self.assertEqual((result.result, result.explanation), ("pass", None))

    @defer.inlineCallbacks
    def test_limitsCountTerms(self) -> Any:
        """Looser limits let what the default refuses through; the 11th lookup is never asked."""
        result = yield self.check("eleven.example", "192.0.2.1", limits=SPFLimits(dnsTerms=11))
        self.assertEqual(result.result, "fail")
        result = yield self.check("void3.example", "192.0.2.1", limits=SPFLimits(voidLookups=3))
        self.assertEqual(result.result, "pass")
        del self.dns.queries[:]
        result = yield self.check("void3.example", "192.0.2.1")
        self.assertEqual(result.result, "permerror")
        self.assertIn("void", result.detail or "")
        self.assertEqual(self.dns.queries[-1], ("gone3.example", "A"))

    @defer.inlineCallbacks
    def test_senderWithoutLocalPart(self) -> Any:
        """§4.3: a sender without local-part is postmaster@domain for %{l}."""
        zones = dict(ZONES)
        zones["local.example"] = {"TXT": ["v=spf1 exists:%{l}.users.local.example -all"]}
        zones["postmaster.users.local.example"] = {"A": ["127.0.0.2"]}
        dnsServer = startDNSServer(self, zones)
        result = yield defer.Deferred.fromCoroutine(checkHost(dnsServer.resolver(), "192.0.2.1", "local.example", "local.example", "h.example"))
        self.assertEqual(result.result, "pass")

    @defer.inlineCallbacks
    def test_malformedDomain(self) -> Any:
        """A <domain> that is not a multi-label name is none without any query (§4.3)."""
        for domain in ["localhost", "a..example", "x" * 64 + ".example", "[192.0.2.1]"]:
            result = yield self.check(domain, "192.0.2.1")
            self.assertEqual(result.result, "none", domain)
        self.assertEqual(self.dns.queries, [])

    @defer.inlineCallbacks
    def test_checkSender(self) -> Any:
        """The MAIL FROM identity, or postmaster@HELO for a null reverse-path."""
        result = yield defer.Deferred.fromCoroutine(
            checkSender(self.resolver, "192.0.2.1", "user@ip4host.example", "helo.example", "mx.example.net")
        )
        self.assertIsInstance(result, MethodResult)
        self.assertEqual((result.method, result.result), ("spf", "pass"))
        self.assertEqual(result.properties, (("smtp.mailfrom", "user@ip4host.example"),))
        self.assertIn("ip4:192.0.2.1", result.reason or "")
        for nullPath in (None, ""):
            result = yield defer.Deferred.fromCoroutine(checkSender(self.resolver, "192.0.2.60", nullPath, "helo.example"))
            self.assertEqual((result.result, result.get("smtp.mailfrom")), ("pass", "postmaster@helo.example"))
        result = yield defer.Deferred.fromCoroutine(checkSender(self.resolver, "192.0.2.61", None, "helo.example"))
        self.assertEqual(result.result, "fail")

    @defer.inlineCallbacks
    def test_checkHelo(self) -> Any:
        """The HELO identity; an address literal is none."""
        result = yield defer.Deferred.fromCoroutine(checkHelo(self.resolver, "192.0.2.60", "helo.example"))
        self.assertEqual((result.result, result.properties), ("pass", (("smtp.helo", "helo.example"),)))
        result = yield defer.Deferred.fromCoroutine(checkHelo(self.resolver, "192.0.2.60", "[192.0.2.60]"))
        self.assertEqual(result.result, "none")


def _pyspf() -> Any:
    try:
        return importlib.import_module("spf"), importlib.import_module("dns.resolver")
    except ImportError as e:
        message = f"pyspf with dnspython is not installed ({e}); pip install pyspf dnspython"
        if PEERS_REQUIRED:
            raise AssertionError(message + "; TXSMTP_REQUIRE_PEERS=1 makes this a failure") from e
        raise unittest.SkipTest(message) from e


class PyspfOracleTests(unittest.TestCase):
    """
    The table of cases through pyspf, with its DNS sent to the same test
    server (its module-global DNSLookup replaced for this test only), in a
    thread so that the reactor answers meanwhile.
    """

    def setUp(self) -> None:
        self.pyspf, self.dnsresolver = _pyspf()
        self.dns = startDNSServer(self, ZONES, chaseCNAME=True)
        self.patch(self.pyspf, "DNSLookup", self.lookup)

    def lookup(self, name: str, qtype: str, strict: bool = True, timeout: float = 20) -> list[Any]:
        resolver = self.dnsresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.dns.port
        resolver.lifetime = 5
        exception = importlib.import_module("dns.exception")
        try:
            answers = resolver.resolve(name, qtype, search=False)
        except (self.dnsresolver.NoAnswer, self.dnsresolver.NXDOMAIN):
            return []
        except (exception.Timeout, self.dnsresolver.NoNameservers) as e:
            raise self.pyspf.TempError(f"DNS {e}") from e
        out: list[Any] = []
        for rdata in answers:
            if qtype in ("A", "AAAA"):
                value: Any = rdata.address
            elif qtype == "MX":
                value = (rdata.preference, rdata.exchange)
            elif qtype == "PTR":
                value = rdata.target.to_text(True)
            else:
                value = rdata.strings
            out.append(((name, qtype), value))
        return out

    def pyspfResult(self, domain: str, ip: str) -> str:
        query = self.pyspf.query(ip, f"{SENDER_LOCAL}@{domain}", "helo.example", receiver="mx.example.net")
        return str(query.check()[0])

    @defer.inlineCallbacks
    def test_sameAsPyspf(self) -> Any:
        """pyspf and checkHost agree on every case of the table, and both on its expected result."""
        resolver = self.dns.resolver()
        disagreements = []
        for domain, ip, expected in CASES:
            if (domain, ip) in PYSPF_DIFFERS:
                continue
            ours = yield defer.Deferred.fromCoroutine(
                checkHost(resolver, ip, domain, f"{SENDER_LOCAL}@{domain}", "helo.example")
            )
            theirs = yield threads.deferToThread(self.pyspfResult, domain, ip)
            if not (ours.result == theirs == expected):
                disagreements.append((domain, ip, expected, ours.result, theirs))
        self.assertEqual(disagreements, [])
