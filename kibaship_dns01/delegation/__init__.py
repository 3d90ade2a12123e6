"""Delegated renewals (issue 21, SPEC §13): one CNAME, and renewals need nobody.

A user adds, once, ``_acme-challenge.<domain> CNAME <label>.<zone>``, where
``<zone>`` (``--delegation-zone``) is delegated by the platform to this
daemon's DNS responder (:mod:`kibaship_dns01.dns`) and ``<label>`` is bound
to the (project, domain) pair by a keyed hash (:mod:`.names`).  Every Present
then also stores its key under that label (:mod:`.store`), which every replica
serves as TXT before the Present is answered; CleanUp withdraws it and each
key expires on its own.

Modules, in the order data flows:

* :mod:`.names` - the project-bound label, and the shape a label must have;
* :mod:`.secret` - the operator's secret the labels are keyed with;
* :mod:`.store` - the served keys, on the daemon's own Valkey cluster;
* :mod:`.check` - does ``_acme-challenge.<domain>`` already point at the label?
"""
