"""sctl alerts end to end: the router, ``sctl alerts`` as its own process, and real receivers
on loopback (tests.support.receivers): an SMTP server requiring STARTTLS and a login
(aiosmtpd, a certificate from the test PKI), a webhook (http.server) that is down for a while,
hangs or answers errors, and a UDP syslog receiver. Alarms are published on the bus; link
outages come from a real actor whose device is not there yet; restarts from a watchdog view."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.certs import Pki, pki  # noqa: F401  (the fixture)
from tests.support.echo import EchoServer
from tests.support.receivers import SmtpReceiver, SyslogReceiver, WebhookReceiver
from tests.support.stack import (
    ROOT,
    Feed,
    Stack,
    free_port,
    sctl_cmd,
    subprocess_env,
    wait_for,
    write_site,
)

SYSLOG = re.compile(r'<(\d+)>1 \S+Z \S+ sctl \d+ (\S+) \[sctl@32473 id="([^"]+)" '
                    r'key="([^"]+)" state="(\w+)" source="[^"]*" count="\d+"\] (.*)', re.S)

ALL = """
[alerts]
resolve_after = 2.0
[alerts.webhook]
url = "http://127.0.0.1:{web}/hook"
retry_max = 0.5
timeout = 2.0
[alerts.email]
host = "127.0.0.1"
port = {smtp}
ca = "{ca}"
credentials_file = "{creds}"
from = "sctl@example.org"
to = ["ops@example.org"]
retry_max = 0.5
[alerts.syslog]
address = "udp://127.0.0.1:{udp}"
"""


def syslog_alerts(receiver: SyslogReceiver) -> list[tuple[str, str, str, str]]:
    """(kind, key, state, title) of each datagram, which must all be RFC 5424."""
    out = []
    for data in receiver.got():
        match = SYSLOG.fullmatch(data.decode())
        assert match is not None, data
        out.append((match[2], match[4], match[5], match[6]))
    return out


@pytest.fixture
def syslog() -> Iterator[SyslogReceiver]:
    receiver = SyslogReceiver()
    yield receiver
    receiver.close()


def start_alerts(stack: Stack, feed: Feed) -> None:
    stack.spawn("alerts", "--log-format", "json", "alerts")
    feed.wait("sys.alerts", timeout=20, what="the alerts program's first status")


def test_an_alarm_reaches_every_receiver_once_then_resolved_once(
        stack: Stack, pki: Pki, syslog: SyslogReceiver, tmp_path: Path) -> None:  # noqa: F811
    creds = tmp_path / "smtp-credentials"
    creds.write_text("alerts\ns3cret\n")
    creds.chmod(0o600)
    web = WebhookReceiver(free_port())  # down: nothing listens on its port yet
    smtp = SmtpReceiver(free_port(), pki.server, "alerts", "s3cret").start()
    try:
        stack.write(ALL.format(web=web.port, smtp=smtp.port, udp=syslog.port, ca=pki.ca.cert,
                               creds=creds))
        tested = stack.sctl("alerts", "--test", "--timeout", "5")
        assert tested.returncode == 1, tested
        assert "email: delivered" in tested.stdout and "syslog: delivered" in tested.stdout
        assert re.search(r"webhook: FAILED: POST http://\S+: .*refused", tested.stdout), \
            tested.stdout
        assert [(m["Subject"], tls, user) for m, tls, user in smtp.got()] == \
            [(f"[sctl] INFO test alert from sctl alerts on {m['Subject'].split()[-1]}", True,
              "alerts") for m, _, _ in smtp.got()]
        mails_before, syslog_before = len(smtp.got()), len(syslog.got())

        stack.start_router()
        feed = stack.watch("sys.alerts")
        start_alerts(stack, feed)
        bus = feed.bus
        alarm = {"alarm": "outbox_overflow", "source": "reader1",
                 "message": "reader1: outbox overflow dropped 3 envelope(s)"}
        for _ in range(3):  # one episode: sent once
            bus.publish("sys.alarm", "system", alarm)
        assert bus.flush(10)
        wait_for(lambda: len(syslog.got()) > syslog_before, 10, "the syslog alert")
        time.sleep(0.5)  # the webhook stays down a while longer: its alert waits
        web.start()
        wait_for(lambda: len(web.got()) == 2 and len(smtp.got()) == mails_before + 2
                 and len(syslog.got()) == syslog_before + 2, 20, "open and resolved everywhere")
        feed.drain(1.0)  # and nothing more comes

        assert len(web.got()) == 2 and len(syslog.got()) == syslog_before + 2
        (h1, opened), (_, resolved) = web.got()
        assert (opened["state"], resolved["state"]) == ("open", "resolved")
        assert opened["id"] == resolved["id"] and opened["key"] == "outbox_overflow:reader1"
        assert opened["title"] == alarm["message"] and opened["data"]["source"] == "reader1"
        assert resolved["count"] == 3 and resolved["data"]["why"].startswith("no repeat")
        assert h1["Idempotency-Key"] == f"{opened['id']}/open"
        assert h1["Content-Type"] == "application/json"
        [(m1, tls1, _), (m2, _, _)] = smtp.got()[mails_before:]
        assert m1["Subject"] == f"[sctl] OPEN {alarm['message']}" and tls1
        subject = m2["Subject"].replace("\r\n", "")  # unfolded
        assert subject == f"[sctl] RESOLVED resolved: {alarm['message']} (no repeat for 2 s)"
        assert m2["In-Reply-To"] == m1["Message-ID"] and m1["To"] == "ops@example.org"
        assert "outbox_overflow:reader1" in m1.get_payload()
        kinds = syslog_alerts(syslog)[syslog_before:]
        assert [(k, key, s) for k, key, s, _ in kinds] == [
            ("alarm", "outbox_overflow:reader1", "open"),
            ("alarm", "outbox_overflow:reader1", "resolved")]
        # the program's log: one JSON object a line, the alert in its context
        lines = [json.loads(ln) for ln in stack.output("alerts").splitlines()
                 if ln.startswith("{")]
        assert lines and all(ln["program"] == "alerts" and ln["time"].endswith("Z")
                             for ln in lines)
        logged = [ln for ln in lines if ln["message"].startswith("ALERT open")]
        assert logged[0]["alert"]["id"] == opened["id"]
    finally:
        web.stop()
        smtp.stop()


def test_a_hanging_webhook_delays_neither_syslog_nor_the_rest(
        stack: Stack, syslog: SyslogReceiver) -> None:
    web = WebhookReceiver(free_port()).start()
    web.mode = "hang"
    try:
        stack.write(f"""
