"""
docs/authentication.rst and the TLS policy section of docs/relay.rst say
what txsmtp does, and their examples work as printed:

- the shell commands that make DKIM keys and compute ``p=`` are run as
  printed (with ``openssl``), the keys they make are loaded by ``--dkim``
  and sign a message that an independent verifier (dkimpy) accepts with
  the record the page tells you to publish;
- every ``twistd ... smtp ...`` command line of the pages is parsed by
  ``twistd smtp``'s option parser, with those key files;
- the records the pages tell you to publish (SPF, DMARC, MTA-STS) are read
  by txsmtp's own parsers, and the SPF record gives ``pass`` to the
  addresses it is said to allow, asked over real DNS;
- the two ``Authentication-Results:`` fields printed are the ones the
  inbound checks write for the message described (only the signature's
  ``header.b`` differs), the ``550 5.7.1`` reply of ``--dmarc-reject`` is
  the one printed, and the Python delivery example files mail by those
  results, the envelope going through the queue's form and the queue's
  own local delivery code.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import textwrap
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.trial import unittest

from tests.certs import certificates
from tests.dnsserver import startDNSServer
from tests.peers import requirePeer
from tests.test_docs import rstBlocks
from tests.test_docs_relay import commandLines, parseCommand, readPage
from txsmtp.dkimsign import DKIMSigner
from txsmtp.envelope import ConnectionInfo, Envelope
from txsmtp.errors import SMTPError
from txsmtp.mailauth import dmarc, spfrecord
from txsmtp.mailauth.inbound import CheckingFilter, InboundChecks
from txsmtp.mailauth.signing import parseDKIMOption
from txsmtp.mailauth.spf import checkSender
from txsmtp.queue.model import QueuedMessage, QueuedRecipient
from txsmtp.queue.outboundlocal import deliverLocal
from txsmtp.tap import Options
from txsmtp.tapmailauth import mailAuthSummary
from txsmtp.tlspolicy import mtasts
from txsmtp.wire.address import parsePath

try:
    import dkim
except ImportError:  # pragma: no cover
    dkim = None

_REACTOR: Any = reactor

#: The DER SubjectPublicKeyInfo of every RSA 2048 key starts so, in base64.
RSA_2048_PREFIX = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"


def literalBlocks(text: str) -> list[str]:
    """Every ``::`` literal block of ``text``, dedented."""
    blocks = re.findall(r"::\n\n((?:(?: {4}.*)?\n)+)", text)
    return [textwrap.dedent(b).strip("\n") + "\n" for b in blocks]


def blockAfter(text: str, marker: str) -> str:
    """The literal block after the first ``marker``."""
    start = text.index(marker)
    return literalBlocks(text[start:])[0]


def section(text: str, title: str) -> str:
    """The text of a section, from its title to the next title of its level or above."""
    order = "=-~"
    headings = [
        (m.start(), m.group(1), order.index(m.group(2)))
        for m in re.finditer(r"^(.+)\n([=~-])\2{3,}$", text, re.M)
    ]
    [(start, _, level)] = [h for h in headings if h[1] == title]
    after = [h[0] for h in headings if h[0] > start and h[2] <= level]
    return text[start : after[0] if after else len(text)]


def unfold(field: str) -> str:
    """A header field on one line, white space runs made one space, ``header.b`` blanked."""
    text = " ".join(field.replace("\r\n", "\n").split())
    return re.sub(r'header\.b=(?:"[^"]*"|[^;\s]+)', "header.b=X", text)


def zoneTXT(block: str) -> dict[str, str]:
    """The TXT records of a zone file block: owner (no final dot) to text (strings joined)."""
    records = {}
    lines: list[str] = []
    for line in block.splitlines():
        if lines and lines[-1].count("(") > lines[-1].count(")"):
            lines[-1] += " " + line.strip()  # a record continued in parentheses
        else:
            lines.append(line)
    for line in lines:
        m = re.match(r"(\S+)\s+(?:\d+\s+)?IN\s+TXT\s+(.*)$", line)
        if m:
            records[m.group(1).rstrip(".")] = "".join(re.findall(r'"([^"]*)"', m.group(2)))
    return records


def runShell(block: str, base: str) -> str:
    """Run ``block`` (shell commands) with /etc/txsmtp moved under ``base``; its output."""
    script = block.replace("/etc/txsmtp", os.path.join(base, "etc/txsmtp"))
    done = subprocess.run(["sh", "-e", "-c", script], capture_output=True, timeout=120, check=False)
    if done.returncode:
        raise AssertionError(f"{block!r} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode("ascii")


class Keys:
    """The DKIM keys made by the page's own commands, and their published records."""

    def __init__(self, testCase: unittest.TestCase) -> None:
        requirePeer("openssl")
        text = readPage("authentication.rst")
        blocks = literalBlocks(section(text, "DKIM signing"))
        self.base = os.path.abspath(testCase.mktemp())
        made = [b for b in blocks if "openssl genpkey" in b]
        testCase.assertEqual(len(made), 2, made)
        for block in made:
            runShell(block, self.base)
        publish = [b for b in blocks if b.startswith("openssl pkey")]
        testCase.assertEqual(len(publish), 2, publish)
        self.rsaValue = runShell(publish[0], self.base).strip()
        self.edValue = runShell(publish[1], self.base).strip()
        self.text = text

    def path(self, documented: str) -> str:
        return documented.replace("/etc/txsmtp", os.path.join(self.base, "etc/txsmtp"))


