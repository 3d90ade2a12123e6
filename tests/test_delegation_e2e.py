"""Delegated renewals end to end (issue 21), with real software around two real daemons:
a password-protected six-node Valkey cluster, knot serving the user's zone, unbound as
the recursive resolver cert-manager and the CA would ask, and dig.

What is proved: a Present's key is served by the *other* replica right after its 201;
the user's CNAME makes the key visible through unbound (the path of cert-manager's
self-check and of the CA); the stream offers the CNAME, says when it appears, and a
renewal's Present says it is active; CleanUp withdraws; another project that adds the
same domain never has a key served under the first project's name; keys expire on
their own when no CleanUp comes."""
import secrets
import uuid

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from kibaship_dns01.testing import certmanager as cm
from kibaship_dns01.testing.daemon import DaemonProcess
from kibaship_dns01.testing.delegationworld import DelegationWorld
from kibaship_dns01.testing.environment import LocalEnvironment
from kibaship_dns01.testing.eventschema import validateEntry
from kibaship_dns01.testing.polling import pollUntil
from kibaship_dns01.testing.valkeycluster import inThread, namedCluster
from kibaship_dns01.valkey import streamKey
from tests.support import tempDir

PASSWORD = secrets.token_urlsafe(12)


def passwordCluster():
    return namedCluster("delegation-e2e", password=PASSWORD)


class DelegationCase(TestCase):
    timeout = 180
    replicas = 2
    extraArgs = ()

    @defer.inlineCallbacks
    def setUp(self):
        self.cluster = yield inThread(passwordCluster)
        self.cwd = tempDir(self, "kibaship-delegation-")
        self.env = LocalEnvironment(reactor, self.cwd, self.cluster)
        self.project = str(uuid.uuid4())
        self.env.chain = self.chain(self.project, "ad-shop-example-com")
        yield defer.ensureDeferred(self.env.start())
        self.addCleanup(lambda: defer.ensureDeferred(self.env.stop()))
        self.world = DelegationWorld(reactor, self.env, replicas=self.replicas)
        self.addCleanup(lambda: defer.ensureDeferred(self.world.stop()))
        yield defer.ensureDeferred(self.world.start())
        self.daemons = []
        for replica in range(self.replicas):
            self.daemons.append((yield defer.ensureDeferred(self.daemon(replica))))
        self.delegation = self.world.delegationFor(self.project)

    def chain(self, project, certificate, revision=1, keySeed=None):
        labels = dict(cm.kibashipLabels(), **{cm.PROJECT_LABEL: project})
        return cm.buildChain(certificateName=certificate, labels=labels, revision=revision,
                             keySeed=keySeed or project, config=self.env.issuerConfig())

    async def daemon(self, replica):
        daemon = DaemonProcess(reactor, self.world.daemonArgs(replica, extra=self.extraArgs),
                               cwd=self.cwd)
        daemon.start()
        self.addCleanup(lambda: defer.ensureDeferred(daemon.stop()))
        base = f"https://localhost:{await daemon.listeningPort()}"
        await daemon.waitReady(base, self.env.servingCA.certPEM)
        return base

    async def present(self, replica, action="Present", challenge=None):
        resp = await self.env.post(self.daemons[replica], action=action, challenge=challenge)
        self.assertEqual(resp.code, 201)
        return resp.json()["response"]

    def entries(self, project=None):
        return [validateEntry(fields) for _, fields in
                self.cluster.xrange(streamKey(project or self.project))]

    async def served(self, replica, delegation=None):
        answer = await self.world.askReplica(replica, (delegation or self.delegation).value)
        return answer.status, sorted(answer.values("TXT"))


