"""Prometheus collectors for the whole daemon (SPEC §10).

All collectors live in one module-level registry so every module counts into
the same place and ``/metrics`` serves them together.  Tests read values with
``REGISTRY.get_sample_value(name, labels)``; counters only ever grow, so tests
compare before/after rather than absolute values.
"""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_CHILDREN = {}


def labelled(metric, *values):
    """``metric.labels(*values)``, looked up once per label set.

    ``labels()`` validates and stringifies its arguments and takes a lock on
    every call; the request path counts a handful of metrics per request, with
    label values from small fixed sets, so the children are kept here.
    """
    key = (metric, values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    return child

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# --- HTTP / solver ---------------------------------------------------------
HTTP_REQUESTS = Counter(
    "kibaship_dns01_http_requests_total", "HTTP requests served, by path class and status code.",
    ["route", "code"], registry=REGISTRY)
HTTP_TIMEOUTS = Counter(
    "kibaship_dns01_http_timeouts_total",
    "Connections closed because a request head or body, or the next request, did not arrive "
    "in time, by phase (header, body, idle).", ["phase"], registry=REGISTRY)
HTTP_CONNECTIONS = Gauge(
    "kibaship_dns01_http_connections", "Open connections to the HTTPS listener.",
    registry=REGISTRY)
HTTP_IN_FLIGHT = Gauge(
    "kibaship_dns01_http_requests_in_flight", "Requests received and not yet answered.",
    registry=REGISTRY)
SERVING_CERT_EXPIRY = Gauge(
    "kibaship_dns01_serving_certificate_expiration_timestamp_seconds",
    "Unix time the serving certificate in use expires (its notAfter).", registry=REGISTRY)
HTTP_CONNECTIONS_REFUSED = Counter(
    "kibaship_dns01_http_connections_refused_total",
    "Connections closed at once because --max-connections were open.", registry=REGISTRY)
SOLVER_REQUESTS = Counter(
    "kibaship_dns01_solver_requests_total",
    "Present/CleanUp requests, by action and outcome (success, failure, dry_run, unresolved).",
    ["action", "outcome"], registry=REGISTRY)
SOLVER_LATENCY = Histogram(
    "kibaship_dns01_solver_duration_seconds", "Time to answer a Present/CleanUp, by action.",
    ["action"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
RESOLUTION_FAILURES = Counter(
    "kibaship_dns01_resolution_failures_total",
    "Challenges whose project could not be resolved, by reason.",
    ["reason"], registry=REGISTRY)

# --- auth ------------------------------------------------------------------
AUTHN_DECISIONS = Counter(
    "kibaship_dns01_authentication_total",
    "Authentication results, by method (front_proxy, client_cert, token, anonymous) and result.",
    ["method", "result"], registry=REGISTRY)
AUTHZ_DECISIONS = Counter(
    "kibaship_dns01_authorization_total",
    "Authorization decisions, by decision (allow, deny, error) and source (masters, health, cache, sar).",
    ["decision", "source"], registry=REGISTRY)
API_REQUESTS = Counter(
    "kibaship_dns01_kube_api_requests_total",
    "Requests made to the Kubernetes API server, by verb and result code.",
    ["verb", "code"], registry=REGISTRY)

# --- Valkey ----------------------------------------------------------------
VALKEY_APPENDS = Counter(
    "kibaship_dns01_valkey_appends_total",
    "Idempotent stream appends, by result (appended, duplicate, skipped, failed).",
    ["result"], registry=REGISTRY)
VALKEY_REDIRECTS = Counter(
    "kibaship_dns01_valkey_redirects_total", "Cluster redirections followed, by kind (moved, ask).",
    ["kind"], registry=REGISTRY)
VALKEY_RETRIES = Counter(
    "kibaship_dns01_valkey_retries_total",
    "Command retries, by cause (tryagain, clusterdown, connection, noscript, auth).",
    ["cause"], registry=REGISTRY)
VALKEY_ERRORS = Counter(
    "kibaship_dns01_valkey_errors_total", "Valkey operations that failed for good, by kind.",
    ["kind"], registry=REGISTRY)
VALKEY_LATENCY = Histogram(
    "kibaship_dns01_valkey_append_duration_seconds", "Time for one idempotent append.",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY)

# --- progress events ---------------------------------------------------------
_PROGRESS_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400,
                     259200, 604800)
PROGRESS_EVENTS = Counter(
    "kibaship_dns01_progress_events_total",
    "Progress events appended by this replica (duplicates not counted), by operation (status,"
    " issued, failed) and phase (the status phase; the operation for issued/failed).",
    ["operation", "phase"], registry=REGISTRY)
PROGRESS_SKIPPED = Counter(
    "kibaship_dns01_progress_skipped_total",
    "Challenges and Certificates that get no progress events, by reason (other_solver,"
    " unresolved, no_present, secret, not_ours, label_invalid ...), counted once each.",
    ["reason"], registry=REGISTRY)
PRESENT_TO_VERIFIED = Histogram(
    "kibaship_dns01_present_to_verified_seconds",
    "From the Present of a challenge to cert-manager reporting it valid (verified).",
    buckets=_PROGRESS_BUCKETS, registry=REGISTRY)
PRESENT_TO_ISSUED = Histogram(
    "kibaship_dns01_present_to_issued_seconds",
    "From the last Present of a Certificate revision to the Certificate Ready with it.",
    buckets=_PROGRESS_BUCKETS, registry=REGISTRY)

CHALLENGES_WAITING_FOR_DNS = Gauge(
    "kibaship_dns01_challenges_waiting_for_dns",
    "Challenges whose last status event said waiting_for_dns: cert-manager's self-check "
    "cannot see the TXT record the user was asked to add.", registry=REGISTRY)
OLDEST_WAITING_FOR_DNS = Gauge(
    "kibaship_dns01_challenge_waiting_for_dns_oldest_seconds",
    "Seconds since the Present of the oldest Challenge now waiting_for_dns (when its user was "
    "told to add the record); 0 when none is waiting.", registry=REGISTRY)

# --- DNS responder (delegated renewals) -------------------------------------
_DNS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1, 2.5)
DNS_QUERIES = Counter(
    "kibaship_dns01_dns_queries_total",
    "DNS queries answered, by transport (udp, tcp) and rcode (noerror, nxdomain, refused,"
    " servfail, formerr, notimp, badvers).", ["transport", "rcode"], registry=REGISTRY)
DNS_TRUNCATED = Counter(
    "kibaship_dns01_dns_truncated_total",
    "UDP answers sent with TC set because they did not fit (the requester retries over TCP).",
    registry=REGISTRY)
DNS_RATE_LIMITED = Counter(
    "kibaship_dns01_dns_rate_limited_total",
    "UDP queries over their network's response rate, by action (slip: an empty truncated"
    " answer; drop: no answer).", ["action"], registry=REGISTRY)
DNS_MALFORMED = Counter(
    "kibaship_dns01_dns_malformed_total",
    "Packets that were not a DNS query that could be read (answers included), by transport;"
    " none is answered.", ["transport"], registry=REGISTRY)
DNS_STORE_FAILURES = Counter(
    "kibaship_dns01_dns_store_failures_total",
    "Delegation store lookups that failed (answered SERVFAIL), by reason (error, timeout,"
    " overload).", ["reason"], registry=REGISTRY)
DNS_SEND_FAILURES = Counter(
    "kibaship_dns01_dns_send_failures_total",
    "UDP answers the kernel would not send (a full socket buffer under a flood).",
    registry=REGISTRY)
DNS_LATENCY = Histogram(
    "kibaship_dns01_dns_answer_duration_seconds",
    "From a query read to its answer written, by transport.", ["transport"],
    buckets=_DNS_BUCKETS, registry=REGISTRY)
DNS_TCP_CONNECTIONS = Gauge(
    "kibaship_dns01_dns_tcp_connections", "Open DNS-over-TCP connections.", registry=REGISTRY)
DNS_TCP_CLOSED = Counter(
    "kibaship_dns01_dns_tcp_closed_total",
    "DNS-over-TCP connections refused or closed by the server, by reason (limit, idle,"
    " too_large).", ["reason"], registry=REGISTRY)

# --- caches ----------------------------------------------------------------
CACHE_OBJECTS = Gauge(
    "kibaship_dns01_cache_objects", "Objects held by a watch-backed cache, by cache name.",
    ["cache"], registry=REGISTRY)
CACHE_LISTS = Counter(
    "kibaship_dns01_cache_lists_total",
    "Full LISTs a watch-backed cache stored, its first sync included, by cache name; more "
    "than one means its watch could not resume where it stopped (410 Expired).",
    ["cache"], registry=REGISTRY)
CACHE_LAST_SYNC = Gauge(
    "kibaship_dns01_cache_last_sync_timestamp_seconds",
    "Unix time a watch-backed cache last heard from the API server (a LIST stored, a watch "
    "event or bookmark, a watch that lasted until it timed out), by cache name; the time it "
    "started until its first LIST. A healthy cache moves it at least every 11 minutes.",
    ["cache"], registry=REGISTRY)
CACHE_FAILURES = Counter(
    "kibaship_dns01_cache_failures_total",
    "LISTs and WATCHes of a watch-backed cache that failed or ended at once (API server "
    "unreachable, an error status, a timeout), by cache name and verb (list, watch).",
    ["cache", "verb"], registry=REGISTRY)
READY = Gauge(
    "kibaship_dns01_ready", "1 when a readiness condition holds, by condition.",
    ["condition"], registry=REGISTRY)
