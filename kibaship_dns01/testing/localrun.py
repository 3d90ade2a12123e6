"""Run the product's main job end to end on this machine.

    python -m kibaship_dns01.testing.localrun [--keep-running] [--workdir DIR] [--delegation]

Starts a six-node Valkey cluster (password protected), a stand-in Kubernetes
API server holding a Kibaship Certificate -> CertificateRequest -> Order ->
Challenge chain, and the real ``twistd kibaship-dns01`` over TLS; then plays
cert-manager: sends the ``Present`` (through the front proxy, as the
kube-aggregator does), moves the Challenge through pending ->
waiting_for_dns -> valid and the Certificate to Ready, sends the
``CleanUp``, and prints every stream entry as the frontend receives it
(read back with ``valkey-cli XRANGE``).

``--delegation`` plays delegated renewals (issue 21) instead, with knot as the
user's DNS and unbound as the resolver cert-manager and the CA would ask: the
first Present offers the CNAME, the user adds it once, ``delegation_active``
says it works, the renewal's Present says ``active: true``, and ``dig``
through unbound shows the key the daemon serves.
"""
import argparse
import json
import os
import secrets
import shutil
import sys

from twisted.internet import defer, task

from kibaship_dns01.testing import certmanager as cm
from kibaship_dns01.testing.daemon import DaemonProcess
from kibaship_dns01.testing.delegationworld import DelegationWorld
from kibaship_dns01.testing.environment import FRONT_PROXY_CN, LocalEnvironment
from kibaship_dns01.testing.polling import pollUntil
from kibaship_dns01.testing.ports import freePort
from kibaship_dns01.testing.valkeycluster import ValkeyCluster
from kibaship_dns01.valkey import streamKey


#: the exit status after a Ctrl-C that came before the end of the run (128 + SIGINT)
INTERRUPTED = 130


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m kibaship_dns01.testing.localrun",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="local-run", help="certificates, kubeconfig, logs")
    p.add_argument("--port", type=int, default=8443, help="the daemon's --secure-port")
    p.add_argument("--metrics-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--keep-running", action="store_true",
                   help="leave everything up until Ctrl-C")
    p.add_argument("--delegation", action="store_true",
                   help="delegated renewals instead: the CNAME offer, the user's one-time "
                        "CNAME (knot), a renewal that needs nobody, dig through unbound")
    return p.parse_args(argv)


def _say(text=""):
    print(text, flush=True)


def _curlHints(env, base):
    w = env.workdir
    return (f"curl --cacert {w}/ca.crt --cert {w}/front-proxy.crt --key {w}/front-proxy.key "
            f"-H 'X-Remote-User: system:kube-aggregator' -H 'X-Remote-Group: system:masters' "
            f"{base}/apis/{env.groupName}/v1alpha1")


async def _run(reactor, args, cluster, stopping):
    """The run; ``stopping`` fires when a Ctrl-C cancels it (see :func:`_runUntilStopped`)."""
    env = LocalEnvironment(reactor, os.path.abspath(args.workdir), cluster)
    await env.start()
    world = DelegationWorld(reactor, env) if args.delegation else None
    extra = ("--log-format", "text")
    if world is not None:
        _say("starting knot (the user's zone %s) and unbound (the resolver) ..." % (
            world.userZone,))
        await world.start()
        extra = (*world.delegationArgs(0), *extra)
    metricsPort = args.metrics_port or freePort()
    daemon = DaemonProcess(reactor, env.daemonArgs(args.port, metricsPort, extra),
                           cwd=env.workdir)
    daemon.start()
    base = f"https://localhost:{args.port}"
    try:
        await daemon.waitReady(base, env.servingCA.certPEM)
        _say(f"daemon ready at {base} (metrics http://127.0.0.1:{metricsPort}/metrics)")
        project = env.chain.certificate["metadata"]["labels"]["platform.kibaship.com/project-uuid"]
        key = streamKey(project)
        if world is None:
            ok = await _lifecycle(reactor, env, base, cluster, key)
        else:
            ok = await _delegated(reactor, env, world, base, cluster, key, project)
        _say(f"\nvalkey-cli -c XRANGE {key} - +   (every entry, as the frontend receives it)")
        for entryId, fields in cluster.xrange(key):
            data = json.loads(fields.pop("event_data"))
            _say(f"\n--- entry {entryId}")
            _say(json.dumps(dict(fields, event_data=data), indent=2))
        if args.keep_running:
            _say(f"\nfront-proxy client certificate (CN {FRONT_PROXY_CN}) in {env.workdir}; try:")
            _say(_curlHints(env, base))
            _say("Ctrl-C to stop.")
            try:
                await defer.Deferred()  # cancelled by _runUntilStopped on Ctrl-C
            except defer.CancelledError:
                _say("stopping ...")
        return 0 if ok else 1
    except Exception:
        if not stopping.called:  # after a Ctrl-C the error is the cancellation itself
            _say(daemon.output.decode(errors="replace"))
        raise
    finally:
        await daemon.stop()
        if world is not None:
            await world.stop()
        await env.stop()
        with open(os.path.join(env.workdir, "daemon.log"), "wb") as f:
            f.write(daemon.output)