class DKIMKeyCommandsTests(unittest.TestCase):
    def setUp(self) -> None:
        if dkim is None:
            raise unittest.SkipTest("dkimpy is needed (pip install '.[test]')")
        self.keys = Keys(self)

    def test_keyFilesPrivate(self) -> None:
        """``umask 077`` leaves the key files readable by their owner alone."""
        for name in ("example.com.2026a.pem", "example.org.2026a.pem"):
            mode = os.stat(self.keys.path(f"/etc/txsmtp/dkim/{name}")).st_mode & 0o777
            self.assertEqual(mode, 0o600, name)

    def test_recordsAsDescribed(self) -> None:
        """The ``p=`` values have the length and start the page gives."""
        self.assertEqual(len(self.keys.rsaValue), 392)
        self.assertTrue(self.keys.rsaValue.startswith(RSA_2048_PREFIX))
        self.assertIn(f"``{RSA_2048_PREFIX}``", self.keys.text)
        self.assertEqual(len(self.keys.edValue), 44)

    def check(self, domain: str, record: str, algorithm: bytes) -> None:
        key = parseDKIMOption(
            f"{domain}:2026a:{self.keys.path(f'/etc/txsmtp/dkim/{domain}.2026a.pem')}"
        )
        message = (
            f"From: Alice <alice@{domain}>\r\nTo: bob@example.net\r\nSubject: keys\r\n"
            "Date: Mon, 7 Dec 2026 04:00:00 +0000\r\n\r\nSigned with the documented key.\r\n"
        ).encode()
        signer = DKIMSigner(key.domain, key.selector, key.pem, timestamp=1796616000)
        signer.feed(message)
        signed = signer.signature() + message
        self.assertIn(b"a=" + algorithm + b";", signed)
        published = {f"2026a._domainkey.{domain}."}

        def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
            self.assertIn(name.decode(), published)
            return record.encode()

        self.assertTrue(dkim.verify(signed, dnsfunc=dnsfunc))

    def test_rsa(self) -> None:
        """The RSA key signs; dkimpy verifies with ``v=DKIM1; k=rsa; p=`` and the command's output."""
        self.assertIn("``v=DKIM1; k=rsa; p=``", self.keys.text)
        self.check("example.com", "v=DKIM1; k=rsa; p=" + self.keys.rsaValue, b"rsa-sha256")

    def test_ed25519(self) -> None:
        """The Ed25519 key signs; dkimpy verifies with the raw 32 octets as ``p=`` (RFC 8463)."""
        self.assertIn("``v=DKIM1; k=ed25519; p=``", self.keys.text)
        self.check("example.org", "v=DKIM1; k=ed25519; p=" + self.keys.edValue, b"ed25519-sha256")

    def test_zoneExampleShape(self) -> None:
        """The zone file example's Ed25519 record is a well-formed key record, in one string."""
        records = zoneTXT(blockAfter(self.keys.text, "In a zone file"))
        value = records["2026a._domainkey.example.org"]
        self.assertRegex(value, r"^v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=$")
        self.assertTrue(
            records["2026a._domainkey.example.com"].startswith(
                "v=DKIM1; k=rsa; p=" + RSA_2048_PREFIX
            )
        )


