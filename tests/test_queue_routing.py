"""
Tests for :mod:`txsmtp.queue.routing`: the order of the rules (route, local
domain, relay host, MX), domains compared without regard to case and in
IDNA form, and the parsers of ``--route`` and ``--relay-host`` with their
readable errors.
"""

from __future__ import annotations

from twisted.trial import unittest

from txsmtp.queue.model import NextHop
from txsmtp.queue.routing import Router, hostPort, parseRelayHost, parseRoute


class RouterTests(unittest.TestCase):
    def test_mxByDefault(self) -> None:
        """With no rule, a domain's mail goes to its MX hosts, the domain lowercased."""
        router = Router()
        self.assertEqual(router.route("alice@Example.COM"), NextHop("mx", "example.com"))
        self.assertEqual(router.route("bob@example.com."), NextHop("mx", "example.com"))

    def test_idnaForms(self) -> None:
        """A U-label domain and its A-label form are one domain, for every rule."""
        router = Router(localDomains={"Bücher.example"})
        for address in ("a@bücher.example", "a@BÜCHER.example", "a@xn--bcher-kva.example"):
            self.assertEqual(router.route(address), NextHop("local", ""), address)
        self.assertTrue(router.isLocal("xn--bcher-kva.example"))
        self.assertEqual(Router().route("a@bücher.example"), NextHop("mx", "xn--bcher-kva.example"))

    def test_order(self) -> None:
        """A route wins over a local domain, a local domain over the relay host, the relay host over MX."""
        lmtp = parseRoute("example.com=lmtp:unix:/run/dovecot/lmtp")[1]
        smart = parseRelayHost("[smtp.example.net]:587")
        router = Router(
            localDomains=frozenset({"EXAMPLE.com", "example.org"}),
            routes={"example.com": lmtp},
            relayHost=smart,
        )
        self.assertEqual(router.route("a@example.com"), lmtp)
        self.assertEqual(router.route("a@Example.Org"), NextHop("local", ""))
        self.assertEqual(router.route("a@elsewhere.example"), smart)
        self.assertTrue(router.isLocal("example.com"))
        self.assertTrue(router.hasRoute("EXAMPLE.COM"))
        self.assertFalse(router.hasRoute("example.org"))
        self.assertFalse(router.isLocal("elsewhere.example"))

    def test_noDomainIsLocal(self) -> None:
        """The bare postmaster (RFC 5321 §4.5.1) has no domain: local, even with a relay host."""
        router = Router(relayHost=parseRelayHost("[smtp.example.net]"))
        self.assertEqual(router.route("postmaster"), NextHop("local", ""))

    def test_addressLiteral(self) -> None:
        """An address literal goes to MX delivery as written (txsmtp.mx needs no DNS for it)."""
        self.assertEqual(Router().route("a@[192.0.2.1]"), NextHop("mx", "[192.0.2.1]"))

    def test_badDomains(self) -> None:
        """A local domain that is not a domain name is refused in a sentence."""
        for bad in ("", "a b.example", "a@b.example", "x" * 64 + ".example"):
            with self.assertRaises(ValueError) as caught:
                Router(localDomains=[bad])
            self.assertNotIn("Traceback", str(caught.exception))
        with self.assertRaises(TypeError):
            Router(localDomains="example.com")  # type: ignore[arg-type]

    def test_badDomainOfAnAddress(self) -> None:
        """An address whose domain cannot be encoded still gets a hop, compared as text."""
        hop = Router().route("a@" + "x" * 64 + ".example")
        self.assertEqual(hop.kind, "mx")


class ParseTests(unittest.TestCase):
    def test_relayHost(self) -> None:
        """[HOST]:PORT, [HOST], HOST:PORT; TLS required and AUTH by default."""
        hop = parseRelayHost("[smtp.example.com]:587")
        self.assertEqual(hop, NextHop("smtp", "[smtp.example.com]:587", (("tls", "require"), ("auth", True))))
        self.assertEqual(hop.key, "smtp:[smtp.example.com]:587")
        self.assertEqual(parseRelayHost("[SMTP.example.com]").destination, "[smtp.example.com]:25")
        self.assertEqual(parseRelayHost("smtp.example.com:2525").destination, "[smtp.example.com]:2525")
        self.assertEqual(parseRelayHost("[IPv6:2001:DB8::1]:25").destination, "[2001:db8::1]:25")
        self.assertEqual(parseRelayHost("[2001:db8::1]").destination, "[2001:db8::1]:25")
        self.assertEqual(parseRelayHost("[192.0.2.1]:465", tls="verify").option("tls"), "verify")

    def test_relayHostErrors(self) -> None:
        cases = {
            "": "no host given",
            "[smtp.example.com:587": "closing ']'",
            "[smtp.example.com]587": "unexpected",
            "[smtp.example.com]:0": "not a port number",
            "[smtp.example.com]:http": "not a port number",
            "2001:db8::1": "in brackets",
            "[IPv6:zz::1]": "not an IPv6 address",
        }
        for text, words in cases.items():
            with self.assertRaises(ValueError) as caught:
                parseRelayHost(text)
            self.assertIn(words, str(caught.exception), text)
        with self.assertRaises(ValueError) as caught:
            parseRelayHost("[smtp.example.com]", tls="maybe")
        self.assertIn("require, verify, opportunistic, none", str(caught.exception))

    def test_routes(self) -> None:
        self.assertEqual(
            parseRoute("Example.com=smtp:[10.0.0.1]:25"),
            ("example.com", NextHop("smtp", "[10.0.0.1]:25", (("tls", "opportunistic"),))),
        )
        self.assertEqual(
            parseRoute("example.com=lmtp:unix:/run/dovecot/lmtp"),
            ("example.com", NextHop("lmtp", "unix:/run/dovecot/lmtp", (("tls", "none"),))),
        )
        self.assertEqual(
            parseRoute("bücher.example=lmtp:[127.0.0.1]:24"),
            ("xn--bcher-kva.example", NextHop("lmtp", "[127.0.0.1]:24", (("tls", "none"),))),
        )
        self.assertEqual(parseRoute("example.com=LMTP:[mail.example.com]")[1].destination, "[mail.example.com]:24")
        self.assertEqual(parseRoute("example.com=smtp:[10.0.0.1]", tls="require")[1].option("tls"), "require")

    def test_routeErrors(self) -> None:
        cases = {
            "example.com": "DOMAIN=smtp:[HOST]:PORT",
            "=smtp:[10.0.0.1]:25": "domain is empty",
            "example.com=http://x": "smtp: or lmtp:",
            "example.com=lmtp:unix:run/lmtp": "absolute path",
            "example.com=smtp:[10.0.0.1]:99999": "not a port number",
            "exa mple.com=smtp:[10.0.0.1]": "not a domain name",
        }
        for text, words in cases.items():
            with self.assertRaises(ValueError) as caught:
                parseRoute(text)
            self.assertIn(words, str(caught.exception), text)

    def test_hostPort(self) -> None:
        self.assertEqual(hostPort("[smtp.example.com]:587"), ("smtp.example.com", 587))
        self.assertEqual(hostPort("[2001:db8::1]:25"), ("2001:db8::1", 25))
