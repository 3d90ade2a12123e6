"""The delegated authenticator chain: front proxy, client certificate, token, anonymous."""
import datetime
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.testing import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from kibaship_dns01 import metrics
from kibaship_dns01.auth import authconfig as ac
from kibaship_dns01.auth import authn, headers
from kibaship_dns01.auth.peer import PeerCertificates
from kibaship_dns01.auth.x509verify import verifyClientChain
from kibaship_dns01.auth.types import (
    ANONYMOUS_USER, AUTHENTICATED, UNAUTHENTICATED, Unauthenticated, UserInfo)
from kibaship_dns01.interfaces import IAuthenticator
from kibaship_dns01.kube.errors import Unavailable
from kibaship_dns01.testing import pki
from kibaship_dns01.testing.fakekube import FakeKubernetesClient
from tests.test_auth_authz import HeldClient

NOW = datetime.datetime.now(datetime.timezone.utc)
TOKEN = "sa-token-abc123"
TOKEN_USER = {"username": "system:serviceaccount:cert-manager:cert-manager", "uid": "u-9",
              "groups": ["system:serviceaccounts", "system:serviceaccounts:cert-manager"],
              "extra": {"authentication.kubernetes.io/pod-name": ["cert-manager-0"]}}


def withoutCommonName(ca):
    """A client certificate whose subject has only an O (pki.py always sets a CN)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "o")]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca.key, hashes.SHA256()))
    return pki.KeyPair(cert, key)


class FakeConnection:
    """Stands for one TLS connection: the key of the per-connection verification."""

    def __init__(self, chain=()):
        self.chain = [pair.cert for pair in chain]


def makeRequest(headers=(), chain=(), connection=None):
    request = DummyRequest([b""])
    for name, value in headers:
        request.requestHeaders.addRawHeader(name, value)
    request.connection = request.channel = connection or FakeConnection(chain)
    return request


class AuthenticatorTestsMixin:
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(time.time())
        self.frontProxyCA = pki.makeCA("front-proxy-ca")
        self.clientCA = pki.makeCA("kubernetes")
        self.config = ac.parseAuthenticationConfig(ac.makeAuthenticationConfigMap(
            requestHeaderCAPEM=self.frontProxyCA.certPEM, clientCAPEM=self.clientCA.certPEM,
            uidHeaders=("X-Remote-Uid",)))
        self.kube = FakeKubernetesClient()
        self.tokenCalls = []

        def review(token):
            self.tokenCalls.append(token)
            if token == TOKEN:
                return {"authenticated": True, "user": TOKEN_USER}
            return {"authenticated": False, "error": "token has expired"}

        self.kube.setTokenReviewHandler(review)
        self.buildAuthenticator(self.kube)

    def buildAuthenticator(self, client, **kw):
        self.tokens = authn.TokenReviewAuthenticator(client, self.clock, **kw)
        self.authenticator = authn.DelegatingAuthenticator(
            lambda: self.config, self.tokens, self.clock,
            peers=PeerCertificates(connectionOf=lambda r: r.connection,
                                   readChain=lambda connection: connection.chain))

    def authenticate(self, request):
        return self.successResultOf(self.authenticator.authenticate(request))

    def refuse(self, request):
        return self.failureResultOf(self.authenticator.authenticate(request),
                                    Unauthenticated).value.message

    def proxyRequest(self, cn="front-proxy-client", extraHeaders=(), **kw):
        pair = pki.clientPair(self.frontProxyCA, cn, **kw)
        headers = [(b"X-Remote-User", b"jane"), (b"X-Remote-Group", b"devs"),
                   (b"X-Remote-Group", b"ops")] + list(extraHeaders)
        return makeRequest(headers, [pair])


class FrontProxyTests(AuthenticatorTestsMixin, SynchronousTestCase):
    def test_interface(self):
        verifyObject(IAuthenticator, self.authenticator)

    def test_headersTrustedWithAllowedCertificate(self):
        request = self.proxyRequest(extraHeaders=[
            (b"X-Remote-Uid", b"uid-7"), (b"X-Remote-Extra-Scopes", b"view"),
            (b"X-Remote-Extra-Scopes", b"edit"), (b"x-remote-extra-Acme.com%2fProject", b"P-1")])
        user = self.authenticate(request)
        self.assertEqual(user, UserInfo(
            name="jane", groups=("devs", "ops", AUTHENTICATED), uid="uid-7",
            extra=(("acme.com/project", ("P-1",)), ("scopes", ("view", "edit")))))

    def test_identityHeadersStrippedAfterUse(self):
        request = self.proxyRequest(extraHeaders=[(b"X-Remote-Extra-A", b"1")])
        self.authenticate(request)
        for name in (b"x-remote-user", b"x-remote-group", b"x-remote-extra-a"):
            self.assertFalse(request.requestHeaders.hasHeader(name), name)

    def test_cnNotAllowed(self):
        message = self.refuse(self.proxyRequest(cn="intruder"))
        self.assertIn("x509: subject with cn=intruder is not in the allowed list", message)
        self.assertIn("requestheader-allowed-names", message)

    def test_anyCNWhenAllowedNamesEmpty(self):
        self.config = ac.parseAuthenticationConfig(ac.makeAuthenticationConfigMap(
            requestHeaderCAPEM=self.frontProxyCA.certPEM, allowedNames=()))
        self.assertEqual(self.authenticate(self.proxyRequest(cn="anything")).name, "jane")

    def test_expiredProxyCertificate(self):
        message = self.refuse(self.proxyRequest(notBefore=NOW - datetime.timedelta(days=9),
                                                notAfter=NOW - datetime.timedelta(days=1)))
        self.assertIn("front-proxy client certificate", message)
        self.assertIn("has expired", message)

    def test_validityJudgedAtClockTime(self):
        request = self.proxyRequest(days=2)
        self.clock.advance(3 * 86400)
        self.assertIn("has expired", self.refuse(request))

    def test_proxyCertificateWithoutUserHeaderIsNotAnIdentity(self):
        """Go: no user header means this method does not apply; the certificate is
        then judged as a plain client certificate, which it is not."""
        pair = pki.clientPair(self.frontProxyCA, "front-proxy-client")
        message = self.refuse(makeRequest([], [pair]))
        self.assertIn("client certificate", message)
        self.assertIn("unknown authority", message)

    def test_forgedHeadersWithoutCertificateIgnoredAndStripped(self):
        request = makeRequest([(b"X-Remote-User", b"system:admin"),
                               (b"X-Remote-Group", b"system:masters"),
                               (b"X-Remote-Extra-Scopes", b"all")])
        self.assertEqual(self.authenticate(request), ANONYMOUS_USER)
        self.assertFalse(request.requestHeaders.hasHeader(b"x-remote-user"))
        self.assertFalse(request.requestHeaders.hasHeader(b"x-remote-extra-scopes"))

    def test_forgedHeadersWithClientCertificateIgnored(self):
        pair = pki.clientPair(self.clientCA, "bob", orgs=("staff",))
        request = makeRequest([(b"X-Remote-User", b"system:admin"),
                               (b"X-Remote-Group", b"system:masters")], [pair])
        self.assertEqual(self.authenticate(request),
                         UserInfo(name="bob", groups=("staff", AUTHENTICATED)))


class PerConnectionTests(AuthenticatorTestsMixin, SynchronousTestCase):
    """A chain is verified once per connection and CA bundle, never past its notAfter."""

    def buildAuthenticator(self, client, **kw):
        self.verified = []

        def counting(chain, roots, now):
            self.verified.append(chain[0].subject.rfc4514_string())
            return verifyClientChain(chain, roots, now)
        self.tokens = authn.TokenReviewAuthenticator(client, self.clock, **kw)
        self.authenticator = authn.DelegatingAuthenticator(
            lambda: self.config, self.tokens, self.clock, peers=PeerCertificates(
                connectionOf=lambda r: r.connection, readChain=lambda c: c.chain,
                verify=counting))

    def onConnection(self, connection):
        return makeRequest([(b"X-Remote-User", b"jane")], connection=connection)

    def test_keepAliveRequestsVerifyOnce(self):
        connection = FakeConnection([pki.clientPair(self.frontProxyCA, "front-proxy-client")])
        for _ in range(3):
            self.assertEqual(self.authenticate(self.onConnection(connection)).name, "jane")
        self.assertEqual(self.verified, ["CN=front-proxy-client"])
        other = FakeConnection([pki.clientPair(self.frontProxyCA, "front-proxy-client")])
        self.authenticate(self.onConnection(other))
        self.assertEqual(len(self.verified), 2, "a new connection is verified again")

    def test_notHonouredPastNotAfterOnAnOpenConnection(self):
        pair = pki.clientPair(self.frontProxyCA, "front-proxy-client",
                              notBefore=NOW - datetime.timedelta(days=1),
                              notAfter=NOW + datetime.timedelta(hours=1))
        connection = FakeConnection([pair])
        self.authenticate(self.onConnection(connection))
        self.clock.advance(2 * 3600)
        message = self.refuse(self.onConnection(connection))
        self.assertIn("front-proxy client certificate", message)
        self.assertIn("has expired", message)

    def test_aRotatedCAAppliesToAnOpenConnection(self):
        connection = FakeConnection([pki.clientPair(self.frontProxyCA, "front-proxy-client")])
        self.authenticate(self.onConnection(connection))
        self.config = ac.parseAuthenticationConfig(ac.makeAuthenticationConfigMap(
            requestHeaderCAPEM=pki.makeCA("front-proxy-ca-2").certPEM))
        self.assertIn("unknown authority", self.refuse(self.onConnection(connection)))
        self.assertEqual(len(self.verified), 2)

    def test_failuresAreNotRemembered(self):
        pair = pki.clientPair(self.frontProxyCA, "front-proxy-client",
                              notBefore=NOW + datetime.timedelta(hours=1),
                              notAfter=NOW + datetime.timedelta(days=1))
        connection = FakeConnection([pair])
        self.assertIn("not yet valid", self.refuse(self.onConnection(connection)))
        self.clock.advance(2 * 3600)
        self.assertEqual(self.authenticate(self.onConnection(connection)).name, "jane")


class ClientCertificateTests(AuthenticatorTestsMixin, SynchronousTestCase):
    def test_userIsCNGroupsAreO(self):
        pair = pki.clientPair(self.clientCA, "alice", orgs=("a", "b"))
        self.assertEqual(self.authenticate(makeRequest([], [pair])),
                         UserInfo(name="alice", groups=("a", "b", AUTHENTICATED)))

    def test_unknownAuthority(self):
        stranger = pki.makeCA("stranger")
        message = self.refuse(makeRequest([], [pki.clientPair(stranger, "mallory")]))
        self.assertIn("CN=mallory", message)
        self.assertIn("x509: certificate signed by unknown authority", message)

    def test_noCommonName(self):
        pair = withoutCommonName(self.clientCA)
        self.assertIn("has no common name", self.refuse(makeRequest([], [pair])))

    def test_serverCertificateRefused(self):
        pair = pki.issue(self.clientCA, "web", server=True)
        self.assertIn("incompatible key usage", self.refuse(makeRequest([], [pair])))

    def test_configNotLoadedYet(self):
        self.config = None
        pair = pki.clientPair(self.clientCA, "alice")
        self.assertIn("has not been loaded", self.refuse(makeRequest([], [pair])))
        self.assertEqual(self.authenticate(makeRequest()), ANONYMOUS_USER)

    def test_noCAConfigured(self):
        self.config = ac.AuthenticationConfig()
        pair = pki.clientPair(self.clientCA, "alice")
        self.assertIn("names no CA", self.refuse(makeRequest([], [pair])))

    def test_failedCertificateButValidToken(self):
        """As Go's union: the first method yielding a user wins."""
        stranger = pki.makeCA("stranger")
        request = makeRequest([(b"Authorization", b"Bearer " + TOKEN.encode())],
                              [pki.clientPair(stranger, "mallory")])
        self.assertEqual(self.authenticate(request).name, TOKEN_USER["username"])


