"""The serving certificate's notAfter as a metric (the expiry alert reads it)."""
import datetime
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01 import metrics
from kibaship_dns01.api.tls import ReloadingServerTLS
from kibaship_dns01.testing import pki
from tests.support import tempDir

EXPIRY = "kibaship_dns01_serving_certificate_expiration_timestamp_seconds"


def at(year, month, day):
    return datetime.datetime(year, month, day, tzinfo=datetime.timezone.utc)


class ServingCertificateExpiryTests(SynchronousTestCase):
    def setUp(self):
        self.ca = pki.makeCA(days=3650)
        self.dir = tempDir(self)
        self.cert, self.key = (os.path.join(self.dir, n) for n in ("tls.crt", "tls.key"))

    def test_loadAndRotationPublishTheServedNotAfter(self):
        pki.serverPair(self.ca, notAfter=at(2031, 5, 1)).writeTo(self.cert, self.key)
        tls = ReloadingServerTLS(self.cert, self.key, Clock())
        tls.load()
        self.assertEqual(metrics.REGISTRY.get_sample_value(EXPIRY), at(2031, 5, 1).timestamp())
        pki.serverPair(self.ca, notAfter=at(2032, 1, 2)).writeTo(self.cert, self.key)
        self.assertTrue(tls.reloadIfChanged())
        self.assertEqual(metrics.REGISTRY.get_sample_value(EXPIRY), at(2032, 1, 2).timestamp())

    def test_refusedRotationKeepsTheServedOnesNotAfter(self):
        """A pair that is not installed must not move the gauge: the old one is still served."""
        pki.serverPair(self.ca, notAfter=at(2031, 5, 1)).writeTo(self.cert, self.key)
        tls = ReloadingServerTLS(self.cert, self.key, Clock())
        tls.load()
        other = pki.serverPair(self.ca, notAfter=at(2035, 1, 1))
        mismatched = pki.serverPair(self.ca, notAfter=at(2036, 1, 1))
        with open(self.cert, "wb") as f:
            f.write(other.certPEM)
        with open(self.key, "wb") as f:
            f.write(mismatched.keyPEM)
        self.assertFalse(tls.reloadIfChanged())
        self.assertEqual(metrics.REGISTRY.get_sample_value(EXPIRY), at(2031, 5, 1).timestamp())
