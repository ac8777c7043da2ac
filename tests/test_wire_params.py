"""
Tests for :mod:`txsmtp.wire.params`: MAIL/RCPT parameters (RFC 5321
§4.1.2 esmtp-param, RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8,
RFC 3461 DSN) and xtext (RFC 3461 §4).
"""

from __future__ import annotations

import re

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from tests.strategies import mutated
from txsmtp.errors import SMTPSyntaxError
from txsmtp.wire.params import (
    MAIL_KEYWORDS,
    RCPT_KEYWORDS,
    MailParameters,
    RecipientParameters,
    parseMailParameters,
    parseRecipientParameters,
    xtextDecode,
    xtextEncode,
)


class ErrorAssertions:
    def assertRefused(self, func, params, code=501, enhanced="5.5.4", **kw):
        with self.assertRaises(SMTPSyntaxError) as cm:
            func(params, **kw)
        self.assertEqual((cm.exception.code, cm.exception.enhanced), (code, enhanced), params)
        return cm.exception


class MailParameterTests(ErrorAssertions, unittest.TestCase):
    def test_none(self):
        self.assertEqual(parseMailParameters([]), MailParameters())

    def test_size(self):
        self.assertEqual(parseMailParameters([b"SIZE=1000"]).size, 1000)
        self.assertEqual(parseMailParameters([b"SIZE=0"]).size, 0)
        self.assertEqual(parseMailParameters([b"size=12"]).size, 12)

    def test_badSize(self):
        for p in (b"SIZE", b"SIZE=", b"SIZE=abc", b"SIZE=-1", b"SIZE=1.5", b"SIZE=1e3", b"SIZE=" + b"9" * 21, b"SIZE=+1"):
            self.assertRefused(parseMailParameters, [p])

    def test_body(self):
        self.assertEqual(parseMailParameters([b"BODY=8BITMIME"]).body, "8BITMIME")
        self.assertEqual(parseMailParameters([b"BODY=7bit"]).body, "7BIT")
        self.assertEqual(parseMailParameters([b"body=BinaryMIME"]).body, "BINARYMIME")

    def test_badBody(self):
        for p in (b"BODY", b"BODY=8BIT", b"BODY=", b"BODY=quoted-printable"):
            self.assertRefused(parseMailParameters, [p])

    def test_smtputf8(self):
        self.assertTrue(parseMailParameters([b"SMTPUTF8"]).smtputf8)
        self.assertTrue(parseMailParameters([b"smtputf8"]).smtputf8)
        self.assertFalse(parseMailParameters([]).smtputf8)

    def test_smtputf8TakesNoValue(self):
        """RFC 6531 §3.4: SMTPUTF8 has no value."""
        self.assertRefused(parseMailParameters, [b"SMTPUTF8=yes"])

    def test_unknownKeyword(self):
        """RFC 5321 §4.1.1.11: an unrecognised parameter is 555."""
        self.assertRefused(parseMailParameters, [b"FOO=bar"], 555)
        self.assertRefused(parseMailParameters, [b"XYZ"], 555)

    def test_keywordNotAllowedByCaller(self):
        self.assertRefused(parseMailParameters, [b"ENVID=abc"], 555, allowed=frozenset({"SIZE"}))

    def test_extraAllowedKeyword(self):
        p = parseMailParameters([b"X-FOO=bar", b"X-BAR"], allowed=MAIL_KEYWORDS | {"X-FOO", "X-BAR"})
        self.assertEqual(p.extra, {"X-FOO": "bar", "X-BAR": None})

    def test_duplicate(self):
        self.assertRefused(parseMailParameters, [b"SIZE=1", b"SIZE=2"])
        self.assertRefused(parseMailParameters, [b"SIZE=1", b"size=1"])

    def test_malformedKeyword(self):
        for p in (b"=1", b"-X=1", b"SI_ZE=1", b"S\xc3\xa9=1", b"\x00"):
            self.assertRefused(parseMailParameters, [p])

    def test_malformedValue(self):
        """esmtp-value excludes "=", SP and controls; command injection through arguments."""
        for p in (b"SIZE=1=2", b"ENVID=a\rb", b"ENVID=a\nRCPT", b"ENVID=a\x00", b"ENVID=a\x7f", b"ENVID=\xc3\xa9"):
            self.assertRefused(parseMailParameters, [p])

    def test_utf8Value(self):
        p = parseMailParameters([b"X-FOO=\xc3\xa9"], allowed=frozenset({"X-FOO"}), utf8=True)
        self.assertEqual(p.extra, {"X-FOO": "\u00e9"})
        self.assertRefused(parseMailParameters, [b"X-FOO=\xff"], allowed=frozenset({"X-FOO"}), utf8=True)

    def test_auth(self):
        self.assertIsNone(parseMailParameters([b"AUTH=<>"]).auth)
        self.assertEqual(parseMailParameters([b"AUTH=user+40example.com"]).auth, "user@example.com")
        self.assertRefused(parseMailParameters, [b"AUTH"])

    def test_ret(self):
        self.assertEqual(parseMailParameters([b"RET=hdrs"]).ret, "HDRS")
        self.assertEqual(parseMailParameters([b"RET=FULL"]).ret, "FULL")
        self.assertRefused(parseMailParameters, [b"RET=ALL"])

    def test_envid(self):
        """RFC 3461 §4.4: ENVID is xtext."""
        self.assertEqual(parseMailParameters([b"ENVID=QQ314159"]).envid, "QQ314159")
        self.assertEqual(parseMailParameters([b"ENVID=a+2Bb+3Dc"]).envid, "a+b=c")
        self.assertEqual(parseMailParameters([b"ENVID=caf+C3+A9"]).envid, "caf\u00e9")
        self.assertRefused(parseMailParameters, [b"ENVID=a+2"])
        self.assertRefused(parseMailParameters, [b"ENVID=a+2b"])
        self.assertRefused(parseMailParameters, [b"ENVID=a+"])
        self.assertRefused(parseMailParameters, [b"ENVID=" + b"x" * 101])
        self.assertEqual(parseMailParameters([b"ENVID=" + b"x" * 100]).envid, "x" * 100)

    def test_all(self):
        p = parseMailParameters([b"SIZE=5", b"BODY=8BITMIME", b"SMTPUTF8", b"RET=HDRS", b"ENVID=id1"])
        self.assertEqual(
            (p.size, p.body, p.smtputf8, p.ret, p.envid, p.extra), (5, "8BITMIME", True, "HDRS", "id1", {})
        )