[alerts]
[alerts.webhook]
url = "http://127.0.0.1:{web.port}/hook"
timeout = 1.0
retry_max = 0.5
max_per_minute = 100
[alerts.syslog]
address = "udp://127.0.0.1:{syslog.port}"
max_per_minute = 30
""")
        stack.start_router()
        feed = stack.watch("sys.alerts")
        start_alerts(stack, feed)
        started = time.monotonic()
        for n in range(32):
            feed.bus.publish("sys.alarm", "system", {"alarm": "ingress_lost", "source": f"a{n}"})
        assert feed.bus.flush(10)
        # behind a webhook attempt each (1 s timeout) they would take 30 s and more
        wait_for(lambda: len(syslog.got()) >= 30, 15, "30 syslog alerts")
        assert time.monotonic() - started < 10.0
        # the rate limit: 30 a minute; the 2 over it are summed up once a token is back (2 s)
        wait_for(lambda: any(k == "summary" for k, *_ in syslog_alerts(syslog)), 10,
                 "the rate limit's summary")
        summary = next(t for k, _, _, t in syslog_alerts(syslog) if k == "summary")
        assert summary.startswith("2 alert(s) not sent: more than 30 a minute (ingress_lost:a3")
        assert web.got() == [] and web.attempts >= 2  # still hanging, tried again after timeouts
        status = feed.wait("sys.alerts", lambda d: d["receivers"]["webhook"]["retries"] > 0,
                           after=len(feed.seen), timeout=15)
        assert status["receivers"]["syslog"]["suppressed"] == 2
        assert status["receivers"]["webhook"]["queued"] >= 30
        web.release()
        wait_for(lambda: len({h["Idempotency-Key"] for h, _ in web.got()}) == 32, 20,
                 "every alert at the webhook once it answers")
        keys = [body["key"] for _, body in web.got()]
        assert sorted(set(keys)) == sorted(f"ingress_lost:a{n}" for n in range(32))
    finally:
        web.stop()


def test_link_outages_and_restarts_are_alerts_too(
        stack: Stack, syslog: SyslogReceiver) -> None:
    echo = EchoServer(free_port())  # not started yet: the actor's device is away
    stack.write(f"""
