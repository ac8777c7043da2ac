"""
The mail authentication options of ``twistd smtp`` (a base of
:class:`txsmtp.tap.Options`), and the parts they build for the relay:

``--dkim DOMAIN:SELECTOR:KEYFILE`` (repeatable)
    DKIM-sign what authenticated users and the relay networks send, with
    the key of the ``From:`` domain (:mod:`txsmtp.mailauth.signing`).

``--verify-inbound``
    Check SPF, DKIM and DMARC on the mail that clients which may not
    relay send (an MX's mail), and say what was found in an
    ``Authentication-Results:`` field (:mod:`txsmtp.mailauth.inbound`).
    DNS goes to ``--dns-server`` (default: the system's resolvers).
``--dmarc-reject``
    With ``--verify-inbound`` (it turns it on): refuse with
    ``550 5.7.1`` the mail that fails DMARC for a domain whose policy is
    ``reject``.

``--no-mta-sts``
    Do not look for MTA-STS policies (RFC 8461) when delivering to MX
    hosts.  By default a domain's policy is found (``_mta-sts`` TXT,
    then HTTPS), cached, and followed (:mod:`txsmtp.queue.mxtls`); the
    cache is kept in ``mta-sts.json`` in a queue directory.
``--mta-sts-ca FILE``
    The authorities (PEM) that MTA-STS policy servers and, under an
    ``enforce`` policy, MX hosts are checked against (default: the
    system's).
``--dane``
    Use DANE (RFC 7672) toward MX hosts: DNSSEC-validated TLSA records
    from the validating resolver of ``--dns-server`` (or the first of
    /etc/resolv.conf), which must be on loopback: its "authenticated
    data" bit is trusted only there.

They apply to the relay (``--queue`` and the other relay options): a
message is signed as it streams into the queue, and the signature is put
in front of it at delivery.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from txsmtp.mailauth.signing import DKIMKey, SigningKeys, parseDKIMOption, signingFilter

__all__ = ["MailAuthOptions", "mailAuthFilters", "mailAuthSummary", "mxSecurity", "resolver"]


class MailAuthOptions:
    """
    The mail authentication options: a base of :class:`txsmtp.tap.Options`,
    whose ``optParameters`` and ``optFlags`` end with these.
    """

    mailAuthParameters: list[list[Any]] = [
        ["mta-sts-ca", None, None, "PEM CA certificates for MTA-STS policy servers and, under an enforce policy, MX hosts (default: the system's)."],
    ]  # fmt: skip
    mailAuthFlags: list[list[Any]] = [
        ["verify-inbound", None, "Check SPF, DKIM and DMARC on mail from clients that may not relay, and add an Authentication-Results: field."],
        ["dmarc-reject", None, "Refuse (550 5.7.1) mail failing DMARC whose domain's policy is reject; implies --verify-inbound."],
        ["no-mta-sts", None, "Do not look up MTA-STS policies (RFC 8461) of the domains mail goes to."],
        ["dane", None, "Authenticate MX hosts with DNSSEC-validated TLSA records (RFC 7672), from a validating resolver on loopback (--dns-server)."],
    ]  # fmt: skip

    def opt_dkim(self, value: str) -> None:
        """DKIM-sign mail from authenticated users and --relay-networks whose From: is in DOMAIN (or below it): DOMAIN:SELECTOR:KEYFILE, RSA or Ed25519 in PEM; repeatable."""
        options: Any = self
        try:
            key = parseDKIMOption(value)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        keys: list[DKIMKey] = options.setdefault("dkim", [])
        if any(k.domain == key.domain for k in keys):
            raise usage.UsageError(f"--dkim: {key.domain} has two keys; give one per domain")
        keys.append(key)

    def postMailAuthOptions(self) -> None:
        """
        Check the options against each other and the relay's.

        :raise usage.UsageError: with a readable sentence.
        """
        options: Any = self
        options.setdefault("dkim", [])
        if options["dmarc-reject"]:
            options["verify-inbound"] = True
        given = [name for name in ("dkim", "verify-inbound", "dmarc-reject", "dane", "mta-sts-ca") if options[name]]
        if given and not options["relay"]:
            raise usage.UsageError(
                f"--{given[0]} applies to the relay: turn it on with --queue DIR "
                "(or --local-domains, --relay-host, --route, --relay-networks)"
            )
        if options["verify-inbound"]:
            try:
                import publicsuffixlist  # noqa: F401
            except ImportError:
                raise usage.UsageError(
                    "--verify-inbound needs the publicsuffixlist package (for DMARC): pip install 'txsmtp[mailauth]'"
                ) from None
        if options["mta-sts-ca"] is not None and options["no-mta-sts"]:
            raise usage.UsageError("--mta-sts-ca has no use with --no-mta-sts")
        if options["mta-sts-ca"] is not None:
            from txsmtp.tapqueue import trustRootFile

            try:
                options["mtaSTSTrust"] = trustRootFile(options["mta-sts-ca"], "--mta-sts-ca")
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        if options["dane"]:
            options["daneResolver"] = _daneResolver(options)


def mailAuthFilters(options: Any, hostname: str, clock: Any) -> list[Any]:
    """The message filters for :class:`~txsmtp.queue.relay.RelayDelivery` the options ask for."""
    filters: list[Any] = []
    if options.get("dkim"):
        filters.append(signingFilter(SigningKeys(options["dkim"]), clock))
    if options.get("verify-inbound"):
        from txsmtp.mailauth.inbound import InboundChecks, checkingFilter

        checks = InboundChecks(resolver(options), hostname, clock, dmarcReject=bool(options.get("dmarc-reject")))
        filters.append(checkingFilter(checks))
    return filters


def resolver(options: Any) -> Any:
    """The DNS resolver of ``--dns-server``, or the system's."""
    from twisted.names import client

    setup = options.get("relaySetup")
    if setup is not None and setup.dnsServer is not None:
        return client.Resolver(servers=[setup.dnsServer])
    return _SystemResolver()


