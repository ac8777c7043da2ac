"""
TLS policies for outbound delivery: how the queue decides, per MX host,
whether STARTTLS is mandatory and how the server's certificate is
authenticated: MTA-STS (RFC 8461, :mod:`txsmtp.tlspolicy.mtasts`), a
policy the recipient domain publishes over HTTPS; DANE (RFC 7672), from
DNSSEC-validated TLSA records (:mod:`txsmtp.tlspolicy.dane`, asked
through :mod:`txsmtp.tlspolicy.securedns`).
"""
