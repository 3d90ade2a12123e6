"""Hostile ChallengePayloads through the whole request path (issue 14).

The real site, decoder, solver, resolver (over the fake API holding one
Kibaship chain) and the verified fake publisher, driven with raw HTTP bytes
in memory so hypothesis can try hundreds of bodies a second.  Properties:
every answer is 201 or 4xx, nothing is logged as a failure (no traceback),
and the stream only ever holds the one true record, whatever was sent.
"""
import json

from hypothesis import HealthCheck, given, settings
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.api.discovery import APIIdentity
from kibaship_dns01.api.site import APIResource, APISite
from kibaship_dns01.config import Defaults
from kibaship_dns01.credentials import SecretReader
from kibaship_dns01.resolve import ChallengeResolver
from kibaship_dns01.solver import Solver, TargetFactory
from kibaship_dns01.testing.certmanager import PROJECT_UUID, buildChain
from kibaship_dns01.testing.eventschema import validateEntry
from kibaship_dns01.testing.fakekube import FakeKubernetesClient
from kibaship_dns01.testing.fakevalkey import FakeStreamPublisher
from kibaship_dns01.testing.hostile import payloadBodies
from kibaship_dns01.testing.inmemory import MemoryClient, parseResponse, postRequest
from tests.support import GROUP, SOLVER, SOLVER_PATH, LogCapture

CONFIG = {"valkey": {"addr": "valkey.test.svc:6379"}}


def _payload(chain, action="Present"):
    request = chain.request(resourceNamespace="cert-manager", action=action, config=CONFIG)
    return {"apiVersion": "webhook.acme.cert-manager.io/v1alpha1", "kind": "ChallengePayload",
            "request": request.raw}


class Stack:
    """The daemon's request path in memory, with one Challenge that exists."""

    def __init__(self, case, chain):
        self.clock = MemoryReactorClock()
        self.kube = FakeKubernetesClient()
        chain.addTo(self.kube.store)
        self.resolver = ChallengeResolver(self.kube, self.clock, GROUP, SOLVER, watchGrace=0)
        self.resolver.startService()
        case.addCleanup(self.resolver.stopService)
        self.publisher = FakeStreamPublisher(self.clock)
        solver = Solver(self.resolver, self.publisher,
                        TargetFactory(SecretReader(self.kube, self.clock)), self.clock, Defaults())
        resource = APIResource(APIIdentity(group=GROUP, solver=SOLVER), solver, clock=self.clock)
        self.site = APISite(resource, reactor=self.clock)
        self.client = MemoryClient(self.site)

    def post(self, body):
        if self.client.transport.disconnecting:  # closed after its last answer: reconnect
            self.client = MemoryClient(self.site)
        return parseResponse(self.client.send(postRequest(SOLVER_PATH, body)))

    def entries(self, target=None):
        return [fields for _, fields in self.publisher.entries(PROJECT_UUID, target)]

    def targets(self):
        return {call[1] for call in self.publisher.calls if call[0] == "append"}


class HostilePayloadTests(SynchronousTestCase):
    chain = buildChain()
    challenge = chain.challenges[0]
    payload = _payload(chain)

    def setUp(self):
        self.logs = LogCapture(self)
        self.stack = Stack(self, self.chain)

    def failuresLogged(self, since=0):
        return [e for e in self.logs.events[since:] if e.get("log_failure") is not None
                or e.get("log_level") is not None and e["log_level"].name in ("error", "critical")]

    def test_theValidPayloadAppendsOnce(self):
        first = self.stack.post(json.dumps(self.payload).encode())
        again = self.stack.post(json.dumps(self.payload).encode())
        for resp in (first, again):
            self.assertEqual(resp.code, 201, resp.body)
            self.assertTrue(json.loads(resp.body)["response"]["success"], resp.body)
        entries = self.stack.entries()
        self.assertEqual(len(entries), 1)
        payload = validateEntry({**entries[0], "sequence": "1"})["payload"]
        self.assertEqual(payload["record"]["name"],
                         "_acme-challenge." + self.challenge["spec"]["dnsName"])
        self.assertIs(payload["delegated"], False)

    @settings(max_examples=500, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=payloadBodies(payload))
    def test_hostileBodies(self, body):
        mark = len(self.logs.events)
        resp = self.stack.post(body)
        self.assertTrue(resp.code == 201 or 400 <= resp.code < 500, (resp.code, resp.body))
        answer = json.loads(resp.body)
        if resp.code == 201:
            response = answer["response"]
            self.assertTrue(response["success"] or response["status"]["message"], answer)
        else:
            self.assertEqual(answer["kind"], "Status")
            self.assertTrue(answer["message"])
        self.assertEqual(self.failuresLogged(mark), [])
        # whatever was sent, each stream (a bent config.valkey.addr names another cluster)
        # holds only the one true record, once per operation
        for target in self.stack.targets():
            operations = [f["operation"] for f in self.stack.entries(target)]
            self.assertEqual(len(operations), len(set(operations)), (body, target, operations))
        for fields in self.stack.entries():
            record = json.loads(fields["event_data"])["payload"]["record"]
            self.assertEqual((record["name"], record["value"]), (
                "_acme-challenge." + self.challenge["spec"]["dnsName"],
                self.challenge["spec"]["key"]), body)


class RecordNameTests(SynchronousTestCase):
    """A resolvedFQDN that is not ``_acme-challenge.<dnsName>`` (issue 14, defect 3)."""

    def setUp(self):
        self.logs = LogCapture(self)

    def post(self, chain, **changes):
        stack = Stack(self, chain)
        payload = _payload(chain)
        payload["request"].update(changes)
        resp = stack.post(json.dumps(payload).encode())
        self.assertEqual(resp.code, 201, resp.body)
        return json.loads(resp.body)["response"], stack.entries()

    def test_refusedWhenTheSolverFollowsNoCNAME(self):
        response, entries = self.post(buildChain(), resolvedFQDN="_acme-challenge.shop.exampel.com.",
                                      resolvedZone="exampel.com.")
        self.assertFalse(response["success"])
        message = response["status"]["message"]
        self.assertIn("_acme-challenge.shop.exampel.com. is not _acme-challenge.shop.example.com.",
                      message)
        self.assertIn("cnameStrategy: Follow", message)
        self.assertEqual(entries, [])

    def test_publishedAsDelegatedWhenTheSolverFollowsCNAMEs(self):
        chain = buildChain()
        for challenge in chain.challenges:
            challenge["spec"]["solver"]["dns01"]["cnameStrategy"] = "Follow"
        response, entries = self.post(chain, resolvedFQDN="shop.acme-delegation.example.net.",
                                      resolvedZone="example.net.")
        self.assertTrue(response["success"], response)
        payload = json.loads(entries[0]["event_data"])["payload"]
        self.assertIs(payload["delegated"], True)
        self.assertEqual(payload["record"]["name"], "shop.acme-delegation.example.net")
        self.assertEqual(payload["record"]["host"], "shop.acme-delegation")

    def test_caseDoesNotMakeADifferentRecord(self):
        chain = buildChain()
        stack = Stack(self, chain)
        payload = _payload(chain)
        stack.post(json.dumps(payload).encode())
        payload["request"]["resolvedFQDN"] = payload["request"]["resolvedFQDN"].upper()
        resp = stack.post(json.dumps(payload).encode())
        self.assertTrue(json.loads(resp.body)["response"]["success"])
        self.assertEqual(len(stack.entries()), 1, "an upper-case FQDN is the same record")
