"""
Tests for :mod:`txsmtp.wire.address`: RFC 5321 §4.1.2 paths, the limits of
§4.5.3.1, address literals (§4.1.3) and RFC 6531 UTF-8 addresses.
"""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from txsmtp.errors import SMTPSyntaxError
from txsmtp.wire.address import (
    MAX_DOMAIN,
    MAX_LOCAL,
    MAX_PATH,
    Address,
    parsePath,
    splitPathAndParameters,
)
from txsmtp.wire.params import parseMailParameters, parseRecipientParameters


class ValidPathTests(unittest.TestCase):
    def test_simple(self):
        a = parsePath(b"<user@example.com>")
        self.assertEqual(a, Address("user", "example.com"))
        self.assertEqual(str(a), "user@example.com")
        self.assertTrue(a.isASCII)
        self.assertFalse(a.isLiteral)
        self.assertFalse(a.isPostmaster)

    def test_dotString(self):
        a = parsePath(b"<first.last+tag=x!#$%&'*/?^_`{|}~-@sub.example-domain.co.uk>")
        self.assertEqual(a.localPart, "first.last+tag=x!#$%&'*/?^_`{|}~-")
        self.assertEqual(a.domain, "sub.example-domain.co.uk")

    def test_quotedWithSpaces(self):
        a = parsePath(b'<"john doe"@example.com>')
        self.assertEqual(a.localPart, '"john doe"')
        self.assertEqual(a.unquotedLocalPart, "john doe")

    def test_quotedWithEscapes(self):
        a = parsePath(b'<"a\\"b\\\\c@d"@example.com>')
        self.assertEqual(a.localPart, '"a\\"b\\\\c@d"')
        self.assertEqual(a.unquotedLocalPart, 'a"b\\c@d')

    def test_quotedWithAngleBracket(self):
        a = parsePath(b'<"a>b"@example.com>')
        self.assertEqual(a.unquotedLocalPart, "a>b")

    def test_ipv4Literal(self):
        a = parsePath(b"<user@[192.0.2.1]>")
        self.assertEqual(a.domain, "[192.0.2.1]")
        self.assertTrue(a.isLiteral)

    def test_ipv6Literal(self):
        for lit in (b"IPv6:2001:db8::1", b"IPv6:::1", b"ipv6:2001:db8:0:0:0:0:0:1", b"IPv6:::ffff:192.0.2.1"):
            a = parsePath(b"<user@[" + lit + b"]>")
            self.assertEqual(a.domain, "[" + lit.decode() + "]")

    def test_generalLiteral(self):
        a = parsePath(b"<user@[x-tag:something]>")
        self.assertEqual(a.domain, "[x-tag:something]")

    def test_sourceRouteIgnored(self):
        """RFC 5321 §4.1.1.3 / Appendix C: accept and ignore the source route."""
        a = parsePath(b"<@relay1.example,@relay2.example:user@example.com>")
        self.assertEqual(a, Address("user", "example.com"))

    def test_postmasterOnlyWhenAllowed(self):
        for form in (b"<Postmaster>", b"<postmaster>", b"<POSTMASTER>", b"<PostMaster>"):
            self.assertRaises(SMTPSyntaxError, parsePath, form)
            a = parsePath(form, postmasterOK=True)
            self.assertEqual(a.domain, "")
            self.assertTrue(a.isPostmaster)
            self.assertEqual(str(a), form[1:-1].decode())

    def test_postmasterWithDomain(self):
        self.assertTrue(parsePath(b"<postmaster@example.com>").isPostmaster)

    def test_nullOnlyWhenAllowed(self):
        self.assertIsNone(parsePath(b"<>", nullOK=True))
        with self.assertRaises(SMTPSyntaxError) as cm:
            parsePath(b"<>")
        self.assertEqual(cm.exception.code, 501)