class DocumentedCommandsTests(unittest.TestCase):
    """Every twistd command line of the pages parses, with the key files the page's commands made."""

    def setUp(self) -> None:
        self.keys = Keys(self)
        c = certificates()
        base = self.keys.base
        vhosts = os.path.join(base, "vhosts")
        os.makedirs(vhosts)
        passwd = os.path.join(base, "passwd")
        with open(passwd, "w") as f:
            f.write("alice:Wonder-l4nd-pw\n")
        self.paths = {
            "/etc/txsmtp/tls/fullchain.pem": c.chain,
            "/etc/txsmtp/tls/privkey.pem": c.key,
            "/etc/txsmtp/passwd": passwd,
            "/var/mail/vhosts": vhosts,
            "/var/spool/txsmtp": os.path.join(base, "spool"),
            "/etc/txsmtp/dkim": self.keys.path("/etc/txsmtp/dkim"),
        }

    def parse(self, words: list[str]) -> Options:
        return parseCommand(words, self.paths)

    def test_authenticationPage(self) -> None:
        commands = commandLines(readPage("authentication.rst"))
        self.assertEqual(len(commands), 3)
        parsed = [self.parse(words) for words in commands]
        for options in parsed:
            self.assertIsNotNone(options["relaySetup"])
        signing, several, checking = parsed
        self.assertEqual(
            [(k.domain, k.selector) for k in signing["dkim"]], [("example.com", "2026a")]
        )
        self.assertFalse(signing["verify-inbound"])
        self.assertEqual(
            [(k.domain, k.selector) for k in several["dkim"]],
            [("example.com", "2026a"), ("example.org", "2026a")],
        )
        self.assertIn(
            "DKIM signing for example.com (2026a), example.org (2026a)", mailAuthSummary(several)
        )
        self.assertTrue(checking["verify-inbound"])
        self.assertFalse(checking["dmarc-reject"])
        self.assertEqual(checking["dkim"], [])
        self.assertEqual(checking["relaySetup"].dnsServer, ("127.0.0.1", 53))

    def test_relayPageDANE(self) -> None:
        """The DANE command line: the loopback resolver, MTA-STS still on; the start-up line as quoted."""
        text = readPage("relay.rst")
        commands = [w for w in commandLines(text) if "--dane" in w]
        self.assertEqual(len(commands), 1)
        options = self.parse(commands[0])
        self.assertEqual(options["daneResolver"], ("127.0.0.1", 53))
        summary = mailAuthSummary(options)
        self.assertIn("MTA-STS on", summary)
        self.assertIn("DANE through 127.0.0.1:53", summary)
        self.assertIn("``DANE through\n127.0.0.1:53``", text)

    def test_daneNeedsLoopback(self) -> None:
        """What the page says: a resolver off loopback stops the start."""
        from twisted.python import usage

        text = readPage("relay.rst")
        [words] = [w for w in commandLines(text) if "--dane" in w]
        words = [w.replace("127.0.0.1:53", "192.0.2.53:53") for w in words]
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(words)
        self.assertIn("loopback", str(caught.exception))


