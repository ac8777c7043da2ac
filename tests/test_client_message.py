"""
A message as the client sends it (:mod:`txsmtp.client.message`): the
one-piece encoder agrees with the incremental one, and checked paths are
remembered without remembering refusals.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from txsmtp.client import OutgoingMessage, SMTPAddressError
from txsmtp.client import message as messageModule
from txsmtp.client.message import encodeWhole
from txsmtp.wire.data import DataEncoder

#: Bytes rich in what matters: CR, LF, dots, and a letter.
texts = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"a", b"\xff"]), max_size=40).map(b"".join)


class EncodeWholeTests(unittest.TestCase):
    @settings(max_examples=2000, deadline=None)
    @given(message=texts, dotStuffing=st.booleans())
    def test_sameAsDataEncoder(self, message: bytes, dotStuffing: bool) -> None:
        """encodeWhole(m) is DataEncoder's encode(m) + finish(), for DATA and for BDAT."""
        encoder = DataEncoder(dotStuffing=dotStuffing)
        body, tail = encodeWhole(message, dotStuffing)
        self.assertEqual(body + tail, encoder.encode(message) + encoder.finish())

    def test_examples(self) -> None:
        self.assertEqual(b"".join(encodeWhole(b"")), b".\r\n")
        self.assertEqual(b"".join(encodeWhole(b".a\nb\r.c")), b"..a\r\nb\r\n..c\r\n.\r\n")
        self.assertEqual(b"".join(encodeWhole(b".a\r\n", dotStuffing=False)), b".a\r\n")


class PathCacheTests(unittest.TestCase):
    def test_refusedNotRemembered(self) -> None:
        with self.assertRaises(SMTPAddressError):
            OutgoingMessage.prepare("a@example.com", ["bad\r\nRSET"], b"x")
        self.assertNotIn("bad\r\nRSET", messageModule._recipientPaths)
        with self.assertRaises(SMTPAddressError):
            OutgoingMessage.prepare("a@example.com", ["bad\r\nRSET"], b"x")

    def test_bounded(self) -> None:
        for i in range(messageModule._PATHS_MAX + 10):
            OutgoingMessage.prepare(f"s{i}@example.com", [f"r{i}@example.com"], b"x")
        self.assertLessEqual(len(messageModule._recipientPaths), messageModule._PATHS_MAX)
        self.assertLessEqual(len(messageModule._senderPaths), messageModule._PATHS_MAX)

    def test_fastPathSameAsSlow(self) -> None:
        """Bytes without DSN take a shorter path to the same OutgoingMessage."""
        for body in (b"plain", "Subject: caf\u00e9\r\n\r\nx".encode(), b"x\xff"):
            fast = OutgoingMessage.prepare("a@example.com", ["b@example.com"], body)
            slow = OutgoingMessage.prepare("a@example.com", ["b@example.com"], bytearray(body))
            self.assertEqual(fast, slow)
