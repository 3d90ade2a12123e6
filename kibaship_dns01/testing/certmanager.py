"""Realistic cert-manager object chains for tests.

cert-manager (v1.x) creates, for one Certificate:

- a CertificateRequest named ``<certificate>-<revision>``, with the
  Certificate's labels copied verbatim, its annotations copied plus
  ``cert-manager.io/certificate-name`` / ``-revision`` /
  ``private-key-secret-name``, and a controller ownerReference to the
  Certificate;
- an Order named ``<request>-<hash>`` with the request's labels *and*
  annotations, and a controller ownerReference to the request;
- one Challenge per authorization, named ``<order>-<hash>``, with no labels,
  the ``finalizer.acme.cert-manager.io`` finalizer and a controller
  ownerReference to the Order.  A wildcard name ``*.example.com`` becomes a
  Challenge with ``dnsName: example.com`` and ``wildcard: true``.

:func:`buildChain` builds exactly that (UIDs assigned up front so the
ownerReferences are right), and :class:`CertificateChain` adds it to a
:class:`~kibaship_dns01.testing.kubestore.KubeStore` and makes the matching
:class:`~kibaship_dns01.challenge.ChallengeRequest`.
"""
import base64
import hashlib
import json
import struct
import uuid

import attr

from kibaship_dns01.challenge import PRESENT, ChallengeRequest
from kibaship_dns01.project import (
    APPLICATION_LABEL, DOMAIN_LABEL, NAME_ANNOTATION, PROJECT_LABEL, SLUG_LABEL, WORKSPACE_LABEL)

DEFAULT_GROUP = "dns.kibaship.com"
DEFAULT_SOLVER = "kibaship"
CLUSTER_ISSUER = {"name": "certmanager-acme-issuer", "kind": "ClusterIssuer",
                  "group": "cert-manager.io"}
CERTIFICATE_NAME_ANNOTATION = "cert-manager.io/certificate-name"
CHALLENGE_FINALIZER = "finalizer.acme.cert-manager.io"

PROJECT_UUID = "0b6f3a2e-5c1d-4e8f-9a7b-1c2d3e4f5a6b"
WORKSPACE_UUID = "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
APPLICATION_UUID = "2b3c4d5e-6f7a-4b9c-8d1e-2f3a4b5c6d7e"
DOMAIN_UUID = "3c4d5e6f-7a8b-4c0d-9e2f-3a4b5c6d7e8f"


def kibashipLabels(projectUUID=PROJECT_UUID, workspaceUUID=WORKSPACE_UUID,
                   applicationUUID=APPLICATION_UUID, domainUUID=DOMAIN_UUID, slug="shop"):
    """The labels the Kibaship operator puts on an ApplicationDomain Certificate
    (``None`` leaves one out)."""
    values = {PROJECT_LABEL: projectUUID, WORKSPACE_LABEL: workspaceUUID,
              APPLICATION_LABEL: applicationUUID, DOMAIN_LABEL: domainUUID, SLUG_LABEL: slug}
    return {key: value for key, value in values.items() if value is not None}


def _fnv32a(data):
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def computeName(prefix, spec):
    """cert-manager's ``apiutil.ComputeName``: ``<prefix>-<fnv32a(spec JSON)>``."""
    digest = _fnv32a(json.dumps(spec, sort_keys=True).encode())
    return "%s-%d" % (prefix[:52].rstrip("-"), digest)


def challengeKey(dnsName, wildcard=False, seed=""):
    """A DNS01 key as cert-manager computes it: base64url(sha256(keyAuthorization)),
    unpadded; deterministic in its arguments."""
    keyAuthorization = "%s%s%s.thumbprint" % (seed, "*." if wildcard else "", dnsName)
    digest = hashlib.sha256(keyAuthorization.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def ownerReference(owner):
    """A controller ownerReference to ``owner`` (``metav1.NewControllerRef``)."""
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def _meta(name, namespace, labels=None, annotations=None, owner=None):
    meta = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())}
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner is not None:
        meta["ownerReferences"] = [ownerReference(owner)]
    return meta


