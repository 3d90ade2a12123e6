"""Real DNS software on loopback ports, for tests and local runs (issue 21).

Delegated renewals rest on a path that only real DNS software can prove: a
recursive resolver follows ``_acme-challenge.<domain> CNAME <label>.<zone>``
from the user's authoritative server into the zone this daemon serves, and
asks the daemon for the TXT there. cert-manager's self-check and the CA take
exactly that path. This module runs it with the software from Debian:

* :class:`KnotServer` - ``knotd`` (package ``knot``) authoritative for a
  *user's* zone; :meth:`~KnotServer.setRecord` changes it afterwards (the user
  adds the CNAME) and returns once knot serves the change;
* :class:`UnboundResolver` - ``unbound`` with a ``stub-zone`` per zone (the
  user's zone at knot, the delegation zone at the daemon's DNS port), no
  DNSSEC validation, and :meth:`~UnboundResolver.flush` to forget what it
  cached between the steps of a test;
* :func:`dig` - one query with ``dig`` (package ``bind9-dnsutils``), parsed
  into a :class:`DigAnswer` (status line, flags, records, ``+short`` values).

Nothing here blocks the reactor. Servers are child processes spawned from
it, and every control call (``dig``, ``knotc``, ``unbound-control``) is a
child process it waits for, so a DNS server living in the same reactor (the
daemon's responder, or a test's stand-in zone) keeps answering meanwhile.
Every wait is bounded; ``stop()`` is idempotent (register it with
``addCleanup`` right after construction) and a failed ``start()`` stops what
it started. A missing program is a :class:`DNSToolMissing` naming it and its
Debian package, never a skip: CI installs them (``.ci/run``).

Both servers run as the current user, root or not: every file (config,
zone, pid file, control socket, logs) lives in a private temporary
directory, and the privilege drop they would do as a system service is
switched off.
"""
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import tempfile

import attr
from twisted.internet import defer
from twisted.internet.task import deferLater

from kibaship_dns01.testing.daemon import ChildOutput
from kibaship_dns01.testing.polling import PollTimeout, pollUntil

#: program -> the Debian package that installs it
PACKAGES = {"knotd": "knot", "knotc": "knot", "unbound": "unbound",
            "unbound-control": "unbound", "unbound-checkconf": "unbound", "dig": "bind9-dnsutils"}
#: Debian puts the daemons in sbin, which is not on an ordinary user's PATH
SBIN = ("/usr/sbin", "/sbin")

#: seconds a server may take to answer its first query
START_TIMEOUT = 20.0
#: seconds a server may take to exit after SIGTERM (then SIGKILL)
STOP_TIMEOUT = 5.0
#: seconds any one control call (dig, knotc, unbound-control) may take
TOOL_TIMEOUT = 10.0
#: seconds between two readiness probes
PROBE_INTERVAL = 0.1


class DNSToolMissing(RuntimeError):
    """A program this harness runs is not installed."""


class DNSServerError(RuntimeError):
    """A server did not start, did not take a change, or a control call failed."""


class DigFailed(DNSServerError):
    """``dig`` got no answer at all (timeout, refused connection) or was misused."""


def findTool(name, path=None, sbin=None):
    """The absolute path of program ``name``: on ``PATH`` (or ``path``), else in
    ``sbin`` (default :data:`SBIN`).

    :raise DNSToolMissing: naming the program and the package to install.
    """
    sbin = SBIN if sbin is None else sbin
    search = os.pathsep.join([path if path is not None else os.environ.get("PATH", ""),
                              *sbin])
    found = shutil.which(name, path=search)
    if found is None:
        raise DNSToolMissing(
            "%s not found on PATH or in %s: install the Debian package %s "
            "(apt-get install %s; .ci/run does this in CI)"
            % (name, ", ".join(sbin), PACKAGES.get(name, name), PACKAGES.get(name, name)))
    return found


