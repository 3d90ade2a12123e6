"""Delegated authentication and authorization (SPEC §5)."""