def _identifier(name):
    """``*.example.com`` -> (``example.com``, True)."""
    return (name[2:], True) if name.startswith("*.") else (name, False)


@attr.s(auto_attribs=True)
class CertificateChain:
    """One Certificate's objects as cert-manager created them (mutable dicts).

    ``certificate`` is ``None`` for a CertificateRequest created by hand.
    """

    certificate: object
    certificateRequest: dict
    order: dict
    challenges: list

    def objects(self):
        """Every object, owners first (the order cert-manager creates them in)."""
        head = [self.certificate] if self.certificate is not None else []
        return head + [self.certificateRequest, self.order] + list(self.challenges)

    def addTo(self, store, certificate=True):
        """Add every object to ``store``; :return: self.

        :param certificate: ``False`` leaves the Certificate out (a :func:`renewal`'s,
            which already exists)."""
        for obj in self.objects():
            if certificate or obj is not self.certificate:
                store.add(obj)
        return self

    def removeFrom(self, store):
        """Delete every object from ``store``, dependents first (as the garbage
        collector does once cert-manager lets go); :return: self."""
        for obj in reversed(self.objects()):
            store.delete(obj)
        return self

    def challenge(self, dnsName=None, wildcard=False):
        """The Challenge for ``dnsName`` (default: the first one) and wildcard flag."""
        for ch in self.challenges:
            if (dnsName is None or ch["spec"]["dnsName"] == dnsName) and \
                    ch["spec"]["wildcard"] == wildcard:
                return ch
        raise KeyError("no challenge for %s (wildcard=%s)" % (dnsName, wildcard))

    def request(self, challenge=None, resourceNamespace=None, action=PRESENT, config=None):
        """The ChallengeRequest cert-manager sends for ``challenge``.

        ``resourceNamespace`` defaults to the Challenge's namespace (an
        ``Issuer``); pass cert-manager's namespace for a ``ClusterIssuer``.
        """
        challenge = challenge if challenge is not None else self.challenges[0]
        return requestFor(challenge, resourceNamespace, action, config)


def requestFor(challenge, resourceNamespace=None, action=PRESENT, config=None):
    """A :class:`ChallengeRequest` for a Challenge object (SPEC §2 fields)."""
    spec = challenge["spec"]
    dnsName = spec["dnsName"]
    zone = ".".join(dnsName.split(".")[-2:]) + "."
    raw = {"uid": "", "action": action, "type": "dns-01", "dnsName": dnsName,
           "key": spec["key"], "resourceNamespace": resourceNamespace
           or challenge["metadata"]["namespace"], "resolvedFQDN": "_acme-challenge.%s." % dnsName,
           "resolvedZone": zone, "allowAmbientCredentials": True}
    if config is not None:
        raw["config"] = config
    return ChallengeRequest(raw=raw, config=config, **{k: v for k, v in raw.items()
                                                       if k != "config"})


def buildChain(certificateName="ad-shop-example-com", namespace="certificates",
               dnsNames=("shop.example.com",), labels=None, annotations=None, issuerRef=None,
               groupName=DEFAULT_GROUP, solverName=DEFAULT_SOLVER, revision=1,
               copyLabels=True, withCertificate=True, keySeed=None, config=None,
               displayName="Shop"):
    """Build the cert-manager objects behind one Certificate.

    :param labels: the Certificate's labels; ``None`` means :func:`kibashipLabels`.
    :param copyLabels: ``False`` leaves the request and Order unlabelled, as
        when the labels were added to the Certificate after issuance started.
    :param withCertificate: ``False`` builds a hand-made CertificateRequest
        (no Certificate, no ownerReference, no certificate-name annotation).
    :param keySeed: varies the challenge keys; by default they derive from the
        namespace and Certificate name, so two chains share keys only when
        given the same ``keySeed`` (an ACME authorization reused by two Orders).
    """
    labels = kibashipLabels() if labels is None else dict(labels)
    annotations = dict(annotations or {})
    if displayName is not None:
        annotations.setdefault(NAME_ANNOTATION, displayName)
    issuerRef = dict(issuerRef or CLUSTER_ISSUER)
    certificate = None
    requestAnnotations = {}
    if withCertificate:
        certificate = {
            "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
            "metadata": _meta(certificateName, namespace, labels, annotations),
            "spec": {"secretName": certificateName + "-tls", "dnsNames": list(dnsNames),
                     "issuerRef": issuerRef}}
        requestAnnotations = dict(annotations)
        requestAnnotations.update({
            CERTIFICATE_NAME_ANNOTATION: certificateName,
            "cert-manager.io/certificate-revision": str(revision),
            "cert-manager.io/private-key-secret-name": certificateName + "-abcde"})
    requestLabels = labels if copyLabels else {}
    request = {
        "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
        "metadata": _meta("%s-%d" % (certificateName[:52], revision), namespace, requestLabels,
                          requestAnnotations, certificate),
        "spec": {"request": base64.b64encode(b"-----BEGIN CERTIFICATE REQUEST-----").decode(),
                 "issuerRef": issuerRef, "usages": ["digital signature", "key encipherment"]}}
    order = _order(request, dnsNames, issuerRef)
    seed = "%s/%s" % (namespace, certificateName) if keySeed is None else keySeed
    challenges = [_challenge(order, name, issuerRef, groupName, solverName, seed, config)
                  for name in dnsNames]
    return CertificateChain(certificate, request, order, challenges)


