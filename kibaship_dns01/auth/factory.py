"""One call that wires delegated authentication and authorization together.

``service.py`` adds the returned watcher as a child service (it loads and
watches the ConfigMap) and to ``/readyz``; the site takes the authenticator
and the authorizer.
"""
import attr

from kibaship_dns01.auth.authconfig import AuthConfigWatcher, tlsClientCAListener
from kibaship_dns01.auth.authn import DEFAULT_TTL, DelegatingAuthenticator, TokenReviewAuthenticator
from kibaship_dns01.auth.authz import DelegatingAuthorizer

DEFAULT_REVIEW_TIMEOUT = 10.0


@attr.s(frozen=True, auto_attribs=True)
class Auth:
    """What :func:`buildAuth` returns; unpacks as ``(watcher, authenticator, authorizer)``."""

    watcher: AuthConfigWatcher
    authenticator: DelegatingAuthenticator
    authorizer: DelegatingAuthorizer

    def __iter__(self):
        return iter((self.watcher, self.authenticator, self.authorizer))


def buildAuth(kubeClient, clock, setClientCAs=None, ttl=DEFAULT_TTL,
              timeout=DEFAULT_REVIEW_TIMEOUT, informerFactory=None, peers=None):
    """Build the watcher, the authenticator and the authorizer.

    :param kubeClient: ``IKubernetesClient`` (ConfigMap watch, reviews).
    :param clock: ``IReactorTime`` (caches, timeouts, certificate validity).
    :param setClientCAs: ``ReloadingServerTLS.setClientCAs``, told of every CA change.
    :param ttl: seconds a token or authorization answer is cached (allow and deny).
    :param timeout: seconds one TokenReview / SubjectAccessReview may take.
    :param peers: the per-connection client-certificate verifier (tests count with it).
    """
    kw = {} if informerFactory is None else {"informerFactory": informerFactory}
    watcher = AuthConfigWatcher(kubeClient, clock, **kw)
    if setClientCAs is not None:
        watcher.addListener(tlsClientCAListener(setClientCAs))
    tokens = TokenReviewAuthenticator(kubeClient, clock, successTTL=ttl, failureTTL=ttl,
                                      timeout=timeout)
    authenticator = DelegatingAuthenticator(lambda: watcher.current, tokens, clock, peers=peers)
    authorizer = DelegatingAuthorizer(kubeClient, clock, allowTTL=ttl, denyTTL=ttl,
                                      timeout=timeout)
    return Auth(watcher, authenticator, authorizer)