def freeDNSPort(host="127.0.0.1", attempts=50):
    """A port free for both UDP and TCP on ``host`` (a DNS server binds both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(attempts):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise DNSServerError("no port free for both UDP and TCP on %s after %d tries"
                         % (host, attempts))


# --- running programs -------------------------------------------------------------

@attr.s(frozen=True, auto_attribs=True)
class ToolResult:
    """What one control call printed, and how it exited."""

    argv: tuple
    code: int
    #: standard output only
    stdout: str
    #: standard output and standard error, interleaved
    output: str


async def runTool(reactor, argv, timeout=TOOL_TIMEOUT):
    """Run ``argv`` as a child of ``reactor``; kill it after ``timeout`` seconds.

    :return: a :class:`ToolResult`, whatever the exit code.
    :raise DNSServerError: when it had to be killed.
    """
    proto = ChildOutput()
    transport = reactor.spawnProcess(proto, argv[0], list(argv), env=dict(os.environ))
    try:
        await pollUntil(reactor, lambda: proto.ended.called, timeout, interval=0.02,
                        what=" ".join(argv))
    except PollTimeout:
        transport.signalProcess(signal.SIGKILL)
        await proto.ended
        raise DNSServerError("%s did not finish within %ss and was killed; it printed:\n%s"
                             % (" ".join(argv), timeout, proto.output.decode(errors="replace")))
    code = await proto.ended
    return ToolResult(tuple(argv), code, proto.stdout.decode(errors="replace"),
                      proto.output.decode(errors="replace"))


async def checkedTool(reactor, argv, timeout=TOOL_TIMEOUT):
    """:func:`runTool`, and a :class:`DNSServerError` with its output unless it exits 0."""
    result = await runTool(reactor, argv, timeout)
    if result.code != 0:
        raise DNSServerError("%s exited with %s:\n%s" % (" ".join(argv), result.code,
                                                          result.output))
    return result


class ServerProcess:
    """One long-running server program, its output appended to ``logPath``."""

    def __init__(self, reactor, argv, logPath):
        self.reactor = reactor
        self.argv = list(argv)
        self.logPath = logPath
        self.proto = None
        self.transport = None
        self.pid = None

    def start(self):
        logFD = os.open(self.logPath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.proto = ChildOutput()
        try:
            self.transport = self.reactor.spawnProcess(
                self.proto, self.argv[0], self.argv, env=dict(os.environ),
                childFDs={0: "w", 1: logFD, 2: logFD})
        finally:
            os.close(logFD)  # the child holds its own copy
        self.pid = self.transport.pid

    @property
    def running(self):
        return self.proto is not None and not self.proto.ended.called

    def log(self):
        """What the server wrote to its log so far (the last 8 kB)."""
        try:
            with open(self.logPath, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    async def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, then SIGKILL if it is still running after ``timeout`` seconds."""
        if not self.running:
            return
        self.transport.signalProcess(signal.SIGTERM)
        try:
            await pollUntil(self.reactor, lambda: self.proto.ended.called, timeout,
                            what="%s to exit" % (self.argv[0],))
        except PollTimeout:
            if self.running:
                self.transport.signalProcess(signal.SIGKILL)
        await self.proto.ended


async def waitUntilAnswering(reactor, process, probe, timeout, what):
    """Run ``probe()`` (async, true once the server answers) every
    :data:`PROBE_INTERVAL` until it holds, ``process`` exits, or ``timeout`` passes.

    :raise DNSServerError: with the server's log.
    """
    deadline = reactor.seconds() + timeout
    while True:
        if not process.running:
            raise DNSServerError("%s exited before it answered; its log:\n%s"
                                 % (what, process.log()))
        if await probe():
            return
        if reactor.seconds() > deadline:
            raise DNSServerError("%s did not answer within %ss; its log:\n%s"
                                 % (what, timeout, process.log()))
        await deferLater(reactor, PROBE_INTERVAL, lambda: None)


# --- dig -----------------------------------------------------------------------------

@attr.s(frozen=True, auto_attribs=True)
class Record:
    """One resource record as ``dig`` prints it."""

    name: str
    ttl: int
    rdclass: str
    rdtype: str
    #: the RDATA in presentation format (TXT strings still quoted)
    data: str

    @property
    def strings(self):
        """A TXT record's character-strings, unquoted (``"a" "b"`` -> ``["a", "b"]``)."""
        return [re.sub(r"\\(.)", r"\1", s) for s in re.findall(r'"((?:[^"\\]|\\.)*)"',
                                                                 self.data)]


_SECTIONS = {"ANSWER": "answer", "AUTHORITY": "authority", "ADDITIONAL": "additional"}