def _order(request, dnsNames, issuerRef):
    meta = request["metadata"]
    spec = {"request": request["spec"]["request"], "issuerRef": issuerRef,
            "dnsNames": list(dnsNames)}
    name = computeName(meta["name"], dict(spec, request=None))
    return {"apiVersion": "acme.cert-manager.io/v1", "kind": "Order",
            "metadata": _meta(name, meta["namespace"], meta.get("labels"),
                              meta.get("annotations"), request),
            "spec": spec, "status": {"state": "pending"}}


def _challenge(order, name, issuerRef, groupName, solverName, seed, config):
    dnsName, wildcard = _identifier(name)
    token = base64.urlsafe_b64encode(
        struct.pack(">I", _fnv32a((seed + name).encode())) * 8).rstrip(b"=").decode()
    webhook = {"groupName": groupName, "solverName": solverName}
    if config is not None:
        webhook["config"] = config
    spec = {"url": "https://acme.example/chall/" + token[:12],
            "authorizationURL": "https://acme.example/authz/" + token[:12],
            "dnsName": dnsName, "wildcard": wildcard, "type": "DNS-01", "token": token,
            "key": challengeKey(dnsName, wildcard, seed),
            "solver": {"dns01": {"webhook": webhook}}, "issuerRef": issuerRef}
    meta = _meta(computeName(order["metadata"]["name"], spec), order["metadata"]["namespace"],
                 owner=order)
    meta["finalizers"] = [CHALLENGE_FINALIZER]
    return {"apiVersion": "acme.cert-manager.io/v1", "kind": "Challenge", "metadata": meta,
            "spec": spec, "status": {"processing": True, "presented": False, "state": "pending"}}


def renewal(chain, revision, keySeed):
    """The next issuance of ``chain``'s Certificate, as cert-manager starts it: a new
    CertificateRequest (``revision``), Order and Challenges with new keys, owned by the
    same Certificate object (add it with ``addTo(store, certificate=False)``)."""
    certificate = chain.certificate
    meta, spec = certificate["metadata"], certificate["spec"]
    webhook = chain.challenges[0]["spec"]["solver"]["dns01"]["webhook"]
    new = buildChain(certificateName=meta["name"], namespace=meta["namespace"],
                     dnsNames=spec["dnsNames"], labels=meta.get("labels") or {},
                     issuerRef=spec["issuerRef"], groupName=webhook["groupName"],
                     solverName=webhook["solverName"], revision=revision, keySeed=keySeed,
                     config=webhook.get("config"), displayName=None)
    new.certificateRequest["metadata"]["ownerReferences"] = [ownerReference(certificate)]
    return CertificateChain(certificate, new.certificateRequest, new.order, new.challenges)


# --- what cert-manager writes while it works (status updates) -----------------

