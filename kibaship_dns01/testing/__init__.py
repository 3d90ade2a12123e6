"""Test support that ships with the package: verified fakes, a stand-in
Kubernetes API server, a local Valkey cluster harness and a small PKI.

It is importable by the test suite, the benchmarks and the local run command
(``python -m kibaship_dns01.testing.localrun``); nothing in the daemon imports it.
"""
