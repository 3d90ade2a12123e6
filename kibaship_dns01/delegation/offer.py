"""Which challenges are offered a delegation, and serving their keys.

:class:`DelegationOffer` is what the solver and the Challenge follower hold
when ``--delegation-zone`` is set.  It decides eligibility, names the
delegation, stores and withdraws keys, and asks whether the CNAME is there.

Eligibility is where the takeover case is closed a second time (the label's
project binding is the first): a key is served under a project's label only
when that project comes from the ``platform.kibaship.com/project-uuid`` label
of a Certificate in one of ``--delegation-namespaces`` (default
``certificates``, where the Kibaship operator creates them).  A project taken
from an issuer's ``defaultProjectUUID`` is refused: a namespaced Issuer's
config is written by whoever may create Issuers there, and it could otherwise
name another tenant's project and have its keys served under that project's
labels.  Likewise a Certificate in any other namespace: whoever may create
Certificates there could label it with another tenant's project.
"""
import attr

from kibaship_dns01.names import bareName, isWithin

#: ``--delegation-namespaces`` value meaning every namespace
ALL_NAMESPACES = "*"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Ineligible:
    """Why a challenge gets no delegation (logged with its Present)."""

    reason: str
    message: str


class DelegationOffer:
    """See the module docstring.

    :param namer: a :class:`~kibaship_dns01.delegation.names.DelegationNamer`.
    :param store: an ``IDelegationStore``.
    :param checker: an ``ICNAMEChecker``.
    :param namespaces: namespaces whose Certificates are eligible, or ``("*",)``.
    :param keyTTL: seconds a served key lives without a CleanUp (the idempotency window).
    """

    def __init__(self, namer, store, checker, namespaces, keyTTL):
        self.namer = namer
        self.store = store
        self.checker = checker
        self._namespaces = frozenset(namespaces)
        self._keyTTL = keyTTL

    @property
    def zone(self):
        return self.namer.zone

    def delegationFor(self, context, dnsName):
        """The :class:`~kibaship_dns01.delegation.names.Delegation` of a challenge in
        ``context`` (a ``ProjectContext``), or an :class:`Ineligible` saying why not."""
        namespace = context.certificateNamespace or context.challengeNamespace
        if context.projectFromDefault:
            return Ineligible("default_project", (
                "project %s comes from the issuer's defaultProjectUUID, not from a "
                "platform.kibaship.com/project-uuid label: no delegation is offered"
                % (context.projectUUID,)))
        if ALL_NAMESPACES not in self._namespaces and namespace not in self._namespaces:
            return Ineligible("namespace", (
                "Certificates in namespace %s are not offered delegation (--delegation-namespaces"
                " is %s)" % (namespace, ",".join(sorted(self._namespaces)))))
        return self.namer.delegationFor(context.projectUUID, dnsName)

    def zoneName(self, fqdn):
        """``fqdn`` (bare, lower case) when it lies in the delegation zone, else ``None``."""
        name = bareName(fqdn)
        return name if isWithin(name, self.zone) else None

    def foreignName(self, fqdn, delegation):
        """``fqdn`` (bare) when it lies in the delegation zone but is not ``delegation``'s
        own name - the domain's CNAME points at another project's name - else ``None``."""
        name = self.zoneName(fqdn)
        return name if name and name != delegation.value else None

    def serve(self, delegation, key):
        """Serve ``key`` at the delegation's label (a Deferred firing once stored)."""
        return self.store.add(delegation.label, key, self._keyTTL)

    def withdraw(self, delegation, key):
        return self.store.withdraw(delegation.label, key)

    def isActive(self, delegation):
        """Whether the user's CNAME is in place: ``True``/``False``/``None``, never fails."""
        return self.checker.check(delegation.name, delegation.value)