#: reason strings as cert-manager writes them (see tests/test_progress_phases.py for sources)
def propagationReason(dnsName):
    return ('Waiting for DNS-01 challenge propagation: DNS record for "%s" not yet propagated'
            % (dnsName,))


AUTHORIZED_REASON = "Successfully authorized domain"


def wrongValueReason(dnsName, found="a-stale-value"):
    return ("Error accepting authorization: acme: authorization error for %s: 403 "
            "urn:ietf:params:acme:error:unauthorized: Incorrect TXT record \"%s\" found at "
            "_acme-challenge.%s" % (dnsName, found, dnsName))


def _rfc3339(seconds):
    import datetime
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def setChallengeStatus(store, challenge, state, reason="", presented=True, processing=True,
                       at=None):
    """Write a Challenge's status as cert-manager's challenges controller does.

    :param at: Unix seconds of the write (``managedFields`` time), now by default.
    """
    meta = challenge["metadata"]
    status = {"state": state, "presented": presented, "processing": processing}
    if reason:
        status["reason"] = reason
    return store.updateStatus(challenge["apiVersion"], "Challenge", meta["namespace"],
                              meta["name"], status, manager="cert-manager-challenges",
                              at=None if at is None else _rfc3339(at))


def _certificateStatus(store, certificate, status):
    meta = certificate["metadata"]
    return store.updateStatus("cert-manager.io/v1", "Certificate", meta["namespace"],
                              meta["name"], status, manager="cert-manager-certificates")


def _condition(kind, status, reason, message, at):
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": _rfc3339(at), "observedGeneration": 1}


def setCertificateIssued(store, certificate, revision, at, days=90):
    """The Certificate after the issuing controller stored revision ``revision``."""
    return _certificateStatus(store, certificate, {
        "conditions": [_condition("Ready", "True", "Ready",
                                  "Certificate is up to date and has not expired", at)],
        "revision": revision, "notBefore": _rfc3339(at - 3600),
        "notAfter": _rfc3339(at + days * 86400), "renewalTime": _rfc3339(at + days * 57600)})


def setCertificateFailed(store, certificate, message, at, attempts=1, revision=None):
    """The Certificate after ``failIssueCertificate``: Issuing False/Failed."""
    status = {"conditions": [
        _condition("Ready", "False", "Failed", "The certificate request has failed to complete"
                   " and will be retried: " + message, at),
        _condition("Issuing", "False", "Failed", "The certificate request has failed to"
                   " complete and will be retried: " + message, at)],
        "failedIssuanceAttempts": attempts, "lastFailureTime": _rfc3339(at)}
    if revision is not None:
        status["revision"] = revision
    return _certificateStatus(store, certificate, status)


def projectUUIDs(count, namespace="kibaship-bench"):
    """``count`` distinct, deterministic project UUIDs (lower-case, as the label wants)."""
    return [str(uuid.uuid5(uuid.NAMESPACE_DNS, "%s-%d.projects.kibaship.test" % (namespace, i)))
            for i in range(count)]


def numberedChains(prefix, start, count, projects=(PROJECT_UUID,), **kw):
    """``count`` one-Challenge Certificates ``<prefix>-<n>`` for ``<prefix>-<n>.example.com``,
    ``n`` from ``start``, their projects taken in turn from ``projects``.

    Many Kibaship projects spread the appends over every Valkey primary, as
    in a real cluster; ``kw`` goes to :func:`buildChain`.
    """
    chains = []
    for n in range(start, start + count):
        name = "%s-%06d" % (prefix, n)
        labels = kibashipLabels(projectUUID=projects[n % len(projects)], slug=name)
        chains.append(buildChain(certificateName="ad-%s-example-com" % name,
                                 dnsNames=("%s.example.com" % name,), labels=labels, **kw))
    return chains


# --- a large platform's Certificates, as the API server holds them -------------

def _fieldsOf(mapping):
    """``FieldsV1`` of a mapping's keys (``{"f:<key>": {}}``)."""
    return {"f:" + key: {} for key in mapping}