class InvalidPathTests(unittest.TestCase):
    def assertSyntax(self, path: bytes, code: int = 501, **kw) -> SMTPSyntaxError:
        with self.assertRaises(SMTPSyntaxError) as cm:
            parsePath(path, **kw)
        self.assertEqual(cm.exception.code, code, path)
        return cm.exception

    def test_badForms(self):
        for path in (
            b"user@example.com",
            b"<user@example.com",
            b"user@example.com>",
            b"<user>",
            b"<@example.com>",
            b"<user@>",
            b"<user@@example.com>",
            b"<us er@example.com>",
            b"<.user@example.com>",
            b"<user.@example.com>",
            b"<us..er@example.com>",
            b"<user@-example.com>",
            b"<user@example-.com>",
            b"<user@example..com>",
            b"<user@example.com.>",
            b'<"unterminated@example.com>',
            b"<user@exa mple.com>",
            b"<<user@example.com>>",
        ):
            self.assertSyntax(path)

    def test_controlCharactersRefused(self):
        """Command injection through arguments (aiosmtplib GHSA-v3q9-hj7j-63hq, bpo-43124)."""
        for c in (b"\r", b"\n", b"\x00", b"\t", b"\x1b", b"\x7f"):
            self.assertSyntax(b"<us" + c + b"er@example.com>")
            self.assertSyntax(b'<"us' + c + b'er"@example.com>')
            self.assertSyntax(b"<user@exam" + c + b"ple.com>")
            self.assertSyntax(b"<user@[192.0.2.1" + c + b"]>")

    def test_badLiterals(self):
        for lit in (b"[300.1.1.1]", b"[192.0.2]", b"[IPv6:zz::1]", b"[IPv6:1:2:3:4:5:6:7:8:9]", b"[]", b"[:x]", b"[tag:]"):
            self.assertSyntax(b"<user@" + lit + b">")

    def test_ipv6ZoneIdRefused(self):
        """
        RFC 5321 §4.1.3: IPv6-addr is IPv6-full / IPv6-comp / IPv6v4-full /
        IPv6v4-comp, hex digits, colons and dots only; a "%zone" suffix is
        not part of the grammar.
        """
        self.assertSyntax(b"<user@[IPv6:fe80::1%eth0]>")

    def test_localPartLimit(self):
        """RFC 5321 §4.5.3.1.1: local part at most 64 octets."""
        self.assertEqual(parsePath(b"<" + b"a" * MAX_LOCAL + b"@example.com>").localPart, "a" * 64)
        self.assertSyntax(b"<" + b"a" * (MAX_LOCAL + 1) + b"@example.com>")

    def test_quotedLocalPartLimit(self):
        self.assertSyntax(b'<"' + b"a b" * 30 + b'"@example.com>')

    def test_pathLimit(self):
        """RFC 5321 §4.5.3.1.3: a path is at most 256 octets, brackets included."""
        domain = b"d" * 60 + b"." + b"e" * 60 + b"." + b"f" * 60 + b"." + b"g" * (MAX_PATH - 4 - 183)
        path = b"<u@" + domain + b">"
        self.assertEqual(len(path), MAX_PATH)
        self.assertEqual(parsePath(path).domain, domain.decode())
        self.assertSyntax(b"<uu@" + domain + b">")

    def test_domainLimit(self):
        """RFC 5321 §4.5.3.1.2: a domain is at most 255 octets."""
        domain = b"a" * 63 + b"." + b"b" * 63 + b"." + b"c" * 63 + b"." + b"d" * 66
        self.assertGreater(len(domain), MAX_DOMAIN)
        self.assertSyntax(b"<u@" + domain + b">")

    def test_utf8NeedsSMTPUTF8(self):
        """RFC 6531 §3.2: a UTF-8 address without SMTPUTF8 gets 553 5.6.7."""
        for path in ("<用户@例子.广告>", "<jos\u00e9@example.com>", "<user@b\u00fccher.example>"):
            err = self.assertSyntax(path.encode("utf-8"), 553)
            self.assertEqual(err.enhanced, "5.6.7")
            a = parsePath(path.encode("utf-8"), utf8=True)
            self.assertFalse(a.isASCII)
            self.assertEqual(f"<{a}>", path)

    def test_utf8QuotedLocalPart(self):
        a = parsePath('<"j\u00f6 d"@example.com>'.encode(), utf8=True)
        self.assertEqual(a.unquotedLocalPart, "j\u00f6 d")

    def test_invalidUTF8(self):
        self.assertSyntax(b"<\xff\xfe@example.com>", utf8=True)
        self.assertSyntax(b"<\xff\xfe@example.com>", 553)

    def test_utf8LocalPartLimitCountsOctets(self):
        local = "\u00e9" * 33  # 66 octets
        self.assertSyntax(f"<{local}@example.com>".encode(), utf8=True)


