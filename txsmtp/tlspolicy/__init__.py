"""
TLS policies for outbound delivery: how the queue decides, per MX host,
whether STARTTLS is mandatory and how the server's certificate is
authenticated: DANE (RFC 7672), from DNSSEC-validated TLSA records
(:mod:`txsmtp.tlspolicy.dane`, asked through :mod:`txsmtp.tlspolicy.securedns`).
"""
