"""The solver against the stand-in API (real TLS) and a real Valkey cluster."""
import uuid

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from kibaship_dns01 import metrics
from kibaship_dns01.challenge import CLEANUP, PRESENT, SolverError
from kibaship_dns01.kube.client import KubeClient
from kibaship_dns01.resolve import ChallengeResolver
from kibaship_dns01.service import buildSolver
from kibaship_dns01.testing.certmanager import buildChain
from kibaship_dns01.testing.environment import LocalEnvironment
from kibaship_dns01.testing.eventschema import validateEntry
from kibaship_dns01.testing.ports import refusingPort
from kibaship_dns01.testing.valkeycluster import sharedCluster
from kibaship_dns01.valkey import streamKey
from kibaship_dns01.valkey.publisher import ValkeyPublisher
from tests.support import tempDir, settingsFor

EVERY_FIELD = {"event_id", "timestamp", "project_uuid", "workspace_uuid", "resource_type",
               "resource_uuid", "resource_slug", "operation", "namespace",
               "parent_resource_uuid", "sequence", "event_data"}


def sample(name, **labels):
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class SolverIntegrationTests(TestCase):
    timeout = 60

    async def _setUp(self, dryRun=False):
        self.cluster = sharedCluster()
        self.env = LocalEnvironment(reactor, tempDir(self, "kibaship-int-"),
                                    self.cluster)
        # a project of its own per test: the shared cluster keeps streams between tests
        self.project = str(uuid.uuid4())
        labels = dict(self.env.chain.certificate["metadata"]["labels"],
                      **{"platform.kibaship.com/project-uuid": self.project})
        self.env.chain = buildChain(labels=labels, keySeed=self.project)
        await self.env.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.env.stop()))
        self.client = KubeClient(self.env.api.clientConfig(), reactor)
        self.addCleanup(self.client.close)
        self.resolver = ChallengeResolver(self.client, reactor, "dns.kibaship.com", "kibaship")
        self.resolver.startService()
        self.addCleanup(self.resolver.stopService)
        await self.resolver.informer.whenSynced()
        self.publisher = ValkeyPublisher(reactor)
        self.publisher.startService()
        self.addCleanup(self.publisher.stopService)
        settings = settingsFor("unused", "unused", dryRun=dryRun)
        self.solver = buildSolver(settings, self.client, self.resolver, self.publisher, reactor)

    def call(self, action=PRESENT, config=None):
        request = self.env.chain.request(resourceNamespace="cert-manager", action=action,
                                         config=config or self.env.issuerConfig())
        fn = self.solver.present if action == PRESENT else self.solver.cleanUp
        return fn(request)

    def entries(self):
        return self.cluster.xrange(streamKey(self.project))

    def test_presentRetryCleanUp(self):
        async def go():
            await self._setUp()
            before = sample("kibaship_dns01_valkey_appends_total", result="appended")
            await self.call()
            await self.call()
            [(entryId, fields)] = self.entries()
            self.assertEqual(set(fields), EVERY_FIELD)
            data = validateEntry(fields)
            self.assertEqual(data["payload"]["fqdn"], "_acme-challenge.shop.example.com")
            self.assertEqual(data["payload"]["challengeName"],
                             self.env.chain.challenges[0]["metadata"]["name"])
            await self.call(CLEANUP)
            ops = [(f["operation"], f["sequence"]) for _, f in self.entries()]
            self.assertEqual(ops, [("present", "1"), ("cleanup", "2")])
            self.assertEqual(sample("kibaship_dns01_valkey_appends_total", result="appended"),
                             before + 2)
        return defer.ensureDeferred(go())

    def test_dryRunAppendsNothing(self):
        async def go():
            await self._setUp(dryRun=True)
            await self.call()
            self.assertEqual(self.entries(), [])
        return defer.ensureDeferred(go())

    def test_missingPasswordSecretIsAClearFailure(self):
        async def go():
            await self._setUp()
            config = self.env.issuerConfig()
            config["valkey"]["passwordSecretRef"] = {"name": "nope", "key": "password"}
            failure = await self.assertFailure(self.call(config=config), SolverError)
            self.assertIn("Secret cert-manager/nope not found", failure.message)
            self.assertEqual(self.entries(), [])
        return defer.ensureDeferred(go())

    def test_configErrorNamesTheField(self):
        async def go():
            await self._setUp()
            failure = await self.assertFailure(
                self.call(config={"valkey": {"addr": self.cluster.seeds[0], "tls": "no"}}),
                SolverError)
            self.assertIn("config.valkey.tls must be a boolean", failure.message)
        return defer.ensureDeferred(go())

    def test_valkeyDownIsAFailureCertManagerRetries(self):
        async def go():
            await self._setUp()
            port, held = refusingPort()
            self.addCleanup(held.close)
            config = {"valkey": {"addr": "127.0.0.1:%d" % port, "connectTimeout": "1s",
                                 "readTimeout": "1s"}}
            failure = await self.assertFailure(self.call(config=config), SolverError)
            self.assertIn("could not append the present event", failure.message)
            self.assertIn("could not reach Valkey", failure.message)
            self.assertIn("cert-manager will retry", failure.message)
        return defer.ensureDeferred(go())
