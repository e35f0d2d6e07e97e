"""[router.security] end to end: a real router process with CURVE, a real actor process (its own
key), keys made with `sctl keys`, and clients acting as operator, reader, actor, revoked and
keyless peers. What must hold: no key or a revoked key gets neither a subscription nor a
publish and the router logs the refusal with the peer address; an actor key cannot publish as
another actor; a read-only key cannot command; an operator key can."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from broker import security
from broker.client import delivery
from broker.client.bus import Bus, client_name
from broker.config import SiteConfig, load_site
from broker.wire import envelope
from broker.wire.errors import BusError, RequestTimeout
from tests.support.echo import EchoServer
from tests.support.stack import ROOT, Proc, Stack, sctl_cmd, subprocess_env, wait_for

ROUTER_EXTRA = '[router.security]\ncurve = true\nkeys_dir = "keys"\n'
ACTOR = """
[actors.reader1]
type = "tests.support.actors:EchoActor"
port = {port}
heartbeat_interval = 0.2
"""


def sctl(site: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sctl_cmd("-c", str(site), *args), cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


class Secure:
    def __init__(self, path: Path, router: Proc, actor: Proc, operator: Bus) -> None:
        self.path = path
        self.router = router
        self.actor = actor
        self.operator = operator
        self.site: SiteConfig = load_site(path)
        self.seen: list[tuple[str, dict[str, Any]]] = []

    @property
    def keys_dir(self) -> Path:
        return self.path.parent / "keys"

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for d in self.operator.poll(0.05):
                self.seen.append((d.topic, d.envelope.to_map()))

    def heard(self, topic: str) -> bool:
        self.pump(0.1)
        return any(t == topic for t, _ in self.seen)

    def wait_denied(self, what: str, **match: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            self.pump(0.1)
            for topic, env in self.seen:
                data = env["data"]
                if topic == "sys.router.denied" and all(data.get(k) == v
                                                        for k, v in match.items()):
                    return dict(data)
            return None
        wait_for(lambda: found() is not None, 15.0, what)
        report = found()
        assert report is not None
        return report

    def commands_run(self) -> int:
        """The actor's own count of commands executed, from its latest heartbeat."""
        self.pump(0.5)
        beats = [env for topic, env in self.seen if topic == "hb.reader1"]
        assert beats, "no heartbeat from reader1"
        return int(beats[-1]["data"]["counters"]["commands"])


@pytest.fixture
def secure(tmp_path: Path, stack: Stack) -> Iterator[Secure]:
    device = EchoServer().start()
    path = stack.write(ACTOR.format(port=device.port), router_extra=ROUTER_EXTRA)
    for args in (("router",), ("operator", "--role", "operator"), ("reader1",)):
        done = sctl(path, "keys", "gen", *args)
        assert done.returncode == 0, done.stderr
    keys = tmp_path / "keys"
    security.gen_key(keys, "reader2", "actor")
    security.gen_key(keys, "viewer", "reader")
    router = stack.start_router()
    actor = stack.start_actor("reader1")
    try:
        operator = stack.client("", name="tester", identity="operator")
        env = Secure(path, router, actor, operator)
        wait_for(lambda: env.heard("hb.reader1"), 20.0,
                 "reader1's heartbeat through the CURVE router")
        yield env
    finally:
        stack.stop()
        device.close()


def test_operator_key_commands_and_read_only_key_is_refused(secure: Secure) -> None:
    refused = sctl(secure.path, "--as", "viewer", "send", "reader1", "ping", "--timeout", "3")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "the router refused our seq" in refused.stderr  # loud on the sender's side too
    report = secure.wait_denied("the viewer's command reported", key="viewer",
                                topic="cmd.reader1")
    assert report["role"] == "reader" and "read-only" in report["reason"]
    assert "denied: key 'viewer' (reader) published cmd.reader1" in secure.router.output()
    ok = sctl(secure.path, "send", "reader1", "ping")  # default identity: operator
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wait_for(lambda: secure.commands_run() >= 1, 15.0, "reader1 counting the operator's ping")
    assert secure.commands_run() == 1  # the viewer's ping (and its retries) never arrived
    viewer_client = refused.stderr.split(": the router refused")[0].split()[-1]
    assert viewer_client.startswith("sctl-")
    assert not [env for topic, env in secure.seen if env["src"] == viewer_client]
    state = secure.operator.state()
    assert state["denied"]["by_key"]["viewer"] >= 1


