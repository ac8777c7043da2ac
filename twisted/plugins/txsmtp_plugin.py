# The "smtp" subcommand of twistd, and txsmtp's built-in delivery types.
# This directory is a Twisted plugin namespace: it must have no __init__.py.
from twisted.application.service import ServiceMaker

from txsmtp.deliveryplugins import DiscardFactory, MaildirFactory, VirtualFactory

txsmtpServiceMaker = ServiceMaker(
    "txsmtp",
    "txsmtp.tap",
    "An ESMTP server (txsmtp): streaming deliveries into Maildirs or your own code.",
    "smtp",
)

maildirDelivery = MaildirFactory()
virtualDelivery = VirtualFactory()
discardDelivery = DiscardFactory()
