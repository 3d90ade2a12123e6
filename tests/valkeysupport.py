"""Test cases that run against the process-wide shared Valkey cluster."""
import uuid

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from kibaship_dns01.testing.valkeycluster import inThread, sharedCluster
from kibaship_dns01.valkey.publisher import ValkeyPublisher
from kibaship_dns01.valkey.script import streamKey
from kibaship_dns01.valkey.slots import keySlot


class SharedClusterCase(TestCase):
    """Starts (once per process, off the reactor thread) the shared cluster and
    gives each test a running publisher and a target for it; stopped at cleanup."""

    def setUp(self):
        return inThread(sharedCluster).addCallback(self._started)

    def _started(self, cluster):
        self.cluster = cluster
        self.publisher = ValkeyPublisher(reactor)
        self.publisher.startService()
        self.addCleanup(self.publisher.stopService)
        self.target = cluster.target()


def projectOn(cluster, node):
    """A fresh project UUID whose stream's slot ``node`` serves."""
    slots = cluster.slotMap()
    while True:
        project = str(uuid.uuid4())
        slot = keySlot(streamKey(project))
        if any(start <= slot <= end and owner is node for (start, end), owner in slots.items()):
            return project
