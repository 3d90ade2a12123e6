"""Enough file descriptors for ``--max-connections``, asked for at start-up.

Every open connection is a file descriptor, and so is everything else the
daemon holds (the listeners, Kubernetes API connections, a socket per Valkey
node per pool).  Kubernetes has no setting for a container's ``ulimit -n``:
the container inherits the runtime's.  containerd 2.0 and recent Docker no
longer raise it, so containers start with systemd's default of 1024 (soft) /
524288 (hard), and a daemon that accepts 2048 connections would fail its
``accept()`` and every new outbound connection with ``EMFILE`` long before
``--max-connections`` refuses anyone.  The runtimes' answer is that a process
needing more raises its own soft limit up to the hard one, which Go programs
do at start-up; so do we, to what the flags need (issue 12's slow-clients drill).
"""
import resource

from twisted.logger import Logger

log = Logger()

#: descriptors beyond the client connections: listeners, the Kubernetes client's
#: pool and watches, up to 32 Valkey clients x nodes x pool, files, the log
RESERVE = 512


def ensureOpenFiles(maxConnections, getrlimit=resource.getrlimit,
                    setrlimit=resource.setrlimit):
    """Raise the soft ``RLIMIT_NOFILE`` to ``maxConnections + RESERVE`` (at most the
    hard limit); warn when even the hard limit is lower.

    :return: the soft limit in force afterwards.
    """
    wanted = maxConnections + RESERVE
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warn("could not raise the open-file limit from {soft} to {target}: {error}",
                     soft=soft, target=target, error=str(e))
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warn("the open-file limit is {soft} (hard limit {hard}), below the {wanted} that "
                 "--max-connections {maxConnections} needs; connections past it fail with "
                 "'Too many open files'. Raise the container runtime's nofile limit or lower "
                 "--max-connections", soft=soft, hard=hard, wanted=wanted,
                 maxConnections=maxConnections, log_kind="file_limit")
    return soft