@attr.s(frozen=True, auto_attribs=True)
class DigAnswer:
    """A response as ``dig`` printed it: the status line, flags and sections."""

    #: ``NOERROR``, ``NXDOMAIN``, ``SERVFAIL``, ``REFUSED`` ...
    status: str
    #: header flags, e.g. ``{"qr", "aa", "rd"}``
    flags: frozenset
    answer: tuple
    authority: tuple
    additional: tuple
    #: everything dig printed
    text: str

    @classmethod
    def parse(cls, text):
        """Read dig's default output. :raise DigFailed: when it holds no response."""
        status = re.search(r"^;; ->>HEADER<<- .*\bstatus: ([A-Z]+)", text, re.M)
        flags = re.search(r"^;; flags:([a-z ]*);", text, re.M)
        if status is None or flags is None:
            raise DigFailed("dig printed no response:\n" + text)
        sections = {v: [] for v in _SECTIONS.values()}
        current = None
        for line in text.splitlines():
            header = re.match(r";; (\w+) SECTION:$", line)
            if header:
                current = _SECTIONS.get(header.group(1))
            elif not line.strip():
                current = None
            elif current is not None and not line.startswith(";"):
                name, ttl, rdclass, rdtype, data = (line.split(None, 4) + [""])[:5]
                sections[current].append(Record(name, int(ttl), rdclass, rdtype, data))
        return cls(status.group(1), frozenset(flags.group(1).split()),
                   *(tuple(sections[k]) for k in ("answer", "authority", "additional")), text)

    def values(self, rdtype):
        """``dig +short``'s lines for ``rdtype`` in the answer (TXT strings unquoted
        and joined, as the ACME CA reads them)."""
        rdtype = rdtype.upper()
        return [("".join(r.strings) if rdtype == "TXT" else r.data)
                for r in self.answer if r.rdtype == rdtype]


def digCommand(server, name, rdtype="A", options=()):
    """The ``dig`` command line for one query to ``server`` (``(host, port)``),
    also for printing to a person (``" ".join(...)``)."""
    host, port = server
    return ["dig", "@%s" % (host,), "-p", str(port), name, rdtype, "+time=1", "+tries=2",
            *options]


async def dig(reactor, server, name, rdtype="A", options=(), timeout=TOOL_TIMEOUT):
    """Ask ``server`` (``(host, port)``) for ``name`` ``rdtype`` with ``dig``.

    :param options: more dig options, e.g. ``("+norec",)`` or ``("+tcp",)``.
    :return: the :class:`DigAnswer` (any rcode).
    :raise DigFailed: no response at all (dig exits 9 on a timeout).
    """
    argv = digCommand(server, name, rdtype, options)
    result = await runTool(reactor, [findTool("dig")] + argv[1:], timeout)
    if result.code != 0:
        raise DigFailed("%s exited with %s:\n%s" % (" ".join(argv), result.code, result.output))
    return DigAnswer.parse(result.stdout)


async def answers(reactor, server, name, rdtype, check, options=()):
    """Whether ``server`` answers ``name rdtype`` and ``check(answer)`` holds;
    no answer at all counts as false (a readiness probe)."""
    try:
        return check(await dig(reactor, server, name, rdtype, options, timeout=5.0))
    except DigFailed:
        return False


# --- the servers ---------------------------------------------------------------------

class LoopbackServer:
    """What both servers share: a private directory, a free port, one child
    process, a bounded start that cleans up after itself, an idempotent stop.

    A subclass names its ``program`` and the ``tools`` it needs, writes its
    configuration (``_config``), may prepare more files (``_prepare``), says
    how to run it (``_argv``), when it answers (``_answers``), and what to
    check once it does (``_started``).
    """

    program = None
    tools = ()

    def __init__(self, reactor, host="127.0.0.1", startTimeout=START_TIMEOUT):
        self.reactor = reactor
        self.host = host
        self.startTimeout = startTimeout
        self.port = None
        self.directory = None
        self.process = None

    @property
    def address(self):
        """``(host, port)`` to query."""
        return (self.host, self.port)

    def _path(self, name):
        return os.path.join(self.directory, name)

    @property
    def _configPath(self):
        return self._path(self.program + ".conf")

    async def start(self):
        """Write the configuration, start the server, wait until it answers.
        :return: self."""
        for tool in (self.program,) + self.tools:
            findTool(tool)
        self.directory = tempfile.mkdtemp(prefix="kibaship-%s-" % (self.program,))
        try:
            self.port = freeDNSPort(self.host)
            with open(self._configPath, "w") as f:
                f.write(self._config())
            await self._prepare()
            self.process = ServerProcess(self.reactor, self._argv(),
                                         self._path(self.program + ".log"))
            self.process.start()
            await waitUntilAnswering(self.reactor, self.process, self._answers,
                                     self.startTimeout, self._describe())
            await self._started()
        except BaseException:
            await self.stop()
            raise
        return self

    def _describe(self):
        return "%s on %s@%d" % (self.program, self.host, self.port)

    async def _prepare(self):
        pass

    async def _started(self):
        pass

    async def stop(self):
        """Stop the server (bounded) and remove its directory; safe to call twice."""
        if self.process is not None:
            await self.process.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _userAndGroup():
    """``user:group`` of this process, for knot's ``server.user`` (no privilege drop)."""
    return "%s:%s" % (pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name)


