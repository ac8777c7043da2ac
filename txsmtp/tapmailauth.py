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

They apply to the relay (``--queue`` and the other relay options): a
message is signed as it streams into the queue, and the signature is put
in front of it at delivery.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from txsmtp.mailauth.signing import DKIMKey, SigningKeys, parseDKIMOption, signingFilter

__all__ = ["MailAuthOptions", "mailAuthFilters", "mailAuthSummary"]


class MailAuthOptions:
    """
    The mail authentication options: a base of :class:`txsmtp.tap.Options`,
    whose ``optParameters`` and ``optFlags`` end with these.
    """

    mailAuthParameters: list[list[Any]] = []
    mailAuthFlags: list[list[Any]] = [
        ["verify-inbound", None, "Check SPF, DKIM and DMARC on mail from clients that may not relay, and add an Authentication-Results: field."],
        ["dmarc-reject", None, "Refuse (550 5.7.1) mail failing DMARC whose domain's policy is reject; implies --verify-inbound."],
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
        given = [name for name in ("dkim", "verify-inbound", "dmarc-reject") if options[name]]
        if given and not options["relay"]:
            raise usage.UsageError(
                f"--{given[0]} applies to the relay: turn it on with --queue DIR "
                "(or --local-domains, --relay-host, --route, --relay-networks)"
            )


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
    return client.getResolver()


def mailAuthSummary(options: Any) -> str:
    """The part of the start-up line about mail authentication (``""`` when none)."""
    parts = []
    if options.get("verify-inbound"):
        parts.append("inbound SPF/DKIM/DMARC checks" + (" (DMARC reject honoured)" if options.get("dmarc-reject") else ""))
    if options.get("dkim"):
        parts.append("DKIM signing for " + ", ".join(f"{k.domain} ({k.selector})" for k in options["dkim"]))
    return "; " + ", ".join(parts) if parts else ""
