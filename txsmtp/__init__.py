"""txsmtp: an SMTP/ESMTP framework for Twisted."""

__version__ = "0.1.0.dev0"
