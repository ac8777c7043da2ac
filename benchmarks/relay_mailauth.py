"""
The ``--mailauth`` relays of the relay benchmark (benchmarks/relay.py):
the plain ``txsmtp`` relay again, signing or verifying every message, in
the same interleaved rounds, so that the difference is the cost per
message of signing and of verifying.

``txsmtp-dkim``
    ``--dkim example.org:sel:KEY`` (RSA 2048), smtp-source's envelope
    sender and ``From:`` in example.org, the client in
    ``--relay-networks``: every message signed as it streams in.
``txsmtp-dkim-ed`` (with ``--ed25519``)
    The same with an Ed25519 key.
``txsmtp-verify``
    ``--verify-inbound --dns-server 127.0.0.1:PORT``, no
    ``--relay-networks`` (the client may not relay: its mail is
    checked), the recipient's domain routed (``--route``) over LMTP to a
    second smtp-sink (``-L``): mail from a client that may not relay is
    taken only for local domains and domains routed over LMTP.
    smtp-source sends (``-F``) one message signed by dkimpy before the
    runs (RSA 2048, relaxed/relaxed), its body ``--size`` octets, from
    example.org.  The DNS server (benchmarks/relay_dns.py, a process of
    its own) serves example.org's SPF (``ip4:127.0.0.1 -all``), its DKIM
    key and its DMARC record (``p=reject``): each message gets an SPF
    check, a DKIM verification with its key lookup, and DMARC, three
    DNS queries over UDP (no cache in the relay's resolver).

The twistd logs are read after the runs: signing failures are counted,
and for ``txsmtp-verify`` how many messages had ``spf=pass dkim=pass
dmarc=pass``, so that a figure is never that of a check that failed.

Not part of the tests; see benchmarks/README.md.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import re
import subprocess
import sys

from _bench import BenchError
from relay_nodes import RECIPIENT, Sink, Txsmtp

HERE = os.path.dirname(os.path.abspath(__file__))
DOMAIN, SELECTOR = "example.org", "sel"
SENDER = f"sender@{DOMAIN}"
RECIPIENT_DOMAIN = RECIPIENT.split("@", 1)[1]
NAMES = ("txsmtp-dkim", "txsmtp-dkim-ed", "txsmtp-verify")


def writeKey(path: str, kind: str) -> bytes:
    """A fresh private key in PEM at ``path``; return its DKIM key record."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    with open(path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.chmod(path, 0o644)
    return f"v=DKIM1; k={kind}; p=".encode() + base64.b64encode(public)


def signedMessageFile(path: str, keyPath: str, record: bytes, bodySize: int) -> None:
    """
    A message from example.org signed by dkimpy, written for smtp-source
    ``-F`` (lines ending in LF: it sends each with CRLF); checked first.
    """
    import dkim

    head = (
        f"From: Sender <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: relay benchmark\r\n"
        "Date: Mon, 7 Dec 2026 04:00:00 +0000\r\nMessage-ID: <relay-bench@example.org>\r\n\r\n"
    ).encode()
    line = b"0123456789 The quick brown fox jumps over the lazy dog 0123456789 abcdefg"
    body = b"".join(line + b"\r\n" for _ in range(max(1, bodySize // (len(line) + 2))))
    message = head + body
    with open(keyPath, "rb") as f:
        pem = f.read()
    signature = dkim.sign(
        message, SELECTOR.encode(), DOMAIN.encode(), pem, canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )  # fmt: skip
    signed = signature + message
    if not dkim.verify(signed, dnsfunc=lambda name, timeout=5: record):
        raise BenchError("dkimpy does not verify its own signature")
    with open(path, "wb") as f:
        f.write(signed.replace(b"\r\n", b"\n"))
    os.chmod(path, 0o644)


class DNSServer:
    """benchmarks/relay_dns.py in a process of its own, serving ``zones``."""

    def __init__(self, repo: str, zones: dict) -> None:
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "relay_dns.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=repo),
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(zones) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise BenchError(f"the DNS server did not start: {line!r}")
        self.port = int(line)
        self.pid = self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class MailAuth:
    """The keys, the DNS server and the message file of the ``--mailauth`` relays."""

    def __init__(self, repo: str, workdir: str, bodySize: int) -> None:
        self.repo = repo
        self.dir = os.path.join(workdir, "mailauth")
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.keys = {}
        records = {}
        for kind in ("rsa", "ed25519"):
            self.keys[kind] = os.path.join(self.dir, f"{kind}.pem")
            records[kind] = writeKey(self.keys[kind], kind)
        self.messageFile = os.path.join(self.dir, "signed.eml")
        signedMessageFile(self.messageFile, self.keys["rsa"], records["rsa"], bodySize)
        zones = {
            DOMAIN: {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
            f"{SELECTOR}._domainkey.{DOMAIN}": {"TXT": [records["rsa"].decode()]},
            f"_dmarc.{DOMAIN}": {"TXT": ["v=DMARC1; p=reject"]},
        }
        self.dns: DNSServer | None = DNSServer(repo, zones)
        self.lmtpSink: Sink | None = Sink(workdir, lmtp=True)

    def start(self, name: str, workdir: str, sinkPort: int) -> Txsmtp:
        if name == "txsmtp-verify":
            assert self.dns is not None
            extra = (
                "--verify-inbound", "--dns-server", f"127.0.0.1:{self.dns.port}",
                "--route", f"{RECIPIENT_DOMAIN}=lmtp:[127.0.0.1]:{self.lmtpSink.port}",
            )  # fmt: skip
            return Txsmtp(self.repo, workdir, sinkPort, extra=extra, name=name, networks=None)
        kind = "ed25519" if name == "txsmtp-dkim-ed" else "rsa"
        extra = ("--dkim", f"{DOMAIN}:{SELECTOR}:{self.keys[kind]}")
        return Txsmtp(self.repo, workdir, sinkPort, extra=extra, name=name)

    def runOptions(self, name: str) -> dict:
        """What ``relay_nodes.run`` is given for relay ``name``."""
        if name == "txsmtp-verify":
            assert self.dns is not None
            return {
                "sender": SENDER, "messageFile": self.messageFile,
                "otherPids": (self.dns.pid,), "sink": self.lmtpSink,
            }  # fmt: skip
        return {"sender": SENDER}

    def stop(self) -> None:
        if self.dns is not None:
            self.dns.stop()
            self.dns = None
        if self.lmtpSink is not None:
            self.lmtpSink.stop()
            self.lmtpSink = None


def checkLog(relay: Txsmtp) -> dict:
    """What the relay's log says it did: signing failures, or the verification results."""
    text = ""
    # twistd rotates its log at 1 MB: twistd.log.1, .2, ... hold the start.
    for path in glob.glob(glob.escape(relay.log) + "*"):
        with open(path, encoding="utf-8", errors="replace") as f:
            text += f.read()
    if relay.name == "txsmtp-verify":
        lines = re.findall(r": spf=\S+.*", text)
        passed = [line for line in lines if re.search(r"spf=pass .*dkim=pass .*dmarc=pass", line)]
        return {"checked": len(lines), "allPass": len(passed)}
    return {"notSigned": text.count("not DKIM-signed")}