def test_actor_key_cannot_publish_as_another_actor(secure: Secure) -> None:
    sec = security.security_of(secure.site.router.security)
    assert sec is not None
    pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
    for opt, value in security.client_options(sec, "reader2").items():
        pub.setsockopt(opt, value)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(secure.site.router.connect_url("ingress"))
    forged = envelope.make("reader1", envelope.make("x", 1, 1, "event", {}).epoch, 1, "event",
                           {"tag": "FORGED"}).encode()
    try:
        # PUB drops until connected: send until the router has reported it
        def sent_and_reported() -> bool:
            pub.send_multipart([b"evt.reader1.tag", forged])
            secure.pump(0.2)
            return any(t == "sys.router.denied" and e["data"].get("key") == "reader2"
                       for t, e in secure.seen)
        wait_for(sent_and_reported, 15.0, "the forged envelope reported on sys.router.denied")
    finally:
        pub.close()
    report = secure.wait_denied("forged src", key="reader2", src="reader1")
    assert "src 'reader1' is not 'reader2'" in report["reason"]
    assert not [e for t, e in secure.seen if t == "evt.reader1.tag"]  # never forwarded
    assert "denied: key 'reader2' (actor)" in secure.router.output()
    # a Bus of reader2 posing as reader1 cannot even sync, so it can publish nothing
    posing = Bus(secure.site.router, "reader1", identity="reader2")
    try:
        assert not posing.connect(wait=1.5)
    finally:
        posing.close()
    ok = sctl(secure.path, "send", "reader1", "ping")  # the real reader1 is undisturbed
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_no_key_and_revoked_key_get_neither_feed_nor_publish(secure: Secure) -> None:
    plain_router = dataclasses.replace(secure.site.router, security={})
    keyless = Bus(plain_router, client_name("keyless"))
    raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.subscribe(b"")
    raw.connect(secure.site.router.connect_url("egress"))
    try:
        assert not keyless.connect(wait=2.0)  # no sync answer: its probes never got in
        secure.operator.publish("evt.tester.ping", "event", {"n": 1})
        assert secure.operator.flush(10.0)
        assert not raw.poll(1500), "a keyless SUB received the feed"
        with pytest.raises(BusError, match="did not answer"):  # nor the query socket
            delivery.query(zmq.Context.instance(), plain_router.connect_url("query"),
                           {"op": "state"}, 1.0)
    finally:
        keyless.close()
        raw.close()
    wait_for(lambda: "CURVE handshake refused from 127.0.0.1:" in secure.router.output(),
             10.0, "the router logging the keyless peer with its address")

    security.gen_key(secure.keys_dir, "tool", "operator")
    tool = Bus(secure.site.router, "tool", identity="tool")
    try:
        assert tool.connect(wait=15.0)
        tool.publish("evt.tool.x", "event", {"n": 1})
        assert tool.flush(10.0)
        done = sctl(secure.path, "keys", "revoke", "tool")
        assert done.returncode == 0, done.stderr
        listed = sctl(secure.path, "keys", "list").stdout
        assert any(line.split()[:3] == ["tool", "operator", "revoked"]
                   for line in listed.splitlines())
        # the open connection can no longer publish (the router re-reads keys/ each second)
        def refused_now() -> bool:
            tool.publish("evt.tool.x", "event", {"n": 2})
            secure.pump(0.5)
            return any(t == "sys.router.denied" and e["data"].get("key") == "tool"
                       for t, e in secure.seen)
        wait_for(refused_now, 15.0, "a publish on the revoked key's open connection refused")
        report = secure.wait_denied("revoked key's publish", key="tool")
        assert "not allowed" in report["reason"]
    finally:
        tool.close()
    again = Bus(secure.site.router, "tool", identity="tool")
    try:
        assert not again.connect(wait=2.0)
    finally:
        again.close()
    wait_for(lambda: "reason revoked key" in secure.router.output(), 10.0,
             "the router logging the revoked key's handshake")
    line = next(ln for ln in secure.router.output().splitlines() if "revoked key" in ln)
    assert "refused from 127.0.0.1" in line


def test_keys_cli_and_missing_key_message(secure: Secure, tmp_path: Path) -> None:
    secret = (secure.keys_dir / "operator.key_secret")
    assert secret.stat().st_mode & 0o077 == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    public, _ = zmq.auth.create_certificates(outside, "dashboard")
    done = sctl(secure.path, "keys", "allow", str(public), "--role", "reader")
    assert done.returncode == 0 and "allowed dashboard (reader)" in done.stdout, done.stderr
    assert not (secure.keys_dir / "dashboard.key_secret").exists()
    missing = sctl(secure.path, "--as", "ghost", "sub", "--timeout", "2")
    assert missing.returncode == 2
    assert "no readable secret key for identity 'ghost'" in missing.stderr
    key = secret.read_text()
    for text in (secure.router.output(), secure.actor.output(), missing.stderr):
        assert key.split('secret-key = "')[1][:40] not in text
    with pytest.raises(RequestTimeout):
        reader = Bus(secure.site.router, client_name("dash"), identity="viewer")
        try:
            assert reader.connect(wait=15.0)  # a reader may sync and subscribe
            reader.request("reader1", "ping", timeout=1.5)
        finally:
            reader.close()