async def _post(env, base, action, challenge=None):
    resp = await env.post(base, action=action, challenge=challenge)
    _say(f"POST {env.groupName}/v1alpha1/{env.solverName} ({action}) -> HTTP {resp.code}: "
         f"{json.dumps(resp.json()['response'])}")
    return resp.code == 201 and resp.json()["response"]["success"]


async def _lifecycle(reactor, env, base, cluster, key):
    """Play cert-manager from Present to CleanUp; wait for each entry to land."""
    store, chain = env.api.store, env.chain
    challenge, dnsName = chain.challenges[0], chain.challenges[0]["spec"]["dnsName"]
    steps = [
        ("Present", lambda: None),
        ("Challenge pending (presented)", lambda: cm.setChallengeStatus(
            store, challenge, "pending")),
        ("Challenge: self-check cannot see the record yet", lambda: cm.setChallengeStatus(
            store, challenge, "pending", cm.propagationReason(dnsName))),
        ("Challenge valid", lambda: cm.setChallengeStatus(
            store, challenge, "valid", cm.AUTHORIZED_REASON)),
        ("Certificate Ready, revision 1", lambda: cm.setCertificateIssued(
            store, chain.certificate, 1, at=reactor.seconds())),
        ("CleanUp", lambda: None),
    ]
    ok = True
    for count, (what, change) in enumerate(steps, start=1):
        _say(f"\n== {what}")
        if what in ("Present", "CleanUp"):
            ok = await _post(env, base, what) and ok
        else:
            change()
        await pollUntil(reactor, lambda: len(cluster.xrange(key)) >= count, 20.0, 0.2,
                        what=f"entry {count} ({what})")
        _, fields = cluster.xrange(key)[-1]
        payload = json.loads(fields["event_data"])["payload"]
        detail = {"status": lambda: f" phase={payload['phase']} state={payload['state']}",
                  "issued": lambda: f" revision={payload['revision']}"}.get(
            fields["operation"], lambda: "")()
        _say(f"   stream entry {fields['sequence']}: operation={fields['operation']}{detail}")
    return ok


async def _step(reactor, cluster, key, count, what):
    """Wait for the stream's ``count``-th entry; say what it is."""
    await pollUntil(reactor, lambda: len(cluster.xrange(key)) >= count, 20.0, 0.2,
                    what=f"entry {count} ({what})")
    _, fields = cluster.xrange(key)[count - 1]
    payload = json.loads(fields["event_data"])["payload"]
    detail = {"status": lambda: f" phase={payload['phase']} state={payload['state']}",
              "issued": lambda: f" revision={payload['revision']}"}.get(
        fields["operation"], lambda: "")()
    if "delegation" in payload:
        detail += f" delegation.active={json.dumps(payload['delegation']['active'])}"
    _say(f"   stream entry {fields['sequence']}: operation={fields['operation']}{detail}")
    return payload


async def _dig(world, name, replica=None):
    """Run dig as a person would, and show what it printed."""
    if replica is None:
        _say("   $ " + world.resolverCommand(name))
        answer = await world.askResolver(name)
    else:
        _say("   $ " + world.replicaCommand(replica, name))
        answer = await world.askReplica(replica, name)
    shown = [f"{r.name} {r.ttl} {r.rdclass} {r.rdtype} {r.data}" for r in answer.answer]
    _say(f"   status: {answer.status}" + "".join("\n   " + line for line in shown))
    return answer