class UnboundConfigurationTests(unittest.TestCase):
    def test_checkconf(self) -> None:
        """The minimal unbound.conf of docs/relay.rst is one unbound accepts (its trust anchor file made here)."""
        checkconf = requirePeer("unbound-checkconf")
        conf = blockAfter(readPage("relay.rst"), "``/etc/unbound/unbound.conf``")
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        anchor = os.path.join(base, "root.key")
        with open(anchor, "w") as f:
            # The root zone's key-signing key (2017), as a DS record.
            f.write(
                ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n"
            )
        path = os.path.join(base, "unbound.conf")
        with open(path, "w") as f:
            f.write(conf.replace("/var/lib/unbound/root.key", anchor))
        done = subprocess.run([checkconf, path], capture_output=True, timeout=60, check=False)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("interface: 127.0.0.1", conf)


class PublishedRecordsTests(unittest.TestCase):
    """The records the pages tell you to publish are read as meant."""

    def setUp(self) -> None:
        self.text = readPage("authentication.rst")
        self.records = zoneTXT(blockAfter(self.text, "whose MX is ``mx.example.com``"))

    def test_dmarc(self) -> None:
        record = dmarc.parseRecord(self.records["_dmarc.example.com"])
        self.assertEqual(record.policy, "none")
        self.assertEqual(record.rua, ("mailto:dmarc-reports@example.com",))

    async def test_spf(self) -> None:
        """The SPF records, served by a real DNS server: the listed addresses pass, others fail; HELO names too."""
        for name in ("example.com", "mx.example.com", "smtp.example.com"):
            spfrecord.parseRecord(self.records[name])
        zones = {
            "example.com": {"TXT": [self.records["example.com"]], "MX": [(10, "mx.example.com")]},
            "mx.example.com": {"TXT": [self.records["mx.example.com"]], "A": ["192.0.2.25"]},
            "smtp.example.com": {"TXT": [self.records["smtp.example.com"]], "A": ["192.0.2.25"]},
        }
        server = startDNSServer(self, zones)
        resolver = server.resolver()
        for ip in ("192.0.2.25", "2001:db8::25"):
            result = await checkSender(resolver, ip, "alice@example.com", "smtp.example.com")
            self.assertEqual(result.result, "pass", (ip, result))
        other = await checkSender(resolver, "203.0.113.9", "alice@example.com", "smtp.example.com")
        self.assertEqual(other.result, "fail")
        bounce = await checkSender(resolver, "192.0.2.25", None, "smtp.example.com")
        self.assertEqual(
            (bounce.result, bounce.get("smtp.mailfrom")), ("pass", "postmaster@smtp.example.com")
        )

    def test_mtaSTS(self) -> None:
        """The MTA-STS policy file and TXT record of docs/relay.rst parse, with the meaning the page gives."""
        text = readPage("relay.rst")
        body = blockAfter(text, "public authority::")
        policy = mtasts.parsePolicy(body.encode(), "20261207T0000")
        self.assertEqual(
            (policy.mode, policy.mx, policy.maxAge), ("testing", ("mx.example.com",), 604800)
        )
        records = zoneTXT(blockAfter(text, "or senders keep the old one"))
        self.assertEqual(mtasts.parseRecord(records["_mta-sts.example.com"]), "20261207T0000")
        decision = mtasts.selectMX(policy, ["mx.example.com", "backup.example.net"], "example.com")
        self.assertEqual(decision.mismatched, ("backup.example.net",))
        self.assertIn("result=validation-failure mode=testing", decision.logLines[0])


class _Receiver:
    def __init__(self) -> None:
        self.data = b""

    def write(self, chunk: bytes) -> None:
        self.data += chunk

    def finish(self) -> None:
        return None

    def abort(self, reason: str) -> None:
        pass


MESSAGE = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: lunch\r\n"
    b"Date: Mon, 7 Dec 2026 04:00:00 +0000\r\nMessage-ID: <lunch@example.org>\r\n\r\nNoon?\r\n"
)