class RecipientParameterTests(ErrorAssertions, unittest.TestCase):
    def test_none(self):
        self.assertEqual(parseRecipientParameters([]), RecipientParameters())

    def test_notify(self):
        """RFC 3461 §4.1: NEVER alone, or any of SUCCESS, FAILURE, DELAY."""
        self.assertEqual(parseRecipientParameters([b"NOTIFY=NEVER"]).notify, ("NEVER",))
        self.assertEqual(parseRecipientParameters([b"NOTIFY=never"]).notify, ("NEVER",))
        self.assertEqual(parseRecipientParameters([b"NOTIFY=SUCCESS"]).notify, ("SUCCESS",))
        self.assertEqual(
            parseRecipientParameters([b"NOTIFY=SUCCESS,FAILURE,DELAY"]).notify, ("SUCCESS", "FAILURE", "DELAY")
        )
        self.assertEqual(parseRecipientParameters([b"NOTIFY=delay,failure"]).notify, ("DELAY", "FAILURE"))

    def test_badNotify(self):
        for p in (
            b"NOTIFY",
            b"NOTIFY=NEVER,SUCCESS",
            b"NOTIFY=SUCCESS,NEVER",
            b"NOTIFY=NEVER,NEVER",
            b"NOTIFY=SUCCESS,SUCCESS",
            b"NOTIFY=",
            b"NOTIFY=,",
            b"NOTIFY=SUCCESS,",
            b"NOTIFY=ALWAYS",
        ):
            self.assertRefused(parseRecipientParameters, [p])

    def test_orcpt(self):
        """RFC 3461 §4.2: ORCPT=addr-type;xtext."""
        self.assertEqual(
            parseRecipientParameters([b"ORCPT=rfc822;user+40example.com"]).orcpt, ("rfc822", "user@example.com")
        )
        self.assertEqual(
            parseRecipientParameters([b"ORCPT=RFC822;a+2Bb@example.com"]).orcpt, ("rfc822", "a+b@example.com")
        )
        self.assertEqual(
            parseRecipientParameters([b"ORCPT=utf-8;caf+C3+A9@example.com"]).orcpt, ("utf-8", "caf\u00e9@example.com")
        )

    def test_badOrcpt(self):
        for p in (b"ORCPT", b"ORCPT=rfc822", b"ORCPT=;a@b", b"ORCPT=rfc822;", b"ORCPT=rf_c;a@b", b"ORCPT=rfc822;a+4"):
            self.assertRefused(parseRecipientParameters, [p])
        self.assertRefused(parseRecipientParameters, [b"ORCPT=rfc822;" + b"a" * 495])

    def test_unknownAndDuplicate(self):
        self.assertRefused(parseRecipientParameters, [b"SIZE=1"], 555)
        self.assertRefused(parseRecipientParameters, [b"NOTIFY=NEVER", b"NOTIFY=NEVER"])

    def test_keywordsTable(self):
        self.assertEqual(RCPT_KEYWORDS, frozenset({"NOTIFY", "ORCPT"}))
        self.assertIn("SIZE", MAIL_KEYWORDS)