class _SystemResolver:
    """
    The system's resolver (:func:`twisted.names.client.getResolver`), made
    at its first use: it rereads /etc/resolv.conf on a timer, which should
    start with the server, not when the options are read.
    """

    def __getattr__(self, name: str) -> Any:
        from twisted.names import client

        return getattr(client.getResolver(), name)


def mailAuthSummary(options: Any) -> str:
    """The part of the start-up line about mail authentication (``""`` when none)."""
    if not options.get("relay"):
        return ""
    parts = []
    if options.get("verify-inbound"):
        parts.append("inbound SPF/DKIM/DMARC checks" + (" (DMARC reject honoured)" if options.get("dmarc-reject") else ""))
    parts.append("MTA-STS " + ("off" if options.get("no-mta-sts") else "on"))
    if options.get("dane"):
        host, port = options["daneResolver"]
        parts.append(f"DANE through {host}:{port}")
    if options.get("dkim"):
        parts.append("DKIM signing for " + ", ".join(f"{k.domain} ({k.selector})" for k in options["dkim"]))
    return "; " + ", ".join(parts) if parts else ""


def _daneResolver(options: Any) -> tuple[str, int]:
    """The validating resolver DANE asks: ``--dns-server``, else the first of /etc/resolv.conf; on loopback."""
    from txsmtp.tlspolicy.securedns import isLoopback

    setup = options.get("relaySetup")
    server = setup.dnsServer if setup is not None else None
    if server is None:
        server = ("127.0.0.1", 53)
        try:
            with open("/etc/resolv.conf") as f:
                for line in f:
                    words = line.split()
                    if len(words) >= 2 and words[0] == "nameserver":
                        server = (words[1], 53)
                        break
        except OSError:
            pass
    if not isLoopback(server[0]):
        raise usage.UsageError(
            f"--dane needs a validating resolver on loopback (such as unbound on 127.0.0.1), "
            f"whose 'authenticated data' bit can be trusted; {server[0]} is not on loopback: "
            "give --dns-server 127.0.0.1:53"
        )
    return server


def mxSecurity(options: Any, reactor: Any) -> Any:
    """The :class:`~txsmtp.queue.mxtls.MXSecurity` the options ask for."""
    import os

    from txsmtp.queue.mxtls import MXSecurity

    mtasts = secure = None
    setup = options.get("relaySetup")
    if not options.get("no-mta-sts"):
        from txsmtp.tlspolicy.mtasts import MTASTS

        cachePath = None
        if setup is not None and not setup.shared:
            cachePath = os.path.join(setup.queue, "mta-sts.json")
        mtasts = MTASTS(resolver(options), reactor, trustRoot=options.get("mtaSTSTrust"), cachePath=cachePath)
    if options.get("daneResolver") is not None:
        from txsmtp.tlspolicy.securedns import SecureResolver

        host, port = options["daneResolver"]
        secure = SecureResolver(host, port, reactor=reactor)
    return MXSecurity(mtasts, secure)
