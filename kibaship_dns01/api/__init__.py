"""The aggregated-API surface served over TLS (SPEC §2–§4)."""