class SplitTests(unittest.TestCase):
    def test_noParameters(self):
        self.assertEqual(splitPathAndParameters(b"<a@b.example>"), (b"<a@b.example>", []))

    def test_parameters(self):
        self.assertEqual(
            splitPathAndParameters(b"<a@b.example> SIZE=100 BODY=8BITMIME"),
            (b"<a@b.example>", [b"SIZE=100", b"BODY=8BITMIME"]),
        )

    def test_spaceAfterColonTolerated(self):
        self.assertEqual(splitPathAndParameters(b" <a@b.example>"), (b"<a@b.example>", []))

    def test_quotedAngleBracket(self):
        self.assertEqual(
            splitPathAndParameters(b'<"x> SIZE=1"@b.example> SIZE=2'),
            (b'<"x> SIZE=1"@b.example>', [b"SIZE=2"]),
        )

    def test_quotedEscapedQuote(self):
        self.assertEqual(
            splitPathAndParameters(b'<"x\\">y"@b.example> BODY=7BIT'),
            (b'<"x\\">y"@b.example>', [b"BODY=7BIT"]),
        )

    def test_nullPath(self):
        self.assertEqual(splitPathAndParameters(b"<> SIZE=10"), (b"<>", [b"SIZE=10"]))

    def test_errors(self):
        for arg in (b"a@b.example", b"<a@b.example", b"<a@b.example>SIZE=1", b"", b'<"a>@b.example'):
            with self.assertRaises(SMTPSyntaxError) as cm:
                splitPathAndParameters(arg)
            self.assertEqual(cm.exception.code, 501)


_interesting = st.lists(
    st.sampled_from(
        [b"<", b">", b"@", b'"', b"\\", b"[", b"]", b":", b".", b",", b" ", b"=", b"+", b"a", b"Z9", b"-",
         b"IPv6:", b"::1", b"192.0.2.1", b"\xc3\xa9", b"\xff", b"\x00", b"\r", b"SIZE", b"NOTIFY", b"ORCPT",
         b"rfc822;", b"+2B", b"SMTPUTF8", b"postmaster"]
    ),
    max_size=30,
).map(b"".join)
_arbitrary = st.one_of(st.binary(max_size=300), _interesting)


class RobustnessTests(unittest.TestCase):
    """Every parser raises SMTPSyntaxError or returns, for any input."""

    @settings(max_examples=300, deadline=None)
    @given(_arbitrary, st.booleans(), st.booleans(), st.booleans())
    def test_parsePath(self, data, utf8, nullOK, postmasterOK):
        try:
            result = parsePath(data, utf8=utf8, nullOK=nullOK, postmasterOK=postmasterOK)
        except SMTPSyntaxError as e:
            event("parsePath: refused")
            self.assertIn(e.code, (501, 553))
            return
        if result is None:
            event("parsePath: null path")
            self.assertTrue(nullOK)
        else:
            event("parsePath: parsed")
            self.assertIsInstance(result, Address)
            text = str(result)
            self.assertFalse(any(ord(c) < 0x20 or ord(c) == 0x7F for c in text))
            self.assertLessEqual(len(data), MAX_PATH)
            if not utf8:
                self.assertTrue(result.isASCII)

    @settings(max_examples=300, deadline=None)
    @given(_arbitrary)
    def test_splitPathAndParameters(self, data):
        try:
            path, params = splitPathAndParameters(data)
        except SMTPSyntaxError:
            event("split: refused")
            return
        event("split: split")
        self.assertTrue(path.startswith(b"<") and path.endswith(b">"))
        self.assertTrue(all(params))

    @settings(max_examples=300, deadline=None)
    @given(_arbitrary, st.booleans())
    def test_wholeMailArgument(self, data, utf8):
        """The sequence the server runs for MAIL FROM: and RCPT TO:."""
        try:
            path, params = splitPathAndParameters(data)
            parseMailParameters(params, utf8=utf8)
            parsePath(path, utf8=utf8, nullOK=True)
            event("MAIL: accepted")
        except SMTPSyntaxError:
            pass
        try:
            path, params = splitPathAndParameters(data)
            parseRecipientParameters(params, utf8=utf8)
            parsePath(path, utf8=utf8, postmasterOK=True)
            event("RCPT: accepted")
        except SMTPSyntaxError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.lists(_arbitrary, max_size=5), st.booleans())
    def test_parameterParsers(self, params, utf8):
        allMail = frozenset({"SIZE", "BODY", "SMTPUTF8", "AUTH", "RET", "ENVID", "X-FOO"})
        try:
            result = parseMailParameters(params, allMail, utf8)
        except SMTPSyntaxError as e:
            self.assertIn(e.code, (501, 555))
        else:
            event("MAIL parameters: parsed" + (" (some)" if params else " (none)"))
            self.assertTrue(result.size is None or result.size >= 0)
        try:
            rresult = parseRecipientParameters(params, frozenset({"NOTIFY", "ORCPT"}), utf8)
        except SMTPSyntaxError as e:
            self.assertIn(e.code, (501, 555))
        else:
            event("RCPT parameters: parsed" + (" (some)" if params else " (none)"))
            self.assertTrue(rresult.notify is None or len(rresult.notify) >= 1)