def issuedCertificate(name, namespace, labels, at, revision=3, dnsNames=None, displayName=None,
                      uid=None, days=90):
    """A Kibaship Certificate issued ``revision`` times, the last at ``at`` (Unix
    seconds), as a real cluster stores it: the operator's labels, annotation and
    ownerReference, cert-manager's status (``Ready``, times, revision) and the
    ``managedFields`` of the three writers (the Kibaship operator's apply,
    cert-manager's issuing and readiness controllers), which are most of its
    bytes.  For memory and sync benches at scale (:mod:`bench.scale`)."""
    dnsNames = list(dnsNames or ("%s.example.com" % name,))
    annotations = {NAME_ANNOTATION: displayName or name}
    owner = {"apiVersion": "platform.kibaship.com/v1alpha1", "kind": "ApplicationDomain",
             "name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, namespace + "/" + name)),
             "controller": True, "blockOwnerDeletion": True}
    spec = {"secretName": name + "-tls", "dnsNames": dnsNames, "issuerRef": dict(CLUSTER_ISSUER),
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["digital signature", "key encipherment"]}
    status = {"conditions": [_condition("Ready", "True", "Ready",
                                        "Certificate is up to date and has not expired", at)],
              "revision": revision, "notBefore": _rfc3339(at - 3600),
              "notAfter": _rfc3339(at + days * 86400), "renewalTime": _rfc3339(at + days * 57600)}
    created = _rfc3339(at - (revision - 1) * 60 * 86400)
    managed = [
        {"manager": "kibaship-operator", "operation": "Apply", "apiVersion": "cert-manager.io/v1",
         "time": created, "fieldsType": "FieldsV1", "fieldsV1": {
             "f:metadata": {"f:annotations": _fieldsOf(annotations), "f:labels": _fieldsOf(labels),
                            "f:ownerReferences": {'k:{"uid":"%s"}' % owner["uid"]: {}}},
             "f:spec": dict(_fieldsOf(spec), **{"f:issuerRef": _fieldsOf(spec["issuerRef"]),
                                                "f:privateKey": _fieldsOf(spec["privateKey"])})}},
        {"manager": "cert-manager-certificates-issuing", "operation": "Update",
         "apiVersion": "cert-manager.io/v1", "subresource": "status", "time": _rfc3339(at),
         "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {
             "f:notAfter": {}, "f:notBefore": {}, "f:renewalTime": {}, "f:revision": {}}}},
        {"manager": "cert-manager-certificates-readiness", "operation": "Update",
         "apiVersion": "cert-manager.io/v1", "subresource": "status", "time": _rfc3339(at),
         "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {".": {}, "f:conditions": {
             ".": {}, 'k:{"type":"Ready"}': {".": {}, "f:lastTransitionTime": {}, "f:message": {},
                                             "f:observedGeneration": {}, "f:reason": {},
                                             "f:status": {}, "f:type": {}}}}}}]
    meta = {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
            "generation": 1, "creationTimestamp": created, "labels": dict(labels),
            "annotations": annotations, "ownerReferences": [owner], "managedFields": managed}
    return {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": meta,
            "spec": spec, "status": status}


def issuedCertificates(count, at, projects=(PROJECT_UUID,), start=0, prefix="site", spread=0.0):
    """``count`` :func:`issuedCertificate` objects ``<prefix>-<n>``, one namespace per
    project (taken in turn from ``projects``), last issued ``at`` minus up to
    ``spread`` seconds (deterministic per ``n``)."""
    out = []
    for n in range(start, start + count):
        project = projects[n % len(projects)]
        slug = "%s-%07d" % (prefix, n)
        labels = kibashipLabels(
            projectUUID=project, slug=slug,
            workspaceUUID=str(uuid.uuid5(uuid.NAMESPACE_DNS, project + ".workspace")),
            applicationUUID=str(uuid.uuid5(uuid.NAMESPACE_DNS, "%s.%d.app" % (project, n // 4))),
            domainUUID=str(uuid.uuid5(uuid.NAMESPACE_DNS, "%s.%d.domain" % (project, n))))
        offset = spread * ((n * 2654435761) % 1000) / 1000.0
        out.append(issuedCertificate("ad-%s-example-com" % slug, "project-" + project[:8],
                                     labels, at - offset, dnsNames=[slug + ".example.com"]))
    return out
