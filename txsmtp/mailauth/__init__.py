"""
Mail authentication: the checks an MX runs on what it receives (SPF,
DKIM, DMARC, reported in an ``Authentication-Results:`` header) and the
DNS questions they ask, through :mod:`twisted.names` so that the reactor
never blocks.
"""
