"""
The ``twistd smtp`` command lines of docs/relay.rst and of the complete
mail server in docs/deployments.rst (its systemd units included) are
accepted by ``twistd smtp``'s option parser and turn the relay on.

The files the commands name are made for the test: a certificate and its
key (:mod:`tests.certs`), a password file, the sender login map exactly as
docs/deployments.rst prints it, relay credentials, the mailbox root and
the queue directories.  The options parser checks them (a certificate
that loads, a readable map, an existing mailbox root), so a command that
passes here starts as written, given those files.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Any

from twisted.trial import unittest

from tests.certs import certificates
from txsmtp.tap import Options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readPage(name: str) -> str:
    with open(os.path.join(ROOT, "docs", name), encoding="utf-8") as f:
        return f.read()


def commandLines(text: str) -> list[list[str]]:
    """
    The arguments after ``smtp`` of every ``twistd`` command in a literal
    block of ``text`` (indented lines; ``ExecStart=`` lines of unit files
    too), backslash continuations joined.
    """
    commands = []
    for m in re.finditer(r"^ +(?:ExecStart=\S*)?twistd\b(?:[^\n]*\\\n)*[^\n]*$", text, re.M):
        words = shlex.split(m.group(0).replace("\\\n", " ").split("twistd", 1)[1])
        commands.append(words[words.index("smtp") + 1 :])
    return commands


def parseCommand(words: list[str], paths: dict[str, str]) -> Options:
    """``twistd smtp``'s options from a documented command line, its example paths replaced by ``paths``."""
    out = []
    for word in words:
        for documented, real in paths.items():
            word = word.replace(documented, real)
        out.append(word)
    options = Options()
    options.parseOptions(out)
    return options


def literalAfter(text: str, marker: str) -> str:
    """The literal block that follows ``marker::``, dedented."""
    m = re.search(re.escape(marker) + r"::\n\n((?: {4}.*\n|\n)+)", text)
    assert m is not None, f"no literal block after {marker!r}"
    return "".join(line[4:] + "\n" for line in m.group(1).splitlines()).strip() + "\n"


def senderLoginMap(path: str) -> Any:
    from txsmtp.queue.senders import SenderLoginMap

    return SenderLoginMap.fromFile(path)


class DocumentedCommandsTests(unittest.TestCase):
    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        c = certificates()

        def write(name: str, content: str) -> str:
            path = os.path.join(base, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(content)
            return path

        deployments = readPage("deployments.rst")
        senders = literalAfter(deployments, "saying who owns which address")
        self.senders = write("senders", senders)
        vhosts = os.path.join(base, "vhosts")
        os.makedirs(vhosts)
        self.paths = {
            "/etc/txsmtp/tls/fullchain.pem": c.chain,
            "/etc/txsmtp/tls/privkey.pem": c.key,
            "/etc/txsmtp/passwd": write("passwd", "alice:Wonder-l4nd-pw\n"),
            "/etc/txsmtp/senders": self.senders,
            "/etc/txsmtp/relay-credentials": write("relay-credentials", "smtpuser:s3cret\n"),
            "/var/mail/vhosts": vhosts,
            "/var/spool/txsmtp": os.path.join(base, "spool"),
        }

    def parse(self, words: list[str]) -> Options:
        return parseCommand(words, self.paths)

    def test_relayPage(self) -> None:
        commands = commandLines(readPage("relay.rst"))
        self.assertGreaterEqual(len(commands), 3)
        for words in commands:
            options = self.parse(words)
            self.assertIsNotNone(options["relaySetup"], words)
        smartHost = [w for w in commands if "--relay-host" in w]
        self.assertTrue(smartHost)
        setup = self.parse(smartHost[0])["relaySetup"]
        self.assertEqual(setup.relayHost.destination, "[smtp.provider.example]:587")
        self.assertEqual(setup.relayHost.option("tls"), "require")
        self.assertEqual(setup.credentials, ("smtpuser", "s3cret"))
        routed = [w for w in commands if "--route" in w]
        setup = self.parse(routed[0])["relaySetup"]
        self.assertEqual(setup.routes["example.com"].kind, "lmtp")

    def test_completeMailServer(self) -> None:
        text = readPage("deployments.rst")
        section = text[
            text.index("A complete mail server\n") : text.index(".. _deployments-haproxy:")
        ]
        commands = commandLines(section)
        # The MX and the submission process, as commands and as unit files.
        self.assertEqual(len(commands), 4)
        for words in commands:
            setup = self.parse(words)["relaySetup"]
            self.assertEqual(setup.localDomains, ["example.com"])
            # Nobody relays by address: the MX relays nothing, submission only after AUTH.
            self.assertEqual(setup.policy.relayNetworks, ())
        queues = {self.parse(words)["relaySetup"].queue for words in commands}
        self.assertEqual(len(queues), 2, "one queue directory per process")
        submission = [w for w in commands if "--require-auth" in w]
        self.assertEqual(len(submission), 2)
        for words in submission:
            self.assertIsNotNone(self.parse(words)["relaySetup"].policy.senderLogins)

    def test_senderMapAsPrinted(self) -> None:
        logins = senderLoginMap(self.senders)
        self.assertTrue(logins.allows("alice", "alice@example.com"))
        self.assertTrue(logins.allows("alice", "postmaster@example.com"))
        self.assertFalse(logins.allows("bob", "alice@example.com"))
        relayMap = literalAfter(
            readPage("relay.rst"), "line (Postfix's ``smtpd_sender_login_maps``)"
        )
        path = os.path.join(os.path.dirname(self.senders), "relay-senders")
        with open(path, "w", encoding="utf-8") as f:
            f.write(relayMap)
        logins = senderLoginMap(path)
        self.assertTrue(logins.allows("bob@example.org", "anyone@lists.example.org"))
        self.assertFalse(logins.allows("alice", "bob@example.org"))

    def test_postgresqlNodes(self) -> None:
        """The nodes sharing one PostgreSQL queue: one queue, one name each, the same routing."""
        text = readPage("deployments.rst")
        section = text[text.index(".. _deployments-postgresql:") :]
        commands = commandLines(section)
        self.assertEqual(len(commands), 3)  # mx1, mx2, and mx1's unit file
        setups = [self.parse(words)["relaySetup"] for words in commands]
        for setup in setups:
            self.assertTrue(setup.shared)
            self.assertEqual(setup.queue, "postgresql://txsmtp@10.0.0.20/txsmtp")
            self.assertEqual((setup.lease, setup.localDomains), (300.0, ["example.com"]))
            self.assertEqual(setup.routes["example.com"].kind, "lmtp")
        self.assertEqual([s.node for s in setups], ["mx1", "mx2", "mx1"])
