"""Twisted ESMTP sink: accepts every sender and recipient, discards the body.

Usage: python peer_twisted.py PORT   (binds 127.0.0.1 only)
"""

import sys

from twisted.internet import defer, reactor
from twisted.mail import smtp
from zope.interface import implementer


@implementer(smtp.IMessage)
class _Discard:
    def lineReceived(self, line):
        pass

    def eomReceived(self):
        return defer.succeed(None)

    def connectionLost(self):
        pass


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def receivedHeader(self, helo, origin, recipients):
        return None

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        return _Discard


class _Factory(smtp.SMTPFactory):
    protocol = smtp.ESMTP

    def buildProtocol(self, addr):
        p = smtp.SMTPFactory.buildProtocol(self, addr)
        p.delivery = _Delivery()
        p.challengers = {}
        return p


reactor.listenTCP(int(sys.argv[1]), _Factory(), interface="127.0.0.1")
reactor.run()