class TokenTests(AuthenticatorTestsMixin, SynchronousTestCase):
    def bearer(self, token=TOKEN):
        return makeRequest([(b"Authorization", b"Bearer " + token.encode())])

    def test_tokenReviewUser(self):
        request = self.bearer()
        user = self.authenticate(request)
        self.assertEqual(user, UserInfo(
            name=TOKEN_USER["username"], uid="u-9",
            groups=tuple(TOKEN_USER["groups"]) + (AUTHENTICATED,),
            extra=(("authentication.kubernetes.io/pod-name", ("cert-manager-0",)),)))
        self.assertFalse(request.requestHeaders.hasHeader(b"authorization"))
        self.assertEqual(self.kube.calls[-1].body["spec"], {"token": TOKEN})

    def test_invalidToken(self):
        message = self.refuse(self.bearer("forged"))
        self.assertEqual(message, "invalid bearer token: token has expired")

    def test_notBearerIgnored(self):
        for value in (b"Basic dXNlcjpwdw==", b"Bearer", b"Bearer ", b"token"):
            self.assertEqual(self.authenticate(makeRequest([(b"Authorization", value)])),
                             ANONYMOUS_USER, value)
        self.assertEqual(self.tokenCalls, [])

    def test_schemeCaseInsensitive(self):
        request = makeRequest([(b"Authorization", b"bearer " + TOKEN.encode())])
        self.assertEqual(self.authenticate(request).name, TOKEN_USER["username"])

    def test_bothOutcomesCached(self):
        for _ in range(3):
            self.authenticate(self.bearer())
            self.refuse(self.bearer("forged"))
        self.assertEqual(self.tokenCalls, [TOKEN, "forged"])
        self.clock.advance(10)
        self.authenticate(self.bearer())
        self.refuse(self.bearer("forged"))
        self.assertEqual(len(self.tokenCalls), 4)

    def test_apiErrorNotCached(self):
        self.kube.injectError(Unavailable("POST tokenreviews: connection refused"), verb="post")
        message = self.refuse(self.bearer())
        self.assertIn("could not be verified", message)
        self.assertIn("connection refused", message)
        self.assertEqual(self.authenticate(self.bearer()).name, TOKEN_USER["username"])

    def test_concurrentLookupsCollapse(self):
        held = HeldClient(self.kube)
        self.buildAuthenticator(held, timeout=3)
        pending = [self.authenticator.authenticate(self.bearer()) for _ in range(20)]
        self.assertEqual(len(held.held), 1)
        held.release()
        for d in pending:
            self.assertEqual(self.successResultOf(d).name, TOKEN_USER["username"])
        self.assertEqual(self.tokenCalls, [TOKEN])

    def test_timeout(self):
        held = HeldClient(self.kube)
        self.buildAuthenticator(held, timeout=3)
        d = self.authenticator.authenticate(self.bearer())
        self.clock.advance(3)
        message = self.failureResultOf(d, Unauthenticated).value.message
        self.assertIn("did not answer within 3s", message)

    def test_tokenNeverLogged(self):
        with capturedLogs() as events:
            self.refuse(self.bearer("secret-token-xyz"))
            self.authenticate(self.bearer())
        self.assertTrue(events)
        for event in events:
            text = formatEvent(event) + repr(event)
            self.assertNotIn("secret-token-xyz", text)
            self.assertNotIn(TOKEN, text)