def _absolute(name, zone):
    """``name`` (relative, ``@`` or absolute) as an absolute lower-case name."""
    if name == "@":
        return zone
    name = name.lower()
    return name if name.endswith(".") else "%s.%s" % (name, zone)


class KnotServer(LoopbackServer):
    """``knotd`` authoritative for ``zone`` on ``host``:<free port>, as the current user.

    :param records: ``(name, type, data)`` triples in zone-file syntax, names
        relative to the zone (``"www"``), ``"@"`` or absolute
        (``"www.example.test."``); e.g. ``("www", "A", "192.0.2.1")``. The
        SOA, an NS ``ns1`` and its A record (``host``) are added.
    """

    program = "knotd"
    tools = ("knotc", "dig")

    def __init__(self, reactor, zone, records=(), host="127.0.0.1", ttl=60,
                 startTimeout=START_TIMEOUT):
        super().__init__(reactor, host, startTimeout)
        self.zone = zone.lower().rstrip(".") + "."
        self.ttl = ttl
        self.serial = 1
        self._records = [(_absolute(n, self.zone), t.upper(), d) for n, t, d in records]

    def _config(self):
        return "\n".join([
            "server:",
            '    rundir: "%s"' % (self.directory,),
            '    pidfile: "%s"' % (self._path("knot.pid"),),
            "    user: %s" % (_userAndGroup(),),
            "    listen: %s@%d" % (self.host, self.port),
            "    udp-workers: 1",
            "    tcp-workers: 1",
            "    background-workers: 1",
            "database:",
            '    storage: "%s"' % (self._path("db"),),
            "control:",
            '    listen: "%s"' % (self._path("knot.sock"),),
            "log:",
            '  - target: "%s"' % (self._path(self.program + ".log"),),
            "    any: info",
            "template:",
            "  - id: default",
            '    storage: "%s"' % (self.directory,),
            '    file: "%s.zone"',
            # The zone file is the one source of truth: knot never writes it back and
            # keeps no journal, so a rewritten file plus zone-reload is a whole new zone.
            "    zonefile-sync: -1",
            "    zonefile-load: whole",
            "    journal-content: none",
            "zone:",
            "  - domain: %s" % (self.zone,),
            ""])

    def _argv(self):
        return [findTool(self.program), "-c", self._configPath]

    def _describe(self):
        return "knotd for %s on %s@%d" % (self.zone, self.host, self.port)

    async def _prepare(self):
        os.mkdir(self._path("db"))
        await self._publish(self._records, self.serial)

    def _zoneFile(self):
        lines = ["$ORIGIN %s" % (self.zone,), "$TTL %d" % (self.ttl,),
                 "@ SOA ns1 hostmaster %d 3600 600 86400 %d" % (self.serial, self.ttl),
                 "@ NS ns1", "ns1 A %s" % (self.host,)]
        lines += ["%s %s %s" % record for record in self._records]
        return "\n".join(lines) + "\n"

    def _writeZone(self):
        path = self._path(self.zone + "zone")
        with open(path + ".new", "w") as f:
            f.write(self._zoneFile())
        os.replace(path + ".new", path)

    async def _publish(self, records, serial):
        """Write the zone with ``records`` and ``serial`` and check it offline
        (``knotc zone-check``): a record knot cannot load fails here, with
        knot's message, and the previous zone stays as it was."""
        previous = (self._records, self.serial)
        self._records, self.serial = records, serial
        self._writeZone()
        try:
            await self._knotc("zone-check", self.zone)
        except DNSServerError:
            self._records, self.serial = previous
            self._writeZone()
            raise

    def _knotc(self, *args):
        return checkedTool(self.reactor, [findTool("knotc"), "-c", self._configPath,
                                          "-t", "5", *args])

    def _answers(self):
        """Whether knot serves the zone with the current serial, authoritatively."""
        def check(answer):
            soa = answer.values("SOA")
            return (answer.status == "NOERROR" and "aa" in answer.flags and bool(soa)
                    and int(soa[0].split()[2]) == self.serial)
        return answers(self.reactor, self.address, self.zone, "SOA", check, ("+norec",))

    async def setRecord(self, name, rdtype, *data):
        """Replace every ``name`` ``rdtype`` record with one per ``data`` (none:
        remove them), e.g. ``setRecord("_acme-challenge", "CNAME", "x.acme.test.")``;
        returns once knot serves the new zone (a higher SOA serial)."""
        name, rdtype = _absolute(name, self.zone), rdtype.upper()
        records = [r for r in self._records if (r[0], r[1]) != (name, rdtype)]
        await self._publish(records + [(name, rdtype, d) for d in data], self.serial + 1)
        await self._knotc("-b", "zone-reload", self.zone)
        await waitUntilAnswering(self.reactor, self.process, self._answers, self.startTimeout,
                                 "knotd to serve %s serial %d" % (self.zone, self.serial))

    async def removeRecord(self, name, rdtype):
        """Remove every ``name`` ``rdtype`` record (as the user deleting it)."""
        await self.setRecord(name, rdtype)