[actors.echo1]
type = "tests.support.actors:EchoActor"
port = {echo.port}
backoff_min = 0.2
backoff_max = 0.5
heartbeat_interval = 0.2
[alerts]
link_down_after = 1.0
restarts = true
[alerts.syslog]
address = "udp://127.0.0.1:{syslog.port}"
""")
    stack.start_router()
    feed = stack.watch("sys.alerts")
    start_alerts(stack, feed)
    stack.spawn("echo1", "--log-format", "json", "actor", "echo1")
    try:
        wait_for(lambda: ("link_down", "link:echo1", "open") in
                 [a[:3] for a in syslog_alerts(syslog)], 15, "the link alert")
        echo.start()
        wait_for(lambda: ("link_down", "link:echo1", "resolved") in
                 [a[:3] for a in syslog_alerts(syslog)], 15, "the link resolved")
        for total, reason in ((2, ""), (3, "exited: boom")):  # the first view sets the baseline
            feed.bus.publish("sys.watchdog.h1", "system", {"host": "h1", "programs": {
                "echo1": {"total_restarts": total, "alarm": None, "last_reason": reason}}})
        assert feed.bus.flush(10)
        wait_for(lambda: any(a[0] == "restart" for a in syslog_alerts(syslog)), 10,
                 "the restart alert")
        [restart] = [a for a in syslog_alerts(syslog) if a[0] == "restart"]
        assert restart[1:] == ("restart:echo1", "open",
                               "echo1 restarted by the watchdog: exited: boom")
        lines = [json.loads(ln) for ln in stack.output("echo1").splitlines()
                 if ln.startswith("{")]
        assert any(ln["program"] == "echo1" and ln["logger"] == "actors.core.actor"
                   and "link" in ln["message"] for ln in lines), lines[:5]
    finally:
        echo.stop()


def test_a_bad_alerts_table_is_refused_at_start_with_its_key_path(tmp_path: Path) -> None:
    site = write_site(tmp_path, '[alerts]\nrestarts = "yes"\n[alerts.syslog]\n'
                                'address = "udp://127.0.0.1"\n')
    done = subprocess.run(sctl_cmd("-c", str(site), "alerts"), cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done
    assert f"{site}: alerts.restarts: expected true/false" in done.stderr
    assert f"{site}: alerts.syslog.address: must be udp://HOST:PORT" in done.stderr


def test_syslog_also_over_tcp_octet_counted_and_to_a_local_socket(tmp_path: Path) -> None:
    """The two other syslog transports, with the forwarder alone: TCP frames are ``LEN SP
    MSG`` (RFC 6587 octet counting) on one connection; a unix path gets one datagram each."""
    import socket

    from cli.ops.alert_config import ForwarderConfig
    from cli.ops.alert_forwarders import SyslogForwarder
    from cli.ops.alert_model import Alert

    listener = socket.create_server(("127.0.0.1", 0))
    local = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    local.bind(str(tmp_path / "log.sock"))
    common = {"facility": "daemon", "app_name": "sctl", "kinds": ["alarm"], "queue_max": 10,
              "retry_max": 0.5, "timeout": 5.0, "max_per_minute": 20}
    forwarders = [SyslogForwarder(ForwarderConfig("syslog", {**common, "address": address}),
                                  "site", "host")
                  for address in (f"tcp://127.0.0.1:{listener.getsockname()[1]}",
                                  str(tmp_path / "log.sock"))]
    try:
        for fwd in forwarders:
            fwd.start()
            for n in range(2):
                fwd.offer(Alert(id=f"k{n}@1", key=f"k{n}", kind="alarm", state="open",
                                severity="critical", source="s", title=f"alarm {n}",
                                opened=1.0, time=1.0))
        conn, _ = listener.accept()
        conn.settimeout(10)
        stream, frames = b"", []
        while len(frames) < 2:  # each frame: LENGTH SP MESSAGE; read until two are whole
            length, sep, rest = stream.partition(b" ")
            if sep and len(rest) >= int(length):
                frames.append(rest[:int(length)])
                stream = rest[int(length):]
                continue
            stream += conn.recv(4096)
        local.settimeout(10)
        datagrams = [local.recv(4096), local.recv(4096)]
        for messages in (frames, datagrams):
            assert [SYSLOG.fullmatch(m.decode()) is not None for m in messages] == [True, True]
            assert [m.decode().rsplit("] ", 1)[1] for m in messages] == ["alarm 0", "alarm 1"]
        conn.close()
    finally:
        for fwd in forwarders:
            fwd.stop(1.0)
        listener.close()
        local.close()
