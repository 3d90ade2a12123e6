"""Non-blocking Kubernetes access: configuration loading (:mod:`.config`),
a treq JSON client (:mod:`.client`), watch-backed caches (:mod:`.informer`)
and typed errors (:mod:`.errors`)."""