class OutcomeTests(AuthenticatorTestsMixin, SynchronousTestCase):
    def sample(self, method, result):
        return metrics.REGISTRY.get_sample_value(
            "kibaship_dns01_authentication_total", {"method": method, "result": result}) or 0

    def test_counted(self):
        keys = [("anonymous", "success"), ("front_proxy", "success"), ("client_cert", "success"),
                ("token", "success"), ("token", "failure"), ("front_proxy", "failure")]
        before = {k: self.sample(*k) for k in keys}
        self.authenticate(makeRequest())
        self.authenticate(self.proxyRequest())
        self.authenticate(makeRequest([], [pki.clientPair(self.clientCA, "c")]))
        self.authenticate(makeRequest([(b"Authorization", b"Bearer " + TOKEN.encode())]))
        self.refuse(makeRequest([(b"Authorization", b"Bearer nope")]))
        self.refuse(self.proxyRequest(cn="intruder"))
        for key in keys:
            self.assertEqual(self.sample(*key), before[key] + 1, key)

    def test_authenticatedGroupRules(self):
        add = authn.withAuthenticatedGroup
        self.assertEqual(add(UserInfo(name="a")).groups, (AUTHENTICATED,))
        self.assertEqual(add(ANONYMOUS_USER), ANONYMOUS_USER)
        odd = UserInfo(name="b", groups=(UNAUTHENTICATED,))
        self.assertEqual(add(odd), odd)
        already = UserInfo(name="c", groups=(AUTHENTICATED, "x"))
        self.assertEqual(add(already), already)

    def test_extraKeyUnescaping(self):
        self.assertEqual(headers.unescapeExtraKey("acme.com%2fproject"), "acme.com/project")
        self.assertEqual(headers.unescapeExtraKey("bad%zz"), "bad%zz")
        self.assertEqual(headers.unescapeExtraKey("a+b"), "a+b")
