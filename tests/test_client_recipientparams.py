"""
The client's per-recipient DSN parameters (``recipientParams``, RFC 3461
§4: each recipient's own NOTIFY and ORCPT, as a relay passes them on) and
:attr:`~txsmtp.client.SendResult.dsn`, against txsmtp's own server, which
offers DSN and keeps what each RCPT carried.
"""

from __future__ import annotations

from twisted.trial import unittest

from txsmtp.client import OutgoingMessage, SMTPAddressError, TLSPolicy, sendmail
from txsmtp.testing import runServer

RECIPIENTS = ["one@example.org", "two@example.org", "three@example.org"]


class PrepareTests(unittest.TestCase):
    def test_eachRecipientItsOwn(self) -> None:
        job = OutgoingMessage.prepare(
            "me@example.com",
            RECIPIENTS,
            b"x\r\n",
            recipientParams=[(["success", "failure"], "rfc822;a+b@example.net"), (["NEVER"], None), (None, None)],
        )
        self.assertEqual(
            list(job.rcptDSN),
            [b" NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@example.net", b" NOTIFY=NEVER", b""],
        )

    def test_noneGiven(self) -> None:
        """Pairs that are all None add nothing: the RCPT lines are plain."""
        job = OutgoingMessage.prepare("me@example.com", RECIPIENTS[:2], b"x", recipientParams=[(None, None)] * 2)
        self.assertEqual(tuple(job.rcptDSN), ())

    def test_errors(self) -> None:
        with self.assertRaises(ValueError) as caught:
            OutgoingMessage.prepare("me@example.com", RECIPIENTS, b"x", recipientParams=[(None, None)])
        self.assertIn("1 entries for 3 recipients", str(caught.exception))
        with self.assertRaises(ValueError):
            OutgoingMessage.prepare(
                "me@example.com", RECIPIENTS[:1], b"x", notify=["NEVER"], recipientParams=[(None, None)]
            )
        with self.assertRaises(SMTPAddressError):
            OutgoingMessage.prepare("me@example.com", RECIPIENTS[:1], b"x", recipientParams=[(["NEVER", "DELAY"], None)])


class WireTests(unittest.TestCase):
    timeout = 30

    async def test_perRecipientOnTheWire(self) -> None:
        """The server keeps each recipient's own NOTIFY and ORCPT; the result says DSN was offered."""
        server = runServer(self)
        result = await sendmail(
            "127.0.0.1",
            "me@example.com",
            RECIPIENTS,
            b"Subject: dsn\r\n\r\nx\r\n",
            port=server.port,
            tls=TLSPolicy.NONE,
            heloName="client.test.invalid",
            ret="HDRS",
            recipientParams=[(["SUCCESS"], "rfc822;orig@example.net"), (["NEVER"], None), (None, None)],
        )
        self.assertTrue(result.dsn)
        self.assertEqual(result.accepted, RECIPIENTS)
        [stored] = server.delivery.messages
        params = [r.parameters for r in stored.envelope.recipients]
        self.assertEqual([p.notify for p in params], [("SUCCESS",), ("NEVER",), None])
        self.assertEqual([p.orcpt for p in params], [("rfc822", "orig@example.net"), None, None])
        self.assertEqual(stored.envelope.parameters.ret, "HDRS")