class UnboundResolver(LoopbackServer):
    """``unbound`` on ``host``:<free port>, resolving each stub zone at its server.

    :param stubs: ``{zone: (host, port)}``, e.g. the user's zone at
        :attr:`KnotServer.address` and the delegation zone at the daemon's DNS
        port. Names under no stub zone go to the root servers, which a test
        machine cannot reach: keep queries inside the stubs.
    """

    program = "unbound"
    tools = ("unbound-control", "unbound-checkconf", "dig")

    def __init__(self, reactor, stubs, host="127.0.0.1", startTimeout=START_TIMEOUT):
        super().__init__(reactor, host, startTimeout)
        self.stubs = {zone.lower().rstrip(".") + ".": tuple(server)
                      for zone, server in stubs.items()}

    def _config(self):
        ipv6 = ":" in self.host or any(":" in h for h, _ in self.stubs.values())
        lines = [
            "server:",
            "    interface: %s" % (self.host,),
            "    port: %d" % (self.port,),
            "    do-ip6: %s" % ("yes" if ipv6 else "no"),
            "    access-control: %s allow" % ("::/0" if ":" in self.host else "127.0.0.0/8"),
            "    num-threads: 1",
            "    so-reuseport: no",
            "    outgoing-range: 64",
            "    num-queries-per-thread: 32",
            # stubs live on loopback, which unbound refuses to query by default
            "    do-not-query-localhost: no",
            # run as whoever runs this, in the temporary directory, in the foreground
            '    username: ""',
            '    chroot: ""',
            '    directory: "%s"' % (self.directory,),
            '    pidfile: "%s"' % (self._path("unbound.pid"),),
            "    do-daemonize: no",
            "    use-syslog: no",
            '    logfile: "%s"' % (self._path(self.program + ".log"),),
            "    verbosity: 1",
            # no DNSSEC validation: the test zones are unsigned and have no trust anchor
            '    module-config: "iterator"',
        ]
        # unbound answers RFC 6761 names (test., invalid., ...) itself with NXDOMAIN; a
        # more specific transparent zone lets queries under each stub through
        lines += ['    local-zone: "%s" transparent' % (zone,) for zone in self.stubs]
        lines += ["remote-control:", "    control-enable: yes",
                  '    control-interface: "%s"' % (self._path("unbound.ctl"),),
                  "    control-use-cert: no"]
        for zone, (host, port) in self.stubs.items():
            lines += ["stub-zone:", '    name: "%s"' % (zone,),
                      "    stub-addr: %s@%d" % (host, port)]
        return "\n".join(lines) + "\n"

    def _argv(self):
        return [findTool(self.program), "-d", "-c", self._configPath]

    async def _prepare(self):
        # a stub unbound cannot use fails here with unbound's own message, not as a timeout
        await checkedTool(self.reactor, [findTool("unbound-checkconf"), self._configPath])

    def _control(self, *args):
        return checkedTool(self.reactor, [findTool("unbound-control"), "-c", self._configPath,
                                          *args])

    def _answers(self):
        # unbound answers localhost. itself: proof it serves, without asking a stub
        return answers(self.reactor, self.address, "localhost.", "A",
                       lambda a: a.status == "NOERROR")

    async def _started(self):
        await self._control("status")

    async def flush(self, *zones):
        """Forget everything cached under ``zones`` (default: every stub zone),
        every negative answer, and what unbound learnt about its servers (a
        server that timed out is not avoided afterwards)."""
        for zone in zones or self.stubs:
            await self._control("flush_zone", zone)
        await self._control("flush_negative")
        await self._control("flush_infra", "all")
