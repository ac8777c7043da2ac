"""Envelope.toDict / fromDict: what a store or queue keeps survives."""

from __future__ import annotations

import json

from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from txsmtp.envelope import Envelope
from txsmtp.testing import ServerHarness
from txsmtp.wire.params import xtextEncode


def stored(commands: bytes) -> Envelope:
    h = ServerHarness()
    replies = h.send(b"EHLO client.example\r\n" + commands + b"DATA\r\nx\r\n.\r\n")
    assert replies[-1].code == 250, replies
    return h.delivery.messages[0].envelope


class EnvelopeDictTests(unittest.TestCase):
    def test_roundTripThroughJSON(self) -> None:
        """DSN parameters and the rest survive a trip through JSON."""
        env = stored(
            b"MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=ab+2Bc\r\n"
            b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+2Bb@example.com\r\n"
            b"RCPT TO:<Postmaster>\r\n"
        )
        data = json.loads(json.dumps(env.toDict()))
        back = Envelope.fromDict(data)
        self.assertEqual(back.toDict(), env.toDict())
        self.assertEqual(back.parameters.ret, "HDRS")
        self.assertEqual(back.parameters.envid, "ab+c")
        self.assertEqual(back.parameters.size, 100)
        b, pm = back.recipients
        self.assertEqual(b.parameters.notify, ("SUCCESS", "FAILURE"))
        self.assertEqual(b.parameters.orcpt, ("rfc822", "orig+b@example.com"))
        self.assertEqual(str(pm.address), "Postmaster")
        self.assertEqual(back.queueId, env.queueId)
        self.assertEqual(back.connection.peerHost, "192.0.2.7")
        self.assertEqual(back.connection.heloName, "client.example")

    def test_nullSenderAndUTF8(self) -> None:
        env = stored(b"MAIL FROM:<> SMTPUTF8\r\nRCPT TO:<j\xc3\xb6rg@b\xc3\xbccher.example>\r\n")
        back = Envelope.fromDict(json.loads(json.dumps(env.toDict())))
        self.assertIsNone(back.sender)
        self.assertEqual(back.returnPath, "<>")
        self.assertTrue(back.parameters.smtputf8)
        self.assertEqual(str(back.recipients[0].address), "j\u00f6rg@b\u00fccher.example")

    @settings(max_examples=50, deadline=None)
    @given(
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30),
        st.sampled_from([("NEVER",), ("SUCCESS",), ("DELAY", "FAILURE"), None]),
    )
    def test_dsnValuesSurvive(self, envid: str, notify: tuple[str, ...] | None) -> None:
        encoded = xtextEncode(envid).encode("ascii")
        # ENVID is at most 100 characters (RFC 3461 §4.4); the server refuses longer.
        assume(len(encoded) <= 100)
        event("envid: with escapes" if b"+" in encoded else "envid: plain xtext")
        rcpt = b"RCPT TO:<b@example.com>"
        if notify:
            rcpt += b" NOTIFY=" + ",".join(notify).encode()
        env = stored(b"MAIL FROM:<a@example.com> ENVID=" + encoded + b"\r\n" + rcpt + b"\r\n")
        back = Envelope.fromDict(json.loads(json.dumps(env.toDict())))
        self.assertEqual(back.parameters.envid, envid)
        self.assertEqual(back.recipients[0].parameters.notify, notify)
