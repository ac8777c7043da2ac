"""The sender login map (:mod:`txsmtp.queue.senders`): the file and its lookups."""

from __future__ import annotations

import os

from twisted.trial import unittest

from txsmtp.queue.senders import SenderLoginMap, normalizeAddress, normalizeDomain


class SenderLoginMapTests(unittest.TestCase):
    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_fromFile(self) -> None:
        """Comments, blank lines, repeated users, addresses and @domains."""
        path = self.write(
            "# who sends as what\n"
            "\n"
            "alice: alice@example.com, a.liddell@example.com\n"
            "  bob@example.org :bob@example.org,@lists.example.org  \n"
            "alice: @wonderland.example.\n"
        )
        m = SenderLoginMap.fromFile(path)
        self.assertEqual(m.users(), ["alice", "bob@example.org"])
        allowed = [
            ("alice", "alice@example.com"),
            ("ALICE", "A.Liddell@EXAMPLE.com"),
            ("alice", "queen@wonderland.example"),
            ("alice", "queen@wonderland.example."),
            ("bob@example.org", "bob@example.org"),
            ("Bob@Example.org", "announce@lists.example.org"),
        ]
        for user, address in allowed:
            self.assertTrue(m.allows(user, address), (user, address))
        refused = [
            ("alice", "bob@example.org"),
            ("alice", "alice@example.com.evil.test"),
            ("alice", "queen@sub.wonderland.example"),
            ("bob@example.org", "alice@example.com"),
            ("carol", "carol@example.com"),
            ("alice", "alice"),
            ("bob@example.org", "x@example.org"),
        ]
        for user, address in refused:
            self.assertFalse(m.allows(user, address), (user, address))

    def test_bad_files(self) -> None:
        """Bad lines name the file, the line and what to write."""
        cases = [
            ("alice alice@example.com\n", ["line 1", "expected 'user: address"]),
            ("\n\nalice:\n", ["line 3", "no address"]),
            ("alice: alice@example.com bob@example.com\n", ["line 1", "space", "commas"]),
            ("alice: alice\n", ["not an address"]),
            ("alice: @\n", ["not a domain"]),
            ("alice: @a@b\n", ["not a domain"]),
            (": x@y\n", ["expected"]),
        ]
        for text, words in cases:
            path = self.write(text)
            with self.assertRaises(ValueError) as cm:
                SenderLoginMap.fromFile(path)
            message = str(cm.exception)
            self.assertIn(os.path.basename(path), message)
            for word in words:
                self.assertIn(word, message, text)

    def test_unreadable(self) -> None:
        with self.assertRaises(ValueError) as cm:
            SenderLoginMap.fromFile("/nonexistent/senders")
        self.assertIn("cannot read the sender login map /nonexistent/senders", str(cm.exception))

    def test_normalize(self) -> None:
        self.assertEqual(normalizeDomain("Example.COM."), "example.com")
        self.assertEqual(normalizeAddress('"A@B"@Example.COM.'), '"a@b"@example.com')
        self.assertEqual(normalizeAddress("Postmaster"), "postmaster")
        self.assertEqual(normalizeDomain("Bücher.Example"), "xn--bcher-kva.example")
        m = SenderLoginMap({"alice": ["@xn--bcher-kva.example", "chef@bücher.example"]})
        self.assertTrue(m.allows("alice", "x@BÜCHER.example"))
        self.assertTrue(m.allows("alice", "chef@xn--bcher-kva.example"))