_XTEXT_RE = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")


_xtexts = st.text(max_size=30).map(lambda s: xtextEncode(s).encode("ascii"))


class XtextTests(unittest.TestCase):
    def test_encode(self):
        self.assertEqual(xtextEncode("a+b=c d"), "a+2Bb+3Dc+20d")
        self.assertEqual(xtextEncode("caf\u00e9"), "caf+C3+A9")
        self.assertEqual(xtextEncode(""), "")

    def test_decode(self):
        self.assertEqual(xtextDecode("a+2Bb+3Dc+20d"), "a+b=c d")
        self.assertEqual(xtextDecode("plain"), "plain")

    def test_decodeRefusesMalformed(self):
        for bad in ("+", "+2", "+2b", "+ZZ", "a=b", "a b", "\u00e9", "a\x00"):
            with self.assertRaises(SMTPSyntaxError):
                xtextDecode(bad)

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=60))
    def test_roundTrip(self, s):
        encoded = xtextEncode(s)
        event("escapes" if "+" in encoded else "no escape")
        self.assertTrue(_XTEXT_RE.fullmatch(encoded), encoded)
        self.assertTrue(encoded.isascii())
        self.assertEqual(xtextDecode(encoded), s)

    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=40),
            mutated(_xtexts, [b"+", b"+2", b"+a", b"=", b" ", b"\x00", b"\x7f", b"F", b"0"]).map(
                lambda b: b.decode("latin-1")
            ),
        )
    )
    def test_decodeOnlySyntaxError(self, s):
        """Any ASCII text, random or damaged xtext: decoded to what encodes back to it, or refused with 501."""
        try:
            decoded = xtextDecode(s)
        except SMTPSyntaxError as e:
            event("xtext: refused")
            self.assertEqual(e.code, 501)
            self.assertIsNone(_XTEXT_RE.fullmatch(s))
        else:
            event("xtext: decoded")
            self.assertTrue(_XTEXT_RE.fullmatch(s))
            # The model: each +XX is the octet XX, every other character
            # stands for itself; the octets are read as UTF-8 where they are.
            octets = re.sub(rb"\+([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]), s.encode("ascii"))
            try:
                expected = octets.decode("utf-8")
            except UnicodeDecodeError:
                expected = octets.decode("latin-1")
            self.assertEqual(decoded, expected)