class InboundExamplesTests(unittest.TestCase):
    """The fields, the reply and the delivery of the "Checking incoming mail" section."""

    def setUp(self) -> None:
        self.text = readPage("authentication.rst")
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        import base64

        # What the page says example.org publishes.
        zones = {
            "example.org": {"TXT": ["v=spf1 ip4:198.51.100.0/24 -all"]},
            "2026a._domainkey.example.org": {
                "TXT": ["v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()]
            },
            "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject"]},
        }
        self.assertIn("``v=spf1 ip4:198.51.100.0/24 -all`` and\n``v=DMARC1; p=reject``", self.text)
        self.dns = startDNSServer(self, zones)

    async def check(self, client: str, sign: bool, dmarcReject: bool = False) -> Envelope:
        checks = InboundChecks(
            self.dns.resolver(), "mx.example.com", _REACTOR, dmarcReject=dmarcReject
        )
        connection = ConnectionInfo(IPv4Address("TCP", client, 40000))
        connection.heloName = "mail.example.org"
        envelope = Envelope(parsePath(b"<alice@example.org>"), connection=connection, queueId="Q1")
        data = MESSAGE
        if sign:
            pem = self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            signer = DKIMSigner("example.org", "2026a", pem, timestamp=int(_REACTOR.seconds()))
            signer.feed(data)
            data = signer.signature() + data
        receiver = CheckingFilter(_Receiver(), envelope, checks)
        receiver.write(data)
        await receiver.finish()
        return envelope

    def printed(self, marker: str) -> str:
        return unfold(blockAfter(self.text, marker))

    async def test_passField(self) -> None:
        envelope = await self.check("198.51.100.7", sign=True)
        self.assertEqual(
            unfold(envelope.addedHeaders[-1].decode()), self.printed("``mx.example.com`` adds::")
        )

    async def test_failField(self) -> None:
        envelope = await self.check("203.0.113.9", sign=False)
        self.assertEqual(
            unfold(envelope.addedHeaders[-1].decode()), self.printed("without a signature::")
        )
        assert envelope.authentication is not None
        self.assertEqual(envelope.authentication.dmarcPolicy, "reject")

    async def test_dmarcRejectReply(self) -> None:
        with self.assertRaises(SMTPError) as caught:
            await self.check("203.0.113.9", sign=False, dmarcReject=True)
        e = caught.exception
        self.assertEqual(f"{e.code} {e.enhanced} {e.text}", self.printed("and never queued::"))

    async def test_junkDelivery(self) -> None:
        """The delivery example, fed through the queue's local delivery: DMARC failures in .Junk, the rest in new/."""
        namespace: dict[str, Any] = {"__name__": "junk"}
        [code] = rstBlocks("authentication.rst")
        exec(compile(code, "docs/authentication.rst", "exec"), namespace)
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "example.com", "bob"))
        delivery = namespace["JunkDelivery"](root, threads=0)
        self.addCleanup(delivery.stop)
        passed = await self.check("198.51.100.7", sign=True)
        failed = await self.check("203.0.113.9", sign=False)
        unchecked = Envelope(parsePath(b"<alice@example.org>"), queueId="Q3")  # a user's own mail
        for n, envelope in enumerate((passed, failed, unchecked)):
            message = QueuedMessage(
                f"m{n}", "alice@example.org", 0.0, len(MESSAGE), envelope.toDict()
            )
            [result] = await deliverLocal(
                delivery, message, [QueuedRecipient(0, "bob@example.com")], io.BytesIO(MESSAGE)
            )
            self.assertEqual(result.result.name, "DELIVERED", result)
        bob = os.path.join(root, "example.com", "bob")
        self.assertEqual(len(os.listdir(os.path.join(bob, "new"))), 2)
        [junk] = os.listdir(os.path.join(bob, ".Junk", "new"))
        with open(os.path.join(bob, ".Junk", "new", junk), "rb") as f:
            self.assertTrue(f.read().endswith(MESSAGE))
