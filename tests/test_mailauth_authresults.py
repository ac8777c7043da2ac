"""
Tests for :mod:`txsmtp.mailauth.authresults`.  What :func:`formatHeader`
writes is read back by an independent RFC 8601 parser, the ``authres``
package (the oracle; a test dependency only).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.trial import unittest

from tests.peers import PEERS_REQUIRED
from txsmtp.mailauth.authresults import authservIdOf, formatHeader, formatValue, isOwnField
from txsmtp.mailauth.results import AuthenticationResults, MethodResult

try:
    import authres
except ImportError:  # pragma: no cover - the test extra installs it
    authres = None


def requireOracle() -> None:
    """Skip without authres, unless TXSMTP_REQUIRE_PEERS=1 makes that a failure."""
    if authres is None:
        message = "the authres package (pip install authres; the test extra) is not installed"
        if PEERS_REQUIRED:
            raise AssertionError(message + "; TXSMTP_REQUIRE_PEERS=1 makes this a failure")
        raise unittest.SkipTest(message)


def _unquote(text: str | None) -> str | None:
    """authres leaves quoted-pairs as written: undo them."""
    if text is None:
        return None
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1]
    return re.sub(r"\\(.)", r"\1", text)


class FormatTests(unittest.TestCase):
    def setUp(self) -> None:
        requireOracle()

    def parse(self, field: bytes) -> Any:
        self.assertTrue(field.endswith(b"\r\n"))
        self.assertNotIn(b"\r\n", field[:-2].replace(b"\r\n\t", b""), "every line break is a fold")
        return authres.AuthenticationResultsHeader.parse(field.decode("utf-8"))

    def roundTrip(self, results: AuthenticationResults, **kw: Any) -> list[tuple[Any, ...]]:
        field = formatHeader(results, **kw)
        parsed = self.parse(field)
        self.assertEqual(parsed.authserv_id, results.authservId)
        return [
            (
                r.method,
                r.result,
                _unquote(r.reason),
                tuple((f"{p.type}.{p.name}", p.value) for p in r.properties),
            )
            for r in parsed.results
        ]

    def test_typical(self) -> None:
        """SPF, DKIM and DMARC read back as written, in order."""
        results = AuthenticationResults(
            "mx.example.com",
            [
                MethodResult("spf", "pass", None, (("smtp.mailfrom", "user@example.org"),)),
                MethodResult(
                    "dkim",
                    "pass",
                    None,
                    (("header.d", "example.org"), ("header.s", "sel-2024"), ("header.b", "Abc/dEf+g")),
                ),
                MethodResult("dmarc", "pass", None, (("header.from", "example.org"),)),
            ],
        )
        self.assertEqual(
            self.roundTrip(results),
            [
                ("spf", "pass", None, (("smtp.mailfrom", "user@example.org"),)),
                ("dkim", "pass", None, (("header.d", "example.org"), ("header.s", "sel-2024"), ("header.b", "Abc/dEf+g"))),
                ("dmarc", "pass", None, (("header.from", "example.org"),)),
            ],
        )
        field = formatHeader(results)
        self.assertTrue(field.startswith(b"Authentication-Results: mx.example.com;\r\n\tspf=pass "))
        # header.b holds tspecials ("/"): it must be quoted; an address need not be.
        self.assertIn(b'header.b="Abc/dEf+g"', field)
        self.assertIn(b"smtp.mailfrom=user@example.org;", field)

    def test_none(self) -> None:
        """No results: "; none" (§2.2 no-result)."""
        field = formatHeader(AuthenticationResults("mx.example.com"))
        self.assertEqual(field, b"Authentication-Results: mx.example.com; none\r\n")
        parsed = self.parse(field)
        self.assertEqual((parsed.authserv_id, parsed.results), ("mx.example.com", []))

    def test_reasonQuoted(self) -> None:
        """A reason is a quoted string, quotes and backslashes escaped, before the properties."""
        reason = 'DNS said "no" \\ (twice); see =here='
        results = AuthenticationResults(
            "mx.example.com", [MethodResult("dmarc", "temperror", reason, (("header.from", "example.org"),))]
        )
        self.assertEqual(self.roundTrip(results), [("dmarc", "temperror", reason, (("header.from", "example.org"),))])
        self.assertIn(b'reason="DNS said \\"no\\" \\\\ (twice); see =here=" header.from=example.org', formatHeader(results).replace(b"\r\n\t ", b" "))

    def test_specialValues(self) -> None:
        """Values with spaces, tspecials or odd local parts are quoted so they read back whole."""
        results = AuthenticationResults(
            "mx.example.com",
            [
                MethodResult(
                    "spf",
                    "fail",
                    None,
                    (("smtp.mailfrom", "odd local@example.org"), ("smtp.helo", "a;b=c")),
                ),
                MethodResult("dkim", "neutral", None, (("header.i", "@example.org"), ("header.s", "x(y)"))),
            ],
        )
        self.assertEqual(
            self.roundTrip(results),
            [
                ("spf", "fail", None, (("smtp.mailfrom", '"odd local"@example.org'), ("smtp.helo", "a;b=c"))),
                ("dkim", "neutral", None, (("header.i", "@example.org"), ("header.s", "x(y)"))),
            ],
        )

    def test_formatValue(self) -> None:
        self.assertEqual(formatValue("example.org"), "example.org")
        self.assertEqual(formatValue("a b"), '"a b"')
        self.assertEqual(formatValue('say "x"'), '"say \\"x\\""')
        self.assertEqual(formatValue("user+tag@example.org", address=True), "user+tag@example.org")
        self.assertEqual(formatValue("user@example.org"), '"user@example.org"')
        self.assertEqual(formatValue("a..b@example.org", address=True), '"a..b"@example.org')
        self.assertEqual(formatValue("x@not a domain", address=True), '"x@not a domain"')

    def test_folding(self) -> None:
        """Long results fold between words: every line under 78 characters, and the whole reads back."""
        signatures = [
            MethodResult(
                "dkim",
                "pass",
                "signature verified",
                (("header.d", f"d{i}.example.org"), ("header.s", "selector2024"), ("header.b", "ABCDEFGH" * 5)),
            )
            for i in range(3)
        ]
        results = AuthenticationResults("mx.example.com", signatures)
        field = formatHeader(results)
        lines = field.split(b"\r\n")
        self.assertEqual(lines[-1], b"")
        self.assertGreater(len(lines), 6)
        for line in lines[1:-1]:
            self.assertLess(len(line), 78, line)
            self.assertIn(line[:1], (b"\t",))
        self.assertEqual(len(self.roundTrip(results)), 3)

    def test_longWordStaysWhole(self) -> None:
        """A word longer than a line is not cut (a quoted string cannot be folded without changing it)."""
        b = "x" * 200
        results = AuthenticationResults("mx.example.com", [MethodResult("dkim", "pass", None, (("header.b", b),))])
        self.assertEqual(self.roundTrip(results), [("dkim", "pass", None, (("header.b", b),))])

    def test_asciiOnly(self) -> None:
        """Without SMTPUTF8: A-labels for domains, "?" for other non-ASCII; with it, UTF-8."""
        results = AuthenticationResults(
            "mx.example.com",
            [MethodResult("spf", "pass", "café", (("smtp.mailfrom", "josé@bücher.example"),))],
        )
        field = formatHeader(results)
        self.assertTrue(field.isascii())
        self.assertEqual(
            self.roundTrip(results), [("spf", "pass", "caf?", (("smtp.mailfrom", '"jos?"@xn--bcher-kva.example'),))]
        )
        utf8 = formatHeader(results, smtputf8=True)
        self.assertIn("café".encode(), utf8)
        self.assertIn("bücher.example".encode(), utf8)
        # authres reads ASCII only (no RFC 6532 quoted strings): the bytes are checked here.
        self.assertEqual(
            utf8,
            'Authentication-Results: mx.example.com;\r\n\tspf=pass reason="café"'
            ' smtp.mailfrom="josé"@bücher.example\r\n'.encode(),
        )

    def test_noInjection(self) -> None:
        """Line breaks and control characters in a reason or value cannot start a new field."""
        results = AuthenticationResults(
            "mx.example.com",
            [MethodResult("spf", "fail", "bad\r\nBcc: x@evil.example", (("smtp.mailfrom", "a\r\nX: y@example.org\x00"),))],
        )
        field = formatHeader(results)
        self.assertNotIn(b"\r\nBcc", field)
        self.assertNotIn(b"\r\nX:", field)
        self.assertNotIn(b"\x00", field)
        self.assertEqual(
            self.roundTrip(results),
            [("spf", "fail", "bad  Bcc: x@evil.example", (("smtp.mailfrom", "a  X: y@example.org?"),))],
        )

    def test_badKeywords(self) -> None:
        """A method, result or property that is no keyword is a programming error."""
        for result in (
            MethodResult("sp f", "pass"),
            MethodResult("spf", "pass;"),
            MethodResult("spf", "pass", None, (("mailfrom", "x"),)),
        ):
            with self.assertRaises(ValueError):
                formatHeader(AuthenticationResults("mx.example.com", [result]))


class AuthservIdTests(unittest.TestCase):
    def test_plain(self) -> None:
        self.assertEqual(authservIdOf(b" mx.example.com; spf=pass smtp.mailfrom=a@b.example"), "mx.example.com")
        self.assertEqual(authservIdOf(b"mx.example.com 1; none"), "mx.example.com")
        self.assertEqual(authservIdOf(b"mx.example.com;none"), "mx.example.com")

    def test_commentsAndFolding(self) -> None:
        """CFWS first: folding, nested comments with quoted-pairs, then the id."""
        value = b' (a comment (nested, with \\) inside) still)\r\n\t(another)mx.example.com (trailing); none'
        self.assertEqual(authservIdOf(value), "mx.example.com")

    def test_quoted(self) -> None:
        self.assertEqual(authservIdOf(b' "mx.example.com"; none'), "mx.example.com")
        self.assertEqual(authservIdOf(b' "odd \\"id\\""; none'), 'odd "id"')

    def test_unreadable(self) -> None:
        for value in (b"", b"   ", b" (never closed; mx.example.com", b' "never closed', b" ; spf=pass", b" (only)"):
            self.assertIsNone(authservIdOf(value), value)

    def test_oracleAgrees(self) -> None:
        """On fields written by formatHeader, authservIdOf and authres read the same id."""
        requireOracle()
        for servId in ("mx.example.com", "odd id; really"):
            field = formatHeader(AuthenticationResults(servId, [MethodResult("spf", "none")]))
            value = field.split(b":", 1)[1]
            self.assertEqual(authservIdOf(value), servId)


class IsOwnFieldTests(unittest.TestCase):
    def test_own(self) -> None:
        """The name and id match without regard to case, folding and comments before the id."""
        for raw in (
            b"Authentication-Results: mx.example.com; spf=pass smtp.mailfrom=a@b.example\r\n",
            b"authentication-results: MX.Example.COM; none\r\n",
            b"AUTHENTICATION-RESULTS : (forged)\r\n\t(nested (comment))\r\n mx.example.com;\r\n\tdkim=pass\r\n",
            b'Authentication-Results: "mx.example.com"; none',
            b"Authentication-Results:\n mx.example.com; none\n",
        ):
            self.assertTrue(isOwnField(raw, "mx.example.com"), raw)

    def test_notOwn(self) -> None:
        for raw in (
            b"Authentication-Results: mx.example.net; spf=pass\r\n",
            b"Authentication-Results: mx.example.com.evil.example; none\r\n",
            b"Authentication-Results: (mx.example.com) other.example; none\r\n",
            b"X-Authentication-Results: mx.example.com; none\r\n",
            b"Received: from mx.example.com; Mon, 7 Dec 2026\r\n",
            b"Authentication-Results mx.example.com; none\r\n",
            b"Authentication-Results: (mx.example.com; none\r\n",
        ):
            self.assertFalse(isOwnField(raw, "mx.example.com"), raw)

    def test_roundTrip(self) -> None:
        """The field formatHeader writes is recognised as the server's own, and not another's."""
        field = formatHeader(
            AuthenticationResults(
                "mx.example.com",
                [MethodResult("dkim", "pass", "good", (("header.d", "example.org"), ("header.b", "x" * 90)))],
            )
        )
        self.assertTrue(isOwnField(field, "MX.example.com"))
        self.assertFalse(isOwnField(field, "mx2.example.com"))
