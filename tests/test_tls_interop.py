"""
TLS and AUTH against real clients, with ``twistd -n smtp`` in a subprocess:

- swaks: STARTTLS with AUTH PLAIN, LOGIN and CRAM-MD5; ``--tls-on-connect``
  on the ``--listen-tls`` port; wrong passwords and AUTH before TLS;
- msmtp (GnuTLS, GNU SASL): SCRAM-SHA-256 over STARTTLS, PLAIN over
  implicit TLS, verifying the certificate chain and the name;
- ``openssl s_client -starttls smtp``: chain, versions, what EHLO offers
  under TLS;
- smtplib: ``--require-tls``, ``--listen ssl:...``, SIGHUP reload;
- the twistd options themselves (``--tls-cert``, ``--auth``, ``--help-auth``,
  bad certificates at start-up).

Certificates are made at test time (:mod:`tests.certs`); the server name
clients verify is ``localhost``.
"""

from __future__ import annotations

import base64
import os
import re
import smtplib
import socket
import sys
from typing import Any

from twisted.internet import threads
from twisted.python import usage
from twisted.trial import unittest

from tests.certs import certificates, copyServerFiles, fingerprint
from tests.peers import requirePeer
from tests.test_tls_auth import BlockingClient, clientContext
from tests.twistd_helpers import (
    TWISTD,
    RunningTwistd,
    childEnv,
    connectClient,
    maildirFiles,
    parseStored,
    readAll,
    runProcess,
    startTwistd,
)
from txsmtp.auth import DeliveryRealm
from txsmtp.tap import Options, makeService
from txsmtp.tls import ServerTLS

HELO = "client.test.invalid"
HOSTNAME = "mx.test.invalid"
USER = "alice"
PASSWORD = "Wonder-l4nd-pw"
LOOPBACK = "tcp:0:interface=127.0.0.1"

WRONG = "Wr0ng-pa55-qq9"


def assertNoPasswords(testCase: unittest.TestCase, log: str) -> None:
    """Neither password appears in the log, in clear or base64 (alone or in a PLAIN message)."""
    for secret in (PASSWORD, WRONG):
        for form in (
            secret,
            base64.b64encode(secret.encode()).decode(),
            base64.b64encode(f"\0{USER}\0{secret}".encode()).decode(),
        ):
            testCase.assertNotIn(form, log)


_IMPLICIT = r"txsmtp listening on .*?port=(\d+)\) \([^\n]*\(implicit TLS\)\)"