class TwoReplicasTests(DelegationCase):
    def test_servedEverywhereThroughTheCNAMEUntilCleanUp(self):
        async def go():
            challenge = self.env.chain.challenges[0]
            key = challenge["spec"]["key"]
            # before any Present: the name does not exist, authoritatively
            self.assertEqual(await self.served(1), ("NXDOMAIN", []))

            response = await self.present(0)
            self.assertTrue(response["success"], response)
            # the other replica serves it right after the 201
            self.assertEqual(await self.served(1), ("NOERROR", [key]))
            [present] = self.entries()
            self.assertEqual(present["payload"]["delegation"],
                             self.delegation.asPayload(False))

            # the user adds the CNAME instead of the TXT; cert-manager still waits
            await self.world.addCNAME(self.delegation)
            through = await self.world.askResolver(self.delegation.name)
            self.assertEqual((through.status, through.values("TXT")), ("NOERROR", [key]))
            self.assertIn(self.delegation.value + ".", through.values("CNAME"))
            # the follower's next look at the challenge sees the CNAME: said once
            await self.present(1)  # cert-manager's retry: the other replica trusts the config too
            cm.setChallengeStatus(self.env.api.store, challenge, "pending",
                                  cm.propagationReason(challenge["spec"]["dnsName"]))
            await pollUntil(reactor, lambda: any(
                e["operation"] == "delegation_active" for e in self.entries()), 20.0, 0.1,
                what="the delegation_active event")
            cm.setChallengeStatus(self.env.api.store, challenge, "valid", cm.AUTHORIZED_REASON)
            await pollUntil(reactor, lambda: len(self.entries()) >= 4, 20.0, 0.1,
                            what="the verified status")
            operations = [e["operation"] for e in self.entries()]
            self.assertEqual(operations.count("delegation_active"), 1, operations)
            active = [e for e in self.entries() if e["operation"] == "delegation_active"][0]
            self.assertEqual(active["payload"]["delegation"], self.delegation.asPayload(True))
            self.assertEqual(active["payload"]["challenge_id"], present["payload"]["challenge_id"])

            # the renewal: a new key, presented to the other replica, needs nobody
            renewal = cm.renewal(self.env.chain, revision=2, keySeed="renewal")
            renewal.addTo(self.env.api.store, certificate=False)
            renewed = renewal.challenges[0]
            response = await self.present(1, challenge=renewed)
            self.assertTrue(response["success"], response)
            last = self.entries()[-1]
            self.assertEqual((last["operation"], last["payload"]["delegation"]["active"]),
                             ("present", True))
            self.assertEqual(await self.served(0),
                             ("NOERROR", sorted([key, renewed["spec"]["key"]])))

            # CleanUp withdraws each key; with none left the name is gone again
            self.assertTrue((await self.present(1, "CleanUp", challenge))["success"])
            self.assertEqual(await self.served(0), ("NOERROR", [renewed["spec"]["key"]]))
            self.assertTrue((await self.present(0, "CleanUp", renewed))["success"])
            await self.world.unbound.flush()
            gone = await self.world.askResolver(self.delegation.name)
            self.assertEqual((gone.status, gone.values("TXT")), ("NXDOMAIN", []))
        return defer.ensureDeferred(go())

    def test_anotherProjectNeverServedUnderTheOwnersName(self):
        """A second tenant adds the same domain: its keys go to its own name only, and a
        Present that followed the owner's CNAME into the zone is refused."""
        async def go():
            await self.world.addCNAME(self.delegation)  # the owner delegated the domain
            other = str(uuid.uuid4())
            intruder = self.chain(other, "ad-shop-example-com-2")
            intruder.addTo(self.env.api.store)
            challenge = intruder.challenges[0]
            response = await self.present(0, challenge=challenge)
            self.assertTrue(response["success"], response)
            theirs = self.world.delegationFor(other)
            self.assertNotEqual(theirs.value, self.delegation.value)
            self.assertEqual(await self.served(1, theirs),
                             ("NOERROR", [challenge["spec"]["key"]]))
            self.assertEqual(await self.served(1), ("NXDOMAIN", []))
            through = await self.world.askResolver(self.delegation.name)
            self.assertEqual(through.values("TXT"), [])
            [offer] = self.entries(other)
            self.assertEqual(offer["payload"]["delegation"], theirs.asPayload(False))

            # with cnameStrategy: Follow cert-manager follows the owner's CNAME and asks
            # for the key at the owner's name: refused, nothing served there
            following = self.chain(other, "ad-shop-example-com-3", keySeed="follow")
            challenge = following.challenges[0]
            challenge["spec"]["solver"]["dns01"]["cnameStrategy"] = "Follow"
            following.addTo(self.env.api.store)
            request = dict(following.request(challenge, resourceNamespace="cert-manager",
                                             config=self.env.issuerConfig()).raw,
                           resolvedFQDN=self.delegation.value + ".",
                           resolvedZone=self.world.zone + ".")
            resp = await self.env.post(self.daemons[1], requestObject=request)
            refusal = resp.json()["response"]
            self.assertFalse(refusal["success"])
            self.assertIn("not the delegation name of project %s" % (other,),
                          refusal["status"]["message"])
            self.assertEqual(await self.served(0), ("NXDOMAIN", []))
            self.assertEqual(len(self.entries(other)), 1)
        return defer.ensureDeferred(go())


class ExpiryTests(DelegationCase):
    replicas = 1
    extraArgs = ("--idempotency-window", "3s")

    def test_keysExpireWithoutCleanUp(self):
        async def go():
            key = self.env.chain.challenges[0]["spec"]["key"]
            self.assertTrue((await self.present(0))["success"])
            self.assertEqual(await self.served(0), ("NOERROR", [key]))
            for _ in range(20):  # the 3 s window, without a CleanUp
                if await self.served(0) == ("NXDOMAIN", []):
                    break
                await deferLater(reactor, 0.5, lambda: None)
            else:
                self.fail("the key was still served 10 s after its 3 s window")
        return defer.ensureDeferred(go())