async def _delegated(reactor, env, world, base, cluster, key, project):
    """Delegated renewals as a user lives them: the offer, one CNAME, renewals alone."""
    store, chain = env.api.store, env.chain
    challenge, dnsName = chain.challenges[0], chain.challenges[0]["spec"]["dnsName"]
    ok = True
    _say("\n== Present (first issuance): the TXT instruction, and the CNAME offered once")
    ok = await _post(env, base, "Present") and ok
    offer = (await _step(reactor, cluster, key, 1, "present"))["delegation"]
    _say(f"   offer: {offer['name']} CNAME {offer['value']}  (active: "
         f"{json.dumps(offer['active'])})")
    _say("   the daemon already serves the key at that name:")
    await _dig(world, offer["value"], replica=0)

    _say(f"\n== The user adds, once, in their own DNS (knot, zone {world.userZone}):")
    _say(f"   {offer['name']}. CNAME {offer['value']}.")
    await world.addCNAME(world.delegationFor(project))
    _say("   what cert-manager's self-check and the CA now see through the resolver:")
    await _dig(world, offer["name"])
    cm.setChallengeStatus(store, challenge, "pending", cm.propagationReason(dnsName))
    await _step(reactor, cluster, key, 2, "the CNAME seen")
    await _step(reactor, cluster, key, 3, "waiting")
    cm.setChallengeStatus(store, challenge, "valid", cm.AUTHORIZED_REASON)
    await _step(reactor, cluster, key, 4, "verified")
    cm.setCertificateIssued(store, chain.certificate, 1, at=reactor.seconds())
    await _step(reactor, cluster, key, 5, "issued")
    ok = await _post(env, base, "CleanUp") and ok
    await _step(reactor, cluster, key, 6, "cleanup")

    _say("\n== 45 days later, the renewal: a new key, and nobody is asked")
    renewal = cm.renewal(chain, revision=2, keySeed="renewal")
    renewal.addTo(store, certificate=False)
    renewed = renewal.challenges[0]
    ok = await _post(env, base, "Present", renewed) and ok
    ok = (await _step(reactor, cluster, key, 7, "present"))["delegation"]["active"] is True and ok
    await world.unbound.flush()
    answer = await _dig(world, offer["name"])
    ok = renewed["spec"]["key"] in answer.values("TXT") and ok
    cm.setChallengeStatus(store, renewed, "valid", cm.AUTHORIZED_REASON)
    await _step(reactor, cluster, key, 8, "verified")
    cm.setCertificateIssued(store, chain.certificate, 2, at=reactor.seconds())
    await _step(reactor, cluster, key, 9, "issued")
    ok = await _post(env, base, "CleanUp", renewed) and ok
    await _step(reactor, cluster, key, 10, "cleanup")
    _say("   after the CleanUp the key is withdrawn:")
    await _dig(world, offer["value"], replica=0)
    return ok


def _runUntilStopped(reactor, args, cluster):
    """:func:`_run`, cancelled when the reactor is asked to stop (Ctrl-C).

    Left alone, a Ctrl-C stops the reactor under a coroutine still awaiting,
    and the interpreter later closes it at exit: its ``finally`` then awaits
    the daemon's stop inside ``GeneratorExit`` ("coroutine ignored
    GeneratorExit"), and nothing is cleaned up.  Cancelling it instead runs
    the cleanup while the reactor still turns, and the shutdown waits for it.
    A run interrupted before its end exits with :data:`INTERRUPTED`.
    """
    stopping = defer.Deferred()
    run = defer.ensureDeferred(_run(reactor, args, cluster, stopping))
    ended = defer.Deferred()
    run.addBoth(lambda result: ended.callback(None) or result)

    def onShutdown():
        stopping.callback(None)
        run.cancel()
        return ended

    def interrupted(failure):
        # KeyboardInterrupt: a Ctrl-C before the reactor ran (and installed its handler);
        # after one, whatever the cancelled step failed with is the interruption
        if stopping.called or failure.check(KeyboardInterrupt):
            return INTERRUPTED
        return failure

    reactor.addSystemEventTrigger("before", "shutdown", onShutdown)
    return run.addErrback(interrupted).addCallback(_exitStatus)


def _exitStatus(code):
    """``task.react`` ignores what its function returns; only ``SystemExit`` sets the status."""
    if code:
        raise SystemExit(code)


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    if shutil.which("valkey-server") is None:
        sys.exit("valkey-server is not installed; see README.md (bookworm-backports)")
    _say("starting a 6-node Valkey cluster ...")
    cluster = ValkeyCluster(password=secrets.token_urlsafe(16)).start()
    _say(f"Valkey cluster up: {', '.join(n.address for n in cluster.nodes)}")
    try:
        task.react(_runUntilStopped, (args, cluster))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