async def startTLSTwistd(
    testCase: unittest.TestCase,
    *extra: str,
    implicit: bool = False,
    cwd: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> tuple[RunningTwistd, int | None]:
    """
    ``twistd -n smtp --listen LOOPBACK [--listen-tls LOOPBACK] --tls-cert
    CHAIN --tls-key KEY --hostname mx.test.invalid *extra``; returns the
    process and the implicit TLS port (or None).
    """
    c = certificates()
    args = ["--hostname", HOSTNAME, "--tls-cert", cert or c.chain, "--tls-key", key or c.key]
    if implicit:
        args += ["--listen-tls", LOOPBACK]
    running = await startTwistd(testCase, *args, *extra, cwd=cwd)
    tlsPort = None
    if implicit:
        m = await running.waitForLog(_IMPLICIT)
        tlsPort = int(m.group(1))
        assert tlsPort != running.port, running.log
    return running, tlsPort


def storedMessages(running: RunningTwistd) -> list[Any]:
    maildir = running.path("Maildir")
    assert maildirFiles(maildir, "tmp") == [], maildirFiles(maildir, "tmp")
    return [parseStored(data) for data in readAll(maildirFiles(maildir))]


# -- swaks ------------------------------------------------------------------------------------------


class SwaksTLSTests(unittest.TestCase):
    """swaks (Net::SSLeay) against ``twistd smtp`` with TLS and AUTH."""

    timeout = 90

    async def swaks(self, port: int, *args: str) -> Any:
        swaks = requirePeer("swaks")
        return await runProcess(
            swaks,
            [
                "--server",
                f"127.0.0.1:{port}",
                "--helo",
                HELO,
                "--timeout",
                "20",
                "--to",
                "rcpt@example.com",
                "--from",
                "sender@example.com",
                *args,
            ],
            timeout=40,
        )

    def verifying(self) -> list[str]:
        return ["--tls-verify", "--tls-ca-path", certificates().ca]

    async def test_starttls_with_each_mechanism(self) -> None:
        """
        ``swaks -tls --auth PLAIN|LOGIN|CRAM-MD5`` with certificate
        verification: exit 0, one message each, Received: ... with ESMTPSA.
        """
        requirePeer("swaks")
        running, _ = await startTLSTwistd(
            self, "--auth", f"memory:{USER}:{PASSWORD}", "--require-auth"
        )
        for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5"]:
            result = await self.swaks(
                running.port,
                "-tls",
                *self.verifying(),
                "--auth",
                mechanism,
                "--auth-user",
                USER,
                "--auth-password",
                PASSWORD,
                "--header",
                f"Subject: {mechanism}",
                "--body",
                f"sent with {mechanism}",
            )
            self.assertEqual(result.code, 0, result.describe())
            transcript = result.out.decode("utf-8", "replace")
            self.assertIn("<-  220 2.0.0 Ready to start TLS", transcript)
            self.assertIn("<~  235 2.7.0 ", transcript)
            self.assertIn(f"~> AUTH {mechanism}", transcript)
        stored = storedMessages(running)
        self.assertEqual(len(stored), 3)
        self.assertEqual({s.withKeyword for s in stored}, {b"ESMTPSA"})
        self.assertEqual({s.heloName for s in stored}, {HELO.encode()})
        subjects = {re.search(rb"Subject: (\S+)", s.body).group(1) for s in stored}  # type: ignore[union-attr]
        self.assertEqual(subjects, {b"PLAIN", b"LOGIN", b"CRAM-MD5"})

    async def test_tls_on_connect(self) -> None:
        """
        ``swaks --tls-on-connect --auth PLAIN`` on the ``--listen-tls`` port:
        no STARTTLS offered, AUTH offered, ESMTPSA.
        """
        requirePeer("swaks")
        running, tlsPort = await startTLSTwistd(
            self, "--auth", f"memory:{USER}:{PASSWORD}", "--require-auth", implicit=True
        )
        assert tlsPort is not None
        result = await self.swaks(
            tlsPort,
            "--tls-on-connect",
            *self.verifying(),
            "--auth",
            "PLAIN",
            "--auth-user",
            USER,
            "--auth-password",
            PASSWORD,
            "--body",
            "over 465",
        )
        self.assertEqual(result.code, 0, result.describe())
        transcript = result.out.decode("utf-8", "replace")
        self.assertNotIn("STARTTLS", transcript)
        self.assertRegex(transcript, r"<~  250[- ]AUTH [A-Z0-9 -]*\bPLAIN\b")
        [stored] = storedMessages(running)
        self.assertEqual(stored.withKeyword, b"ESMTPSA")
        self.assertTrue(stored.body.endswith(b"over 465\r\n\r\n\r\n"), stored.body)

    async def test_refusals(self) -> None:
        """
        A wrong password gets 535 5.7.8 (swaks exit 28); AUTH is not offered
        before STARTTLS (exit 28, nothing sent); MAIL without AUTH gets 530
        5.7.0 with --require-auth (exit 23).  Nothing is stored.
        """
        requirePeer("swaks")
        running, _ = await startTLSTwistd(
            self, "--auth", f"memory:{USER}:{PASSWORD}", "--require-auth"
        )
        wrong = await self.swaks(
            running.port, "-tls", "--auth", "PLAIN", "--auth-user", USER, "--auth-password", WRONG
        )
        self.assertEqual(wrong.code, 28, wrong.describe())
        self.assertIn(b"535 5.7.8", wrong.out)
        clear = await self.swaks(
            running.port, "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD
        )
        self.assertEqual(clear.code, 28, clear.describe())
        self.assertNotIn(b"AUTH PLAIN", clear.out)
        anonymous = await self.swaks(running.port, "-tls")
        self.assertEqual(anonymous.code, 23, anonymous.describe())
        self.assertIn(b"530 5.7.0", anonymous.out)
        self.assertEqual(storedMessages(running), [])
        # The failure is logged with the user name, never with a password.
        self.assertIn(f"authentication failed for '{USER}' with PLAIN from 127.0.0.1", running.log)
        assertNoPasswords(self, running.log)


# -- msmtp ------------------------------------------------------------------------------------------


class MsmtpTests(unittest.TestCase):
    """msmtp (GnuTLS + GNU SASL) against ``twistd smtp``; it verifies the chain and the name."""

    timeout = 90

    async def msmtp(self, port: int, *args: str, password: str = PASSWORD) -> Any:
        msmtp = requirePeer("msmtp")
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        message = b"From: sender@example.com\nTo: rcpt@example.com\nSubject: msmtp\n\nhello from msmtp\n.dot line\n"
        return await runProcess(
            msmtp,
            [
                "--file=/dev/null",  # no system or user configuration
                "--host=localhost",
                f"--port={port}",
                f"--domain={HELO}",
                "--tls=on",
                f"--tls-trust-file={certificates().ca}",
                f"--user={USER}",
                f"--passwordeval=echo {password}",
                "--from=sender@example.com",
                "--timeout=20",
                "--debug",
                *args,
                "rcpt@example.com",
            ],
            stdin=message,
            env=dict(os.environ, HOME=home),
            timeout=40,
        )

    def assertStored(self, running: RunningTwistd) -> None:
        [stored] = storedMessages(running)
        self.assertEqual(stored.withKeyword, b"ESMTPSA")
        self.assertEqual(
            (stored.returnPath, stored.deliveredTo), (b"sender@example.com", [b"rcpt@example.com"])
        )
        self.assertEqual(stored.heloName, HELO.encode())
        self.assertTrue(
            stored.body.endswith(b"\r\n\r\nhello from msmtp\r\n.dot line\r\n"), stored.body
        )

    async def test_scram_sha256_over_starttls(self) -> None:
        """
        SCRAM-SHA-256 over STARTTLS with ``--auth file:`` (a checker with
        plaintext passwords): msmtp checks the server signature too.
        """
        requirePeer("msmtp")
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        with open(os.path.join(cwd, "passwd"), "w") as f:
            f.write(f"{USER}:{PASSWORD}\nbob:other\n")
        running, _ = await startTLSTwistd(self, "--auth", "file:passwd", "--require-auth", cwd=cwd)
        result = await self.msmtp(running.port, "--tls-starttls=on", "--auth=scram-sha-256")
        self.assertEqual(result.code, 0, result.describe())
        self.assertIn(b"AUTH SCRAM-SHA-256", result.err + result.out)
        self.assertStored(running)

    async def test_scram_wrong_password(self) -> None:
        requirePeer("msmtp")
        running, _ = await startTLSTwistd(
            self, "--auth", f"memory:{USER}:{PASSWORD}", "--require-auth"
        )
        result = await self.msmtp(
            running.port, "--tls-starttls=on", "--auth=scram-sha-256", password=WRONG
        )
        self.assertNotEqual(result.code, 0, result.describe())
        self.assertIn(b"535 5.7.8", result.err + result.out)
        self.assertEqual(storedMessages(running), [])
        self.assertIn(f"authentication failed for '{USER}' with SCRAM-SHA-256", running.log)
        assertNoPasswords(self, running.log)

    async def test_plain_over_implicit_tls(self) -> None:
        requirePeer("msmtp")
        running, tlsPort = await startTLSTwistd(
            self, "--auth", f"memory:{USER}:{PASSWORD}", "--require-auth", implicit=True
        )
        assert tlsPort is not None
        result = await self.msmtp(tlsPort, "--tls-starttls=off", "--auth=plain")
        self.assertEqual(result.code, 0, result.describe())
        self.assertStored(running)


# -- openssl s_client --------------------------------------------------------------------------------


class OpenSSLClientTests(unittest.TestCase):
    """``openssl s_client -starttls smtp``: what a TLS handshake with the server looks like."""

    timeout = 90

    async def s_client(
        self, port: int, *args: str, stdin: bytes = b"EHLO after.example\r\nQUIT\r\n"
    ) -> Any:
        openssl = requirePeer("openssl")
        return await runProcess(
            openssl,
            [
                "s_client",
                "-starttls",
                "smtp",
                "-name",
                HELO,
                "-connect",
                f"127.0.0.1:{port}",
                "-servername",
                "localhost",
                "-CAfile",
                certificates().ca,
                "-verify_hostname",
                "localhost",
                "-verify_return_error",
                "-ign_eof",
                "-showcerts",
                *args,
            ],
            stdin=stdin,
            timeout=30,
        )

    async def test_starttls_handshake(self) -> None:
        """
        The chain verifies against the root (the intermediate is sent) for the
        name localhost; TLS 1.3 by default, TLS 1.2 with an ECDHE AEAD
        cipher; TLS 1.1 is refused; under TLS, EHLO offers AUTH PLAIN and no
        STARTTLS.
        """
        requirePeer("openssl")
        running, _ = await startTLSTwistd(self, "--auth", f"memory:{USER}:{PASSWORD}")
        result = await self.s_client(running.port)
        out = result.out.decode("utf-8", "replace")
        self.assertEqual(result.code, 0, result.describe())
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertRegex(out, r"(?m)^ 0 s:.*CN ?= ?localhost")
        self.assertRegex(out, r"(?m)^ 1 s:.*CN ?= ?txsmtp test intermediate CA")
        self.assertRegex(out, r"(?m)^New, TLSv1\.3, Cipher is TLS_")
        # s_client prints what the server says once TLS is up: the EHLO sent
        # inside TLS is answered without STARTTLS, and with AUTH.
        ehlo = re.findall(r"(?m)^250[- ](.*?)\r?$", out)
        self.assertIn(f"{HOSTNAME} Hello after.example [127.0.0.1]", ehlo, out)
        self.assertNotIn("STARTTLS", ehlo)
        self.assertIn("AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN", ehlo)
        self.assertRegex(out, r"(?m)^221 2\.0\.0 ")

        tls12 = await self.s_client(running.port, "-tls1_2")
        out12 = tls12.out.decode("utf-8", "replace")
        self.assertEqual(tls12.code, 0, tls12.describe())
        self.assertRegex(
            out12,
            r"(?m)^New, TLSv1\.2, Cipher is ECDHE-ECDSA-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)$",
        )

        old = await self.s_client(running.port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
        self.assertNotEqual(old.code, 0, old.describe())
        self.assertIn(b"no peer certificate available", old.out)
        self.assertIn(b"Cipher is (NONE)", old.out)
        # The server said no (a protocol_version alert), not the client.
        self.assertRegex(old.err.decode("utf-8", "replace"), r"alert protocol version")
        # The server is fine afterwards.
        again = await self.s_client(running.port)
        self.assertEqual(again.code, 0, again.describe())


# -- smtplib and twistd options ----------------------------------------------------------------------


class TwistdTLSTests(unittest.TestCase):
    """``twistd smtp`` TLS options end to end (smtplib and raw clients)."""

    timeout = 90

    async def test_require_tls(self) -> None:
        """``--require-tls``: MAIL before STARTTLS gets 530 5.7.0; after it, mail goes through (ESMTPS)."""
        running, _ = await startTLSTwistd(self, "--require-tls")
        client = await connectClient(self, running.port)
        [ehlo] = await client.command(b"EHLO " + HELO.encode())
        self.assertIn("STARTTLS", ehlo.lines)
        [mail] = await client.command(b"MAIL FROM:<a@example.com>")
        self.assertEqual((mail.code, mail.enhanced), (530, "5.7.0"))
        self.assertIn("STARTTLS", mail.text)

        def send() -> dict[str, Any]:
            with smtplib.SMTP("127.0.0.1", running.port, local_hostname=HELO, timeout=20) as c:
                c.starttls(context=clientContext())
                return c.sendmail(
                    "a@example.com", ["b@example.com"], b"Subject: tls\r\n\r\nrequired\r\n"
                )

        self.assertEqual(await threads.deferToThread(send), {})
        [stored] = storedMessages(running)
        self.assertEqual(stored.withKeyword, b"ESMTPS")
        self.assertEqual(stored.body, b"Subject: tls\r\n\r\nrequired\r\n")

    async def test_listen_ssl_endpoint(self) -> None:
        """
        ``--listen ssl:...`` (Twisted's own TLS endpoint, no --tls-cert):
        the session knows it is under TLS, so AUTH PLAIN is offered and
        works and Received: says ESMTPSA.
        """
        c = certificates()
        listen = f"ssl:0:interface=127.0.0.1:privateKey={c.key}:certKey={c.leafOnly}:extraCertChain={c.intermediate}"
        running = await startTwistd(
            self,
            "--hostname",
            HOSTNAME,
            "--auth",
            f"memory:{USER}:{PASSWORD}",
            "--require-auth",
            listen=listen,
        )

        def send() -> tuple[str, dict[str, Any]]:
            with smtplib.SMTP_SSL(
                "127.0.0.1", running.port, local_hostname=HELO, context=clientContext(), timeout=20
            ) as s:
                s.ehlo()
                auth = s.esmtp_features.get("auth", "")
                assert not s.has_extn("starttls"), s.esmtp_features
                s.user, s.password = USER, PASSWORD
                s.auth("PLAIN", s.auth_plain)
                return auth, s.sendmail(
                    "a@example.com", ["b@example.com"], b"Subject: ssl\r\n\r\nendpoint\r\n"
                )

        auth, refused = await threads.deferToThread(send)
        self.assertIn("PLAIN", auth.split())
        self.assertEqual(refused, {})
        [stored] = storedMessages(running)
        self.assertEqual(stored.withKeyword, b"ESMTPSA")

    async def test_sighup_reloads_certificate(self) -> None:
        """
        SIGHUP re-reads --tls-cert and --tls-key: new connections get the
        new certificate, an open one carries on; a broken file is logged
        and the last good certificate stays in service.
        """
        c = certificates()
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        certPath, keyPath = copyServerFiles(cwd, "main")
        running, tlsPort = await startTLSTwistd(
            self, cwd=cwd, cert=certPath, key=keyPath, implicit=True
        )
        assert tlsPort is not None
        opened: list[BlockingClient] = []
        self.addCleanup(lambda: [client.close() for client in opened])

        def starttlsFingerprint(keep: bool = False) -> str:
            client = BlockingClient(running.port, timeout=20)
            client.read()
            client.command(b"EHLO " + HELO.encode())
            assert client.command(b"STARTTLS").code == 220
            client.startTLS()
            der = client.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
            if keep:
                opened.append(client)
            else:
                client.close()
            return fingerprint(der)

        def implicitFingerprint() -> str:
            with clientContext().wrap_socket(
                socket.create_connection(("127.0.0.1", tlsPort), timeout=20),
                server_hostname="localhost",
            ) as s:
                return fingerprint(s.getpeercert(binary_form=True))

        self.assertEqual(await threads.deferToThread(starttlsFingerprint, True), c.leafSHA256)
        self.assertEqual(await threads.deferToThread(implicitFingerprint), c.leafSHA256)

        copyServerFiles(cwd, "other")
        running.process.signal("HUP")
        await running.waitForLog(r"TLS certificate reloaded from .*cert\.pem")
        self.assertEqual(await threads.deferToThread(starttlsFingerprint), c.otherSHA256)
        self.assertEqual(await threads.deferToThread(implicitFingerprint), c.otherSHA256)

        def useOld() -> list[int]:
            client = opened[0]
            return [client.command(b"EHLO " + HELO.encode()).code, client.command(b"QUIT").code]

        self.assertEqual(await threads.deferToThread(useOld), [250, 221])

        with open(keyPath, "wb") as f:
            f.write(b"not a key\n")
        running.process.signal("HUP")
        await running.waitForLog(r"TLS certificate reload failed, keeping the old one: .*key\.pem")
        self.assertEqual(await threads.deferToThread(starttlsFingerprint), c.otherSHA256)
        self.assertTrue(running.process.running)

    async def test_bad_certificate_at_startup(self) -> None:
        """A bad --tls-cert/--tls-key stops twistd at once with a message that says why; nothing listens."""
        c = certificates()
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        garbage = os.path.join(cwd, "garbage.pem")
        with open(garbage, "wb") as f:
            f.write(b"this is not PEM\n")
        cases = [
            (
                ["--tls-cert", c.chain, "--tls-key", c.wrongKey],
                r"--tls-cert: .*chain\.pem and .*wrong-key\.pem do not work together",
            ),
            (
                ["--tls-cert", os.path.join(cwd, "missing.pem")],
                r"--tls-cert: cannot read .*missing\.pem",
            ),
            (
                ["--tls-cert", garbage, "--tls-key", c.key],
                r"--tls-cert: .*garbage\.pem holds no PEM certificate",
            ),
            (
                ["--tls-cert", c.chain, "--tls-key", c.leafOnly],
                r"--tls-cert: .*leaf\.pem: no usable PEM private key",
            ),
            (["--listen-tls", LOOPBACK], r"--listen-tls needs --tls-cert"),
            (["--require-tls"], r"--require-tls needs --tls-cert"),
            (["--tls-key", c.key], r"--tls-key needs --tls-cert"),
        ]
        for args, message in cases:
            result = await runProcess(
                sys.executable,
                [
                    *TWISTD[1:],
                    "-n",
                    "--pidfile=",
                    "--logfile=-",
                    "smtp",
                    "--listen",
                    LOOPBACK,
                    *args,
                ],
                cwd=cwd,
                env=childEnv(),
                timeout=30,
            )
            text = (result.out + result.err).decode("utf-8", "replace")
            self.assertEqual(result.code, 1, f"{args}: {result.describe()}")
            self.assertRegex(text, message, args)
            self.assertNotIn("txsmtp listening", text)
            self.assertNotIn("Traceback", text)

    async def test_help_auth(self) -> None:
        """``--help-auth`` lists the checkers --auth takes (those that give plaintext passwords)."""
        result = await runProcess(
            sys.executable,
            [*TWISTD[1:], "-n", "--pidfile=", "smtp", "--help-auth"],
            env=childEnv(),
            timeout=30,
        )
        self.assertEqual(result.code, 0, result.describe())
        text = result.out.decode()
        self.assertRegex(text, r"(?m)^\s+memory\s")
        self.assertRegex(text, r"(?m)^\s+file\s")
        detail = await runProcess(
            sys.executable,
            [*TWISTD[1:], "-n", "--pidfile=", "smtp", "--help-auth-type", "memory"],
            env=childEnv(),
            timeout=30,
        )
        self.assertEqual(detail.code, 0, detail.describe())
        self.assertIn("memory", detail.out.decode())


class OptionsTests(unittest.TestCase):
    """txsmtp.tap.Options and makeService for the TLS and AUTH options (in process)."""

    def setUp(self) -> None:
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.cwd)

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(["--listen", LOOPBACK, *args])
        return options

    def test_factory_settings(self) -> None:
        c = certificates()
        options = self.parse(
            "--tls-cert",
            c.chain,
            "--tls-key",
            c.key,
            "--listen-tls",
            LOOPBACK,
            "--require-tls",
            "--require-auth",
            "--allow-insecure-auth",
            "--auth",
            f"memory:{USER}:{PASSWORD}",
        )
        self.assertIsInstance(options["tls"], ServerTLS)
        service = makeService(options)
        f = service.factory
        self.assertIs(f.tls, options["tls"])
        self.assertEqual((f.requireTLS, f.requireAuth, f.allowInsecureAuth), (True, True, True))
        self.assertIsInstance(f.portal.realm, DeliveryRealm)
        self.assertEqual(len(list(service)), 2)  # the plain and the implicit TLS listener

    def test_defaults(self) -> None:
        f = makeService(self.parse()).factory
        self.assertEqual(
            (f.tls, f.portal, f.requireTLS, f.requireAuth, f.allowInsecureAuth),
            (None, None, False, False, False),
        )

    def test_tls_key_defaults_to_cert_file(self) -> None:
        options = self.parse("--tls-cert", certificates().combined)
        self.assertEqual(options["tls"].keyPath, certificates().combined)

    def test_usage_errors(self) -> None:
        c = certificates()
        for args in [
            ["--require-auth"],
            ["--tls-cert", c.chain, "--tls-key", c.wrongKey],
            ["--listen-tls", LOOPBACK],
            ["--require-tls"],
            ["--auth", "nosuchchecker:x"],
        ]:
            with self.assertRaises(usage.UsageError, msg=args):
                self.parse(*args)

    def test_memory_checker_users_are_bytes(self) -> None:
        """--auth memory:U:P: the checker matches the bytes credentials the mechanisms make."""
        from twisted.cred.credentials import UsernamePassword

        options = self.parse("--auth", f"memory:{USER}:{PASSWORD}", "--allow-insecure-auth")
        [checker] = options["credCheckers"]
        avatarId = self.successResultOf(
            checker.requestAvatarId(UsernamePassword(USER.encode(), PASSWORD.encode()))
        )
        self.assertEqual(avatarId, USER.encode())
