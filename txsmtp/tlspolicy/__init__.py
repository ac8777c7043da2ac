"""
Outbound TLS policies: what a sending MTA must require of a recipient
domain's MX hosts before it hands them mail.

- :mod:`txsmtp.tlspolicy.mtasts`: SMTP MTA Strict Transport Security
  (MTA-STS, RFC 8461), a policy published over HTTPS and announced in DNS;
- DANE for SMTP (RFC 7672), TLSA records in DNSSEC-signed zones.
"""
