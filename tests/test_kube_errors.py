"""Status -> typed exception mapping (kibaship_dns01.kube.errors)."""
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.kube import errors


class ErrorFromStatusTests(SynchronousTestCase):
    def status(self, code, reason, message="m"):
        return errors.makeStatus(code, reason, message)

    def test_eachCodeMapsToItsClass(self):
        cases = {401: errors.Unauthorized, 403: errors.Forbidden, 404: errors.NotFound,
                 409: errors.Conflict, 410: errors.Gone, 429: errors.Unavailable,
                 500: errors.Unavailable, 503: errors.Unavailable, 504: errors.APITimeout}
        for code, cls in cases.items():
            e = errors.errorFromStatus(code, self.status(code, "R"), "GET /x")
            self.assertIs(type(e), cls, code)
            self.assertEqual(e.code, code)
            self.assertEqual(e.reason, "R")

    def test_otherCodesAreGeneric(self):
        e = errors.errorFromStatus(422, self.status(422, "Invalid"), "POST /y")
        self.assertIs(type(e), errors.KubeError)
        self.assertEqual(e.code, 422)

    def test_messageNamesObjectAndServerText(self):
        st = self.status(404, "NotFound", 'challenges.acme.cert-manager.io "c" not found')
        e = errors.errorFromStatus(404, st, "GET /apis/acme.cert-manager.io/v1/namespaces/n/challenges/c")
        self.assertIn("/namespaces/n/challenges/c", e.message)
        self.assertIn('"c" not found', e.message)
        self.assertIn("NotFound, 404", str(e))
        self.assertIs(e.status, st)

    def test_forbiddenHintsAtRBAC(self):
        e = errors.errorFromStatus(403, self.status(403, "Forbidden"), "LIST /x")
        self.assertIn("RBAC", e.message)

    def test_codeFromStatusWhenNoHTTPCode(self):
        """Watch ERROR events carry only the Status."""
        e = errors.errorFromStatus(None, self.status(410, "Expired", "too old resource version: 1 (5)"),
                                   "WATCH /x")
        self.assertIsInstance(e, errors.Gone)
        self.assertEqual(e.reason, "Expired")

    def test_nonStatusBody(self):
        e = errors.errorFromStatus(502, None, "GET /x")
        self.assertIsInstance(e, errors.Unavailable)
        self.assertIsNone(e.status)
        self.assertIn("HTTP 502", e.message)

    def test_statusShape(self):
        st = errors.makeStatus(404, "NotFound", "x", {"name": "a", "kind": "configmaps"})
        self.assertEqual(list(st), ["kind", "apiVersion", "metadata", "status", "message", "reason",
                                    "details", "code"])
        self.assertEqual(st["status"], "Failure")
