"""kibaship-dns01: a cert-manager DNS01 webhook solver for the Kibaship PaaS.

Instead of editing DNS it appends a "please add this TXT record" event to the
owning project's Valkey stream.  See README.md for operation.
"""

__version__ = "0.1.0"
