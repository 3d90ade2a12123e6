"""The phase classifier against the reason strings cert-manager and the ACME server write.

Every fixture is the string the named source produces (format strings filled
in as they are at run time), so a change in cert-manager's wording shows up
here first.
"""
from twisted.trial.unittest import SynchronousTestCase

from kibaship_dns01.progress import phases
from kibaship_dns01.progress.phases import Phase, classify

#: cert-manager pkg/controller/acmechallenges/sync.go: the self-check failed
#: ``fmt.Sprintf("Waiting for %s challenge propagation: %s", ch.Spec.Type, err)``,
#: Spec.Type is ``DNS-01`` (pkg/apis/acme/v1 ACMEChallengeTypeDNS01)
PROPAGATION = "Waiting for DNS-01 challenge propagation: "

#: (reason, state, expected phase, rcode, where the wording comes from)
FIXTURES = (
    # --- the self-check, while the Challenge is pending --------------------------
    ("", "pending", phases.PENDING, None, "cert-manager: status before the first check"),
    (PROPAGATION + 'DNS record for "shop.example.com" not yet propagated', "pending",
     phases.WAITING_FOR_DNS, None,
     'cert-manager pkg/issuer/acme/dns/dns.go: fmt.Errorf("DNS record for %q not yet '
     'propagated", ch.Spec.DNSName)'),
    ("Waiting for DNS-01 challenge propagation", "pending", phases.WAITING_FOR_DNS, None,
     "cert-manager pkg/controller/acmechallenges (delay-after-presentation readiness: "
     'fmt.Sprintf("Waiting for %s challenge propagation", ch.Spec.Type))'),
    (PROPAGATION + "NS ns-1536.awsdns-00.co.uk.:53 returned REFUSED for "
     "_acme-challenge.shop.example.com.", "pending", phases.DNS_SERVER_ERROR, "REFUSED",
     'cert-manager pkg/issuer/acme/dns/util/wait.go checkAuthoritativeNss: fmt.Errorf("NS %s '
     'returned %s for %s", ns, dns.RcodeToString[r.Rcode], fqdn)'),
    (PROPAGATION + "NS ns1.example.net.:53 returned SERVFAIL for "
     "_acme-challenge.shop.example.com.", "pending", phases.DNS_SERVER_ERROR, "SERVFAIL",
     "cert-manager pkg/issuer/acme/dns/util/wait.go checkAuthoritativeNss (SERVFAIL)"),
    (PROPAGATION + "Could not determine the zone for \"_acme-challenge.shop.example.com.\": "
     "When querying the SOA record for the domain '_acme-challenge.shop.example.com.' using "
     "nameservers [10.96.0.10:53], rcode was expected to be 'NOERROR' or 'NXDOMAIN', but got "
     "'SERVFAIL'", "pending", phases.DNS_SERVER_ERROR, "SERVFAIL",
     "cert-manager pkg/issuer/acme/dns/util/wait.go lookupNameservers + FindZoneByFqdn"),
    (PROPAGATION + "Could not determine the zone for \"_acme-challenge.shop.example.invalid.\": "
     "Could not find the SOA record in the DNS tree for the domain "
     "'_acme-challenge.shop.example.invalid.' using nameservers [10.96.0.10:53]", "pending",
     phases.ZONE_NOT_FOUND, None,
     "cert-manager pkg/issuer/acme/dns/util/wait.go FindZoneByFqdn: every label NXDOMAIN"),
    (PROPAGATION + "Could not determine authoritative nameservers for "
     "\"_acme-challenge.shop.example.com.\"", "pending", phases.ZONE_NOT_FOUND, None,
     "cert-manager pkg/issuer/acme/dns/util/wait.go lookupNameservers"),
    (PROPAGATION + "Unexpected response code 'REFUSED' for example.com.", "pending",
     phases.DNS_SERVER_ERROR, "REFUSED",
     "cert-manager (v1.0-v1.10) pkg/issuer/acme/dns/util/wait.go FindZoneByFqdn"),
    (PROPAGATION + "read udp 10.0.0.5:41234->198.51.100.53:53: i/o timeout", "pending",
     phases.DNS_SERVER_ERROR, None, "miekg/dns client timeout, returned by DNSQuery"),
    (PROPAGATION + "some new wording nobody classified yet", "pending", phases.WAITING, None,
     "fallback: unknown propagation error"),
    ("the Kibaship solver says: Certificate certificates/ad-x has no label "
     "platform.kibaship.com/project-uuid", "pending", phases.WAITING, None,
     "cert-manager sync.go: a PresentError reason is the webhook's message"),
    # --- after cert-manager accepted the challenge ---------------------------------
    ("", "processing", phases.VALIDATING, None, "ACME state processing (RFC 8555 7.1.6)"),
    ("Successfully authorized domain", "valid", phases.VERIFIED, None,
     'cert-manager sync.go acceptChallenge: ch.Status.Reason = "Successfully authorized domain"'),
    # --- the CA's verdict: "Error accepting authorization: %v" of an AuthorizationError,
    #     "acme: authorization error for %s: %s" (third_party/forked/acme/types.go) over
    #     "%d %s: %s" (StatusCode, ProblemType, Detail) ----------------------------------
    ("Error accepting authorization: acme: authorization error for shop.example.com: 403 "
     "urn:ietf:params:acme:error:unauthorized: Incorrect TXT record "
     "\"5v3LeU0e2cl2EjBQ_7YbsD5LHcUjPpVZxF7tC98V3Wc\" found at _acme-challenge.shop.example.com",
     "invalid", phases.WRONG_VALUE, None,
     'letsencrypt/boulder va/dns.go: UnauthorizedError("Incorrect TXT record %q%s found at %s")'),
    ("Error accepting authorization: acme: authorization error for shop.example.com: 403 "
     "urn:ietf:params:acme:error:unauthorized: No TXT record found at "
     "_acme-challenge.shop.example.com", "invalid", phases.RECORD_MISSING, None,
     'letsencrypt/boulder va/dns.go: UnauthorizedError("No TXT record found at %s")'),
    ("Error accepting authorization: acme: authorization error for shop.example.com: 400 "
     "urn:ietf:params:acme:error:dns: DNS problem: NXDOMAIN looking up TXT for "
     "_acme-challenge.shop.example.com - check that a DNS record exists for this domain",
     "invalid", phases.RECORD_MISSING, "NXDOMAIN",
     'letsencrypt/boulder bdns/problem.go: "DNS problem: %s looking up %s for %s%s"'),
    ("Error accepting authorization: acme: authorization error for shop.example.com: 400 "
     "urn:ietf:params:acme:error:dns: DNS problem: SERVFAIL looking up TXT for "
     "_acme-challenge.shop.example.com - the domain's nameservers may be malfunctioning",
     "invalid", phases.DNS_SERVER_ERROR, "SERVFAIL", "letsencrypt/boulder bdns/problem.go"),
    ("Error accepting authorization: acme: authorization error for example.com: 400 "
     "urn:ietf:params:acme:error:dns: During secondary validation: DNS problem: query timed "
     "out looking up TXT for _acme-challenge.example.com", "invalid",
     phases.DNS_SERVER_ERROR, None, "letsencrypt/boulder bdns/problem.go detailDNSTimeout"),
    ("Error accepting authorization: acme: authorization error for shop.example.com: 403 "
     "urn:ietf:params:acme:error:caa: CAA record for shop.example.com prevents issuance",
     "invalid", phases.FAILED, None, "letsencrypt/boulder va/caa.go (any other CA refusal)"),
    ("", "expired", phases.EXPIRED, None,
     "cert-manager handleError: urn:ietf:params:acme:error:malformed marks it expired"),
    ("unexpected non-ACME API error: Get \"https://acme.example/authz/1\": dial tcp: i/o "
     "timeout", "errored", phases.ERRORED, None,
     'cert-manager sync.go handleError: "unexpected non-ACME API error: %v"'),
)


class ClassifierTests(SynchronousTestCase):
    def test_realReasons(self):
        for reason, state, phase, rcode, source in FIXTURES:
            got = classify(state, reason)
            self.assertEqual((got.name, got.rcode), (phase, rcode),
                             "%r in state %s (%s)" % (reason, state, source))
            self.assertEqual(got.final, state in phases.FINAL_STATES, source)

    def test_everyPhaseIsReachable(self):
        self.assertEqual({phase for _, _, phase, _, _ in FIXTURES}, set(phases.PHASES))

    def test_missingFields(self):
        self.assertEqual(classify(None, None), Phase(phases.PENDING, False))
        self.assertEqual(classify("Valid", None), Phase(phases.VERIFIED, True))
