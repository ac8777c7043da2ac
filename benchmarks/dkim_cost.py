"""
The CPU cost of one DKIM signature and of one DKIM verification, txsmtp
beside dkimpy, in one process and one run.

For each message size (``--sizes``, default 1 KiB, 100 KiB and 1 MiB of
body under the same six header fields) and each key (RSA 2048, and
Ed25519 with ``--ed25519``), four operations are timed:

``txsmtp sign``
    :class:`txsmtp.dkimsign.DKIMSigner`, fed the message in 64 KiB chunks
    (as the relay streams it into the queue), then ``signature()``;
``dkimpy sign``
    ``dkim.sign(message, ...)``, the same headers, relaxed/relaxed;
``txsmtp verify``
    :class:`txsmtp.mailauth.dkimverify.DKIMVerifier`, fed the signed
    message in 64 KiB chunks, then ``verify(resolver)`` with an in-memory
    resolver whose ``query`` returns the key record at once (a succeeded
    Deferred, as twisted.names' ``IResolver.query`` would after the
    network): no DNS, no reactor, so only the verifier's own work counts;
``dkimpy verify``
    ``dkim.verify(signed, dnsfunc=...)``, the key record returned by the
    function.

Each verification is checked to pass (a failure is an error, not a
figure).  The operations run in interleaved rounds (the order rotating)
after one warm-up each; each round times ``--batch`` operations with
``time.process_time`` (this process's CPU time), and the median over
``--rounds`` rounds is reported, per message, with the ratio txsmtp /
dkimpy (below 1.00x: txsmtp is cheaper).

Not part of the tests; see benchmarks/README.md.  (Not named dkim.py: in
this directory, which the other benchmarks put on the path, that would
hide dkimpy's ``dkim``.)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

CHUNK = 65536
DOMAIN, SELECTOR = "example.org", "sel"
HEADERS = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version"]
KEYNAME = f"{SELECTOR}._domainkey.{DOMAIN}"


def parseArgs(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1024,102400,1048576", help="body sizes in octets")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--seconds",
        type=float,
        default=0.3,
        help="about how much CPU time one round of one operation takes (sets the batch)",
    )
    parser.add_argument("--ed25519", action="store_true", help="Ed25519 keys too")
    parser.add_argument("--repo", default=REPO, help="the checkout whose txsmtp is measured")
    parser.add_argument("--json")
    return parser.parse_args(argv)


def makeKeys(ed: bool):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    keys = {}
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = r.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    keys["rsa2048"] = (r, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der))
    if ed:
        e = ed25519.Ed25519PrivateKey.generate()
        raw = e.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        keys["ed25519"] = (e, b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw))
    out = {}
    for name, (key, record) in keys.items():
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        if name == "ed25519":
            # dkimpy takes an Ed25519 key as the base64 of its 32 octets (RFC 8463 §3).
            raw = key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            out[name] = (pem, base64.b64encode(raw), b"ed25519-sha256", record)
        else:
            out[name] = (pem, pem, b"rsa-sha256", record)
    return out


def makeMessage(bodySize: int) -> bytes:
    """Six header fields and ``bodySize`` octets of 76-character text lines, CRLF."""
    head = (
        b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\n"
        b"Subject: benchmark message\r\nDate: Mon, 7 Dec 2026 04:00:00 +0000\r\n"
        b"Message-ID: <bench.1@example.org>\r\nMIME-Version: 1.0\r\n\r\n"
    )
    line = (b"The quick brown fox jumps over the lazy dog, 0123456789 abcdefghij  klmno" * 2)[:74]
    body = bytearray()
    k = 0
    while len(body) < bodySize:
        body += b"%04d " % (k % 10000) + line[:69] + b"\r\n"
        k += 1
    return head + bytes(body[:bodySize - 2]) + b"\r\n"


class MemoryResolver:
    """Just ``query``, as ``twisted.names`` ``IResolver`` has it: the key record, already there."""

    def __init__(self, record: bytes) -> None:
        from twisted.names import dns

        self._dns = dns
        strings = [record[i : i + 255] for i in range(0, len(record), 255)]
        self._answer = dns.RRHeader(KEYNAME.encode(), dns.TXT, dns.IN, 300, dns.Record_TXT(*strings))

    def query(self, query, timeout=None):
        from twisted.internet import defer

        if query.name.name.decode().lower() != KEYNAME or query.type != self._dns.TXT:
            return defer.fail(AssertionError(f"unexpected query {query}"))
        return defer.succeed(([self._answer], [], []))


def operations(message: bytes, pem: bytes, pyKey: bytes, algorithm: bytes, record: bytes):
    """The four operations on one message and key, each a function of no argument."""
    import dkim
    from cryptography.hazmat.primitives import serialization
    from twisted.internet import defer

    from txsmtp.dkimsign import DKIMSigner
    from txsmtp.mailauth.dkimverify import DKIMVerifier

    now = int(time.time())
    resolver = MemoryResolver(record)
    # As the relay does (txsmtp.mailauth.signing): the key loaded once.
    loaded = serialization.load_pem_private_key(pem, password=None)
    include = [h.lower().encode() for h in HEADERS]
    chunks = [message[i : i + CHUNK] for i in range(0, len(message), CHUNK)]

    def txSign() -> bytes:
        signer = DKIMSigner(DOMAIN, SELECTOR, loaded, headers=HEADERS, timestamp=now)
        for chunk in chunks:
            signer.feed(chunk)
        return signer.signature()

    def pySign() -> bytes:
        return dkim.sign(
            message, SELECTOR.encode(), DOMAIN.encode(), pyKey, signature_algorithm=algorithm,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
        )  # fmt: skip

    signed = txSign() + message
    signedChunks = [signed[i : i + CHUNK] for i in range(0, len(signed), CHUNK)]
    pySigned = pySign() + message

    def txVerify() -> bool:
        verifier = DKIMVerifier(now=now)
        for chunk in signedChunks:
            verifier.feed(chunk)
        d = defer.Deferred.fromCoroutine(verifier.verify(resolver))
        results: list = []
        d.addBoth(results.append)
        [found] = results  # a succeeded Deferred all along: done already
        return len(found) == 1 and found[0].result == "pass"

    def dnsfunc(name, timeout=5):
        return record

    def pyVerify() -> bool:
        return bool(dkim.verify(pySigned, dnsfunc=dnsfunc))

    # Each verifies the other's signature too: both sign alike.
    if not dkim.verify(signed, dnsfunc=dnsfunc):
        raise SystemExit("dkimpy does not verify txsmtp's signature")
    for name, check in (("txsmtp verify", txVerify), ("dkimpy verify", pyVerify)):
        if not check():
            raise SystemExit(f"{name}: the signature did not verify")
    return {
        "txsmtp sign": txSign,
        "dkimpy sign": pySign,
        "txsmtp verify": txVerify,
        "dkimpy verify": pyVerify,
    }


def measure(ops: dict, rounds: int, seconds: float) -> dict:
    """Median CPU seconds per operation over ``rounds`` interleaved rounds."""
    batches = {}
    for name, op in ops.items():
        op()  # warm-up
        start = time.process_time()
        op()
        one = max(time.process_time() - start, 1e-5)
        batches[name] = max(1, min(2000, int(seconds / one)))
    times: dict[str, list[float]] = {name: [] for name in ops}
    order = list(ops)
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            op, n = ops[name], batches[name]
            start = time.process_time()
            for _ in range(n):
                op()
            times[name].append((time.process_time() - start) / n)
    return {
        name: {"medianMs": statistics.median(t) * 1000, "batch": batches[name], "rounds": len(t)}
        for name, t in times.items()
    }


def sizeLabel(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def main(argv=None) -> int:
    args = parseArgs(argv)
    sys.path.insert(0, os.path.abspath(args.repo))
    import txsmtp

    print(f"txsmtp from {os.path.dirname(txsmtp.__file__)}", file=sys.stderr)
    keys = makeKeys(args.ed25519)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results = []
    for keyName, (pem, pyKey, algorithm, record) in keys.items():
        for size in sizes:
            message = makeMessage(size)
            ops = operations(message, pem, pyKey, algorithm, record)
            m = measure(ops, args.rounds, args.seconds)
            row = {"key": keyName, "size": size, "messageOctets": len(message), "ops": m}
            for what in ("sign", "verify"):
                row[f"{what}Ratio"] = m[f"txsmtp {what}"]["medianMs"] / m[f"dkimpy {what}"]["medianMs"]
            results.append(row)
            print(f"  {keyName} {sizeLabel(size)} done", file=sys.stderr, flush=True)
    report(args, results)
    return 0


def report(args, results) -> None:
    print(
        f"DKIM CPU ms per message (median of {args.rounds} interleaved rounds,"
        " this process's CPU time); ratio = txsmtp / dkimpy, below 1.00x txsmtp is cheaper"
    )
    print(
        f"{'key':<9}{'body':>9}{'txsmtp sign':>13}{'dkimpy sign':>13}{'ratio':>8}"
        f"{'txsmtp verify':>15}{'dkimpy verify':>15}{'ratio':>8}"
    )
    for row in results:
        m = row["ops"]
        print(
            f"{row['key']:<9}{sizeLabel(row['size']):>9}"
            f"{m['txsmtp sign']['medianMs']:>13.3f}{m['dkimpy sign']['medianMs']:>13.3f}"
            f"{row['signRatio']:>7.2f}x"
            f"{m['txsmtp verify']['medianMs']:>15.3f}{m['dkimpy verify']['medianMs']:>15.3f}"
            f"{row['verifyRatio']:>7.2f}x"
        )
    if args.json:
        import platform
        from importlib.metadata import version

        import cryptography
        import dkim  # noqa: F401

        machine = {
            "python": platform.python_version(),
            "cryptography": cryptography.__version__,
            "dkimpy": version("dkimpy"),
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
        }
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine, "results": results}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
