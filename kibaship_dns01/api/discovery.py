"""Discovery and OpenAPI documents the kube-aggregator fetches (SPEC §3).

The availability check is ``GET /apis/<group>/v1alpha1``; any 2xx marks the
APIService available.  OpenAPI documents are minimal but valid, because a 404
there makes kube-apiserver log errors forever.
"""
import attr

from kibaship_dns01 import __version__

VERSION = "v1alpha1"
PAYLOAD_GROUP = "webhook.acme.cert-manager.io"
PAYLOAD_KIND = "ChallengePayload"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class APIIdentity:
    """Which group and solver this server answers for (flags ``--group-name``/``--solver-name``)."""

    group: str = "dns.kibaship.com"
    solver: str = "kibaship"

    @property
    def groupVersion(self):
        return f"{self.group}/{VERSION}"

    @property
    def versionPath(self):
        return f"/apis/{self.group}/{VERSION}"

    @property
    def solverPath(self):
        return f"{self.versionPath}/{self.solver}"


def _versionEntry(api):
    return {"groupVersion": api.groupVersion, "version": VERSION}


def apiGroup(api):
    return {"name": api.group, "versions": [_versionEntry(api)],
            "preferredVersion": _versionEntry(api)}


def apiGroupDocument(api):
    return {"kind": "APIGroup", "apiVersion": "v1", **apiGroup(api)}


def apiGroupList(api):
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [apiGroup(api)]}


def apiResourceList(api):
    return {
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api.groupVersion,
        "resources": [{
            "name": api.solver, "singularName": PAYLOAD_KIND, "namespaced": False,
            "group": PAYLOAD_GROUP, "version": VERSION, "kind": PAYLOAD_KIND,
            "verbs": ["create"],
        }],
    }


def versionInfo():
    """``/version`` in the shape of ``k8s.io/apimachinery/pkg/version.Info``."""
    major, minor = __version__.split(".")[:2]
    return {"major": major, "minor": minor, "gitVersion": f"v{__version__}", "gitCommit": "",
            "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "",
            "platform": "linux"}


def _info():
    return {"title": "kibaship-dns01", "version": f"v{__version__}"}


def openAPIv2():
    return {"swagger": "2.0", "info": _info(), "paths": {}}


def openAPIv3Discovery(api):
    """``/openapi/v3``: where each group-version's document lives."""
    rel = f"apis/{api.group}/{VERSION}"
    return {"paths": {rel: {"serverRelativeURL": f"/openapi/v3/{rel}"}}}


def openAPIv3Document():
    return {"openapi": "3.0.0", "info": _info(), "paths": {}, "components": {}}
