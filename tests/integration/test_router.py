"""The router on real loopback sockets, driven by plain pyzmq peers (no Bus library).

Every peer first loops `ctl.sync` probes until the router's answer arrives on its SUB: a
connecting PUB drops messages until it has the router's subscription, and the answer proves both
paths are live. A sync answer is also a barrier: the router queues it behind everything the same
PUB sent earlier, so "sync answered" means "all earlier messages were processed".
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from broker.config import RouterConfig, load_site
from broker.router.server import Router
from broker.wire import envelope, protocol
from tests.support.stack import ANY_PORT, ROUTER_UP, Stack, wait_for, write_site

Msg = tuple[str, dict[str, Any], int, bytes]  # topic, envelope map, gseq, raw body


class Peer:
    """A raw client: PUB to ingress, SUB (everything) to egress, DEALER to query."""

    def __init__(self, cfg: RouterConfig, name: str = "t1", epoch: int = 1) -> None:
        self.name, self.epoch = name, epoch
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.XPUB_NODROP, 1)
        self.pub.connect(cfg.connect_url("ingress"))
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(cfg.connect_url("egress"))
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.connect(cfg.connect_url("query"))
        self.seen: list[Msg] = []
        self.router_epoch = 0

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    def body(self, seq: int, kind: str = "event", data: dict[str, Any] | None = None,
             **extra: Any) -> bytes:
        return envelope.make(self.name, self.epoch, seq, kind, data or {"n": seq},
                             **extra).encode()

    def send(self, *frames: bytes) -> None:
        self.pub.send_multipart(list(frames))

    def publish(self, seq: int, topic: str = "", **kw: Any) -> bytes:
        body = self.body(seq, **kw)
        self.send((topic or f"evt.{self.name}.x").encode(), body)
        return body

    def recv(self, timeout: float) -> Msg | None:
        if not self.sub.poll(int(timeout * 1000)):
            return None
        topic, body, stamp = self.sub.recv_multipart()
        self.router_epoch, gseq = envelope.unpack_stamp(stamp)
        msg = (topic.decode(), msgpack.unpackb(body), gseq, body)
        self.seen.append(msg)
        return msg

    def wait(self, pred: Callable[[Msg], bool], timeout: float = 10.0) -> Msg:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is not None and pred(msg):
                return msg
        raise AssertionError(f"no matching message within {timeout} s; seen {self.seen[-5:]}")

    def sync(self, timeout: float = 10.0) -> dict[str, Any]:
        """Probe until the answer comes back; returns the answer's data."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            token = os.urandom(4).hex()
            self.send(protocol.SYNC_TOPIC.encode(),
                      self.body(0, kind="system", data={"token": token}))
            end = time.monotonic() + 0.2
            while (left := end - time.monotonic()) > 0:
                msg = self.recv(left)
                if msg and msg[0] == f"ack.{self.name}" and msg[1]["data"].get("sync") == token:
                    return dict(msg[1]["data"])
        raise AssertionError("router never answered ctl.sync")

    def events(self, prefix: str = "evt.") -> list[Msg]:
        return [m for m in self.seen if m[0].startswith(prefix)]

    def query_frames(self, *frames: bytes) -> list[bytes]:
        self.dealer.send_multipart(list(frames))
        assert self.dealer.poll(10_000), "no answer on the query socket"
        return self.dealer.recv_multipart()

    def query(self, req: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, bytes, int]]]:
        frames = self.query_frames(b"q1", protocol.pack(req))
        assert frames[0] == b"q1"
        header = msgpack.unpackb(frames[1])
        rest = frames[2:]
        items = [(rest[i].decode(), rest[i + 1], envelope.unpack_stamp(rest[i + 2])[1])
                 for i in range(0, len(rest), 3)]
        return header, items

    def state(self) -> dict[str, Any]:
        header, _ = self.query({"op": "state"})
        assert header["ok"], header
        return dict(header["state"])


class RunningRouter:
    """A Router in a thread. Its sockets are bound before the thread starts, so `cfg` names
    the ports it got when the given config asked for port 0."""

    def __init__(self, cfg: RouterConfig) -> None:
        self.router = Router(cfg)
        self.router.open()
        self.cfg = dataclasses.replace(cfg, **self.router.endpoints)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.router.run()
        except BaseException as exc:  # surfaced by stop() so the test fails loudly
            self.error = exc

    def stop(self) -> None:
        self.router.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "router did not stop"
        assert self.error is None, self.error


@pytest.fixture
def make_router(tmp_path: Path) -> Iterator[Callable[..., tuple[RouterConfig, RunningRouter]]]:
    started: list[RunningRouter] = []

    def _make(router_extra: str = "", cfg: RouterConfig | None = None,
              ) -> tuple[RouterConfig, RunningRouter]:
        if cfg is None:
            # No stats unless a test asks: they would take gseqs the tests count on.
            quiet = "" if "stats_interval" in router_extra else "stats_interval = 3600.0\n"
            extra = quiet + router_extra
            cfg = load_site(write_site(tmp_path, router_extra=extra,
                                       endpoints=ANY_PORT)).router
        running = RunningRouter(cfg)
        started.append(running)
        return running.cfg, running

    yield _make
    for r in started:
        if r.thread.is_alive():
            r.stop()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def _peer(cfg: RouterConfig, name: str = "t1", epoch: int = 1) -> Peer:
        p = Peer(cfg, name, epoch)
        made.append(p)
        return p

    yield _peer
    for p in made:
        p.close()


def data_of(msg: Msg) -> dict[str, Any]:
    return dict(msg[1]["data"])


# -- journaling, stamps, acks --------------------------------------------------------------


def test_journals_forwards_stamps_and_acks(make_router: Any, peers: Any) -> None:
    cfg, running = make_router()
    p = peers(cfg)
    hello = p.sync()
    assert hello["router_epoch"] == hello["origin"] == running.router.router_epoch
    assert (hello["epoch"], hello["seq"], hello["head"]) == (1, 0, 0)
    sent = [p.publish(seq) for seq in (1, 2, 3)]
    ack = p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 3)
    assert ack[2] == 0 and ack[1]["seq"] == 0 and ack[1]["src"] == "router"
    assert data_of(ack) == {"epoch": 1, "seq": 3}
    evts = p.events()
    assert [m[3] for m in evts] == sent  # the body is forwarded byte for byte
    assert [m[2] for m in evts] == [1, 2, 3]
    assert p.router_epoch == running.router.router_epoch
    assert p.sync()["seq"] == 3


def test_resent_seq_is_dropped_as_duplicate(make_router: Any, peers: Any) -> None:
    cfg, _ = make_router()
    p = peers(cfg)
    p.sync()
    first = p.publish(1)
    p.publish(2)
    p.send(b"evt.t1.x", first)  # a resend after a lost ack
    p.publish(3)
    p.sync()
    assert [m[1]["seq"] for m in p.events()] == [1, 2, 3]
    counts = p.state()["counts"]
    assert counts["duplicates"] == 1 and counts["journaled"] == 3


def test_out_of_order_opens_a_gap_that_the_resend_fills(make_router: Any, peers: Any) -> None:
    cfg, _ = make_router()
    p = peers(cfg)
    p.sync()
    p.publish(1)
    p.publish(3)
    opened = p.wait(lambda m: m[0] == "sys.router.gap")
    assert data_of(opened) == {"src": "t1", "epoch": 1, "expected": 2, "got": 3, "state": "open"}
    assert opened[2] > 0  # gap reports are journaled
    p.publish(4)  # still out of order: counted, not reported again
    p.publish(2)
    p.publish(3)
    filled = p.wait(lambda m: m[0] == "sys.router.gap")
    assert data_of(filled)["state"] == "filled"
    p.publish(4)
    p.sync()
    assert [m[1]["seq"] for m in p.events()] == [1, 2, 3, 4]
    assert len([m for m in p.seen if m[0] == "sys.router.gap"]) == 2
    state = p.state()
    assert state["counts"]["out_of_order"] == 2 and state["counts"]["gaps_open"] == 0


def test_gap_is_declared_lost_after_gap_timeout(make_router: Any, peers: Any) -> None:
    cfg, _ = make_router("gap_timeout = 0.2\n")
    p = peers(cfg)
    p.sync()
    p.publish(1)
    p.publish(4)  # 2 and 3 were dropped by the sender: they never come
    p.wait(lambda m: m[0] == "sys.router.gap" and data_of(m)["state"] == "open")
    lost: list[Msg] = []

    alarms: list[Msg] = []

    def resend_until_lost() -> bool:
        p.publish(5)
        msg = p.recv(0.05)
        if msg and msg[0] == "sys.router.gap" and data_of(msg)["state"] == "lost":
            lost.append(msg)
        if msg and msg[0] == "sys.alarm":
            alarms.append(msg)
        return bool(lost)

    wait_for(resend_until_lost, timeout=10, what="gap declared lost")
    if not alarms:
        alarms.append(p.wait(lambda m: m[0] == "sys.alarm"))
    alarm = data_of(alarms[0])  # the loss is raised where operators look, once
    assert alarm["alarm"] == "ingress_lost" and alarm["missing"] == [2, 3]
    assert "2 message(s) from t1 never arrived" in alarm["message"]
    # Only 2..3 are skipped: 4 was seen, so the sender still holds it and it must not be lost.
    assert data_of(lost[0]) == {"src": "t1", "epoch": 1, "expected": 2, "got": 4,
                                "state": "lost", "missing": [2, 3]}
    p.publish(4)
    p.publish(5)
    p.sync()
    assert [m[1]["seq"] for m in p.events()] == [1, 4, 5]
    assert p.state()["counts"]["gaps_lost"] == 1


# -- bad input -----------------------------------------------------------------------------


def garbage(p: Peer) -> dict[str, int]:
    """Send one of each kind of bad input; returns the expected count per reason.

    The envelopes come from src g1 at seq 50, a pair the router does not know: a refused
    envelope uses up its seq, and seq 50 from p's own pair would be an early seq in its stream.
    """
    def raw(obj: Any) -> bytes:
        return bytes(msgpack.packb(obj))

    def body(seq: int, kind: str = "event", data: dict[str, Any] | None = None,
             **extra: Any) -> bytes:
        return envelope.make("g1", 1, seq, kind, data or {}, **extra).encode()

    good = envelope.make("g1", 1, 50, "event", {}).to_map()
    p.send(b"evt.t1.x")  # one frame
    p.send(b"evt.t1.x", body(50), b"extra")  # three frames
    p.send(b"\xff\xfe", body(50))  # topic not UTF-8
    p.send(b"evt..x", body(50))  # empty segment
    p.send(b"evt.t1.x", os.urandom(300))  # random bytes
    p.send(b"evt.t1.x", b"\xc1\xc1\xc1")  # 0xc1 is never valid msgpack
    p.send(b"evt.t1.x", raw({**good, "seq": "seven"}))  # wrong type
    p.send(b"evt.t1.x", raw([1, 2, 3]))  # not a map
    p.send(b"evt.t1.x", raw({k: v for k, v in good.items() if k != "src"}))  # missing key
    p.send(b"evt.t1.x", raw({**good, "kind": "nonsense"}))  # invalid value
    p.send(b"evt.t1.x", b"\x00" * (20 * 1024 * 1024))  # over max_message_bytes (16 MiB + 64 KiB)
    p.send(b"cmd.t1", body(50))  # an event on a command topic
    p.send(b"evt.t1.x", body(50, kind="command", reply_to="rep.t1"))  # a command elsewhere
    p.send(b"ack.t1", body(50))  # only the router acks
    p.send(b"sys.router.stats", body(50))  # only the router reports
    p.send(b"evt.t1.x", body(0))  # seq 0 outside ctl.sync
    p.send(b"ctl.sync", body(0, kind="system", data={"no": "token"}))
    return {"frames": 2, "topic": 2, "msgpack": 2, "wrong_type": 2, "missing_key": 1,
            "invalid": 1, "too_large": 1, "kind": 2, "reserved": 2, "seq": 1, "sync": 1}


def test_garbage_is_counted_reported_and_valid_traffic_flows(make_router: Any,
                                                             peers: Any) -> None:
    cfg, running = make_router()
    p = peers(cfg)
    p.sync()
    p.publish(1)
    expected = garbage(p)
    p.publish(2)
    expected_2 = garbage(p)
    p.publish(3)
    p.sync()
    assert [m[1]["seq"] for m in p.events()] == [1, 2, 3]
    bad = p.state()["counts"]["bad"]
    assert bad["by_reason"] == {k: 2 * v for k, v in expected.items()} and expected == expected_2
    assert bad["total"] == 2 * sum(expected.values())
    reports = [data_of(m) for m in p.seen if m[0] == "sys.router.bad"]
    assert len(reports) >= 10  # the limiter's burst; the rest may be suppressed
    first = reports[0]
    assert first["reason"] == "frames" and first["topic"] == "evt.t1.x" and first["count"] == 1
    assert set(first) >= {"reason", "error", "topic", "excerpt", "size", "count", "suppressed"}
    assert bytes.fromhex(reports[2]["topic"].encode().hex()) and reports[2]["reason"] == "topic"
    assert running.thread.is_alive()


def test_a_garbage_flood_is_rate_limited(make_router: Any, peers: Any) -> None:
    cfg, _ = make_router()
    p = peers(cfg)
    p.sync()
    started = time.monotonic()
    for _ in range(500):
        p.send(b"evt.t1.x", b"\xc1")
    p.sync()
    elapsed = time.monotonic() - started
    reports = [data_of(m) for m in p.seen if m[0] == "sys.router.bad"]
    assert len(reports) <= 10 + 10 * elapsed + 1
    assert p.state()["counts"]["bad"]["total"] == 500
    suppressed: list[int] = []

    def one_more_reports_the_suppressed() -> bool:
        p.send(b"evt.t1.x", b"\xc1")
        msg = p.recv(0.05)
        if msg and msg[0] == "sys.router.bad" and data_of(msg)["suppressed"] > 0:
            suppressed.append(data_of(msg)["suppressed"])
        return bool(suppressed)

    wait_for(one_more_reports_the_suppressed, what="a report with the suppressed count")
    # Every bad message is either reported or counted in the next report's `suppressed`.
    assert sum(r["suppressed"] for r in reports) + suppressed[0] >= 500 - len(reports)


# -- queries -------------------------------------------------------------------------------


def test_since_last_and_state_queries(make_router: Any, peers: Any) -> None:
    cfg, running = make_router("journal_max_messages = 8\n")
    p = peers(cfg)
    p.sync()
    for seq in range(1, 13):
        p.publish(seq, topic=f"evt.t1.{'a' if seq % 2 else 'b'}")
    p.publish(13, topic="evt.t10.a")
    p.sync()
    state = p.state()
    assert (state["first"], state["last"], state["persistent"]) == (6, 13, False)
    assert state["router_epoch"] == running.router.router_epoch
    assert state["journal"]["evicted"] == 5 and state["journal"]["messages"] == 8
    assert state["sources"] == 1

    header, items = p.query({"op": "since", "gseq": 2, "prefixes": ["evt.t1.a"]})
    assert header["ok"] and header["evicted"] == 4 and header["next"] == 14
    assert not header["more"] and header["router_epoch"] == running.router.router_epoch
    assert [g for _, _, g in items] == [7, 9, 11]
    assert items[0][1] == p.events()[6][3]

    header, items = p.query({"op": "since", "gseq": 0, "prefixes": ["evt.t1"], "limit": 2,
                             "until": 11, "reason": "gap"})
    assert [g for _, _, g in items] == [6, 7] and header["more"] and header["next"] == 8
    header, items = p.query({"op": "since", "gseq": header["next"], "until": 11})
    assert [g for _, _, g in items] == [8, 9, 10, 11] and not header["more"]
    counts = p.state()["counts"]
    assert counts["egress_gaps"] == 1 and counts["egress_missed"] == 5 + 2
    assert counts["replay_requests"] == 3 and counts["replayed"] == 9

    header, items = p.query({"op": "since", "gseq": 100})
    assert header["ok"] and items == [] and header["next"] == 100 and not header["more"]

    header, items = p.query({"op": "last", "prefixes": ["evt.t1"]})
    assert [(t, g) for t, _, g in items] == [("evt.t1.a", 11), ("evt.t1.b", 12)]
    assert header["count"] == 2 and not header["more"]
    header, items = p.query({"op": "last"})
    assert [t for t, _, _ in items] == ["evt.t1.a", "evt.t1.b", "evt.t10.a"]


@pytest.mark.parametrize("frames", [
    [b"q1", b"\xc1"],
    [b"q1", protocol.pack({"op": "bogus"})],
    [b"q1", bytes(msgpack.packb([1, 2]))],
    [b"q1", protocol.pack({"op": "since"})],
    [b"q1", protocol.pack({"op": "since", "gseq": "1"})],
    [b"q1", protocol.pack({"op": "since", "gseq": 1, "limit": 0})],
    [b"q1", protocol.pack({"op": "since", "gseq": 1, "prefixes": "evt"})],
    [b"q1", protocol.pack({"op": "last", "prefixes": ["bad..prefix"]})],
    [b"q1"],
    [b"q1", b"{}", b"extra"],
])
def test_malformed_queries_get_an_error(make_router: Any, peers: Any,
                                        frames: list[bytes]) -> None:
    cfg, _ = make_router()
    p = peers(cfg)
    answer = p.query_frames(*frames)
    assert answer[0] == b"q1" and len(answer) == 2
    header = msgpack.unpackb(answer[1])
    assert header["ok"] is False and header["error"]
    assert p.state()["counts"]["query_errors"] == 1  # and the router still answers


# -- stats ---------------------------------------------------------------------------------


def test_stats_are_published_and_journaled(make_router: Any, peers: Any) -> None:
    cfg, running = make_router("stats_interval = 0.2\n")
    p = peers(cfg)
    p.sync()
    p.publish(1)
    p.query({"op": "since", "gseq": 1, "reason": "gap"})
    stats = p.wait(lambda m: m[0] == "sys.router.stats"
                   and data_of(m)["counts"]["egress_gaps"] == 1)
    data = data_of(stats)
    assert stats[2] > 0 and stats[1]["src"] == "router" and stats[1]["seq"] >= 1
    assert data["router_epoch"] == running.router.router_epoch
    assert set(data["journal"]) >= {"messages", "bytes", "max_messages", "max_bytes",
                                    "evicted", "persistent", "path"}
    assert set(data["rates"]) == {"in", "out"}
    assert set(data["counts"]) >= {
        "received", "journaled", "duplicates", "out_of_order", "bad", "gaps_open", "gaps_lost",
        "replay_requests", "replayed", "egress_gaps", "egress_missed"}
    assert data["subscribers"] >= 1 and data["sources"] == 1
    assert data["counts"]["subscriptions"] >= 1


# -- persistence ---------------------------------------------------------------------------


def test_journal_survives_a_restart_and_resends_are_deduplicated(
        make_router: Any, peers: Any, tmp_path: Path) -> None:
    cfg, first_run = make_router(f'journal_path = "{tmp_path / "journal.bin"}"\n')
    p = peers(cfg)
    p.sync()
    sent = [p.publish(seq) for seq in (1, 2, 3)]
    p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 3)
    old_epoch = first_run.router.router_epoch
    first_run.stop()
    p.close()

    make_router(cfg=cfg)
    q = peers(cfg)  # same src and epoch: a sender that never got its acks resends
    hello = q.sync()
    assert hello["router_epoch"] != old_epoch and hello["seq"] == 3 and hello["head"] == 3
    assert hello["origin"] == old_epoch  # the same gseq numbering goes on
    q.send(b"evt.t1.x", sent[1])
    q.send(b"evt.t1.x", sent[2])
    q.publish(4)
    ack = q.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 4)
    assert ack[1]["src"] == "router"
    assert [(m[1]["seq"], m[2]) for m in q.events()] == [(4, 4)]  # gseq continues
    state = q.state()
    assert state["persistent"] and state["counts"]["duplicates"] == 2
    header, items = q.query({"op": "since", "gseq": 1})
    assert [b for _, b, _ in items][:3] == sent and header["router_epoch"] != old_epoch


# -- port 0: the router says which ports it bound ------------------------------------------


def test_port_0_binds_three_ports_and_the_up_line_names_them(
        make_router: Any, peers: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="broker.router.server")
    cfg, running = make_router()  # the site asks for tcp://127.0.0.1:0 three times
    bound = running.router.endpoints
    ports = {which: int(url.rsplit(":", 1)[1]) for which, url in bound.items()}
    assert sorted(ports) == ["egress", "ingress", "query"]
    assert 0 not in ports.values() and len(set(ports.values())) == 3
    up = ROUTER_UP.search(caplog.text)
    assert up is not None, caplog.text
    assert up.groups() == (bound["ingress"], bound["egress"], bound["query"])
    assert (cfg.ingress, cfg.egress, cfg.query) == up.groups()
    p = peers(cfg)  # what the line names is what answers
    p.sync()
    p.publish(1)
    p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 1)


def test_router_process_on_port_0_restarts_on_the_ports_it_reported(stack: Stack,
                                                                    peers: Any) -> None:
    assert {stack.site.router.ingress, stack.site.router.query} == {"tcp://127.0.0.1:0"}
    first = stack.start_router()  # reads the up line, writes the bound endpoints in the site
    cfg = stack.site.router
    assert cfg.ingress == stack.endpoints["ingress"] != "tcp://127.0.0.1:0"  # type: ignore[index]
    p = peers(cfg)
    p.sync(timeout=20)
    first.kill()
    stack.start_router("router2")  # fails unless it bound the same three endpoints
    assert stack.site.router == cfg
    p.sync(timeout=20)  # the same peer, its sockets reconnected to the new process


# -- the real process ----------------------------------------------------------------------


def test_router_process_stops_cleanly_on_sigterm(stack: Stack, peers: Any) -> None:
    proc = stack.start_router()
    cfg = stack.site.router
    p = peers(cfg)
    p.sync(timeout=20)
    p.publish(1)
    p.wait(lambda m: m[0] == "ack.t1")
    assert proc.kill(signal.SIGTERM) == 0, proc.output()
    assert "stopped" in proc.output()


def test_router_process_exits_nonzero_when_an_endpoint_is_taken(stack: Stack) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        stack.endpoints = {**ANY_PORT, "egress": f"tcp://127.0.0.1:{taken.getsockname()[1]}"}
        stack.write()
        cfg = stack.site.router
        proc = stack.spawn("router", "router")
        assert proc.popen is not None
        assert proc.popen.wait(timeout=20) == 1
    out = proc.output()
    assert cfg.egress in out and "router.egress" in out, out


# -- sources the router does not know, refused envelopes inside a stream ------------------------


def test_unknown_source_not_at_seq_1_is_asked_to_resync(make_router: Any, peers: Any) -> None:
    """A router that lost its state (restart without journal) must not take a sender's later
    seq as the start: the older, unacked ones would then count as duplicates and vanish."""
    cfg, running = make_router()
    p = peers(cfg)
    p.sync()  # no `next`: an outside client that never said where it starts
    p.publish(7)
    ask = p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("resync"))
    assert data_of(ask)["epoch"] == 1
    assert not p.events() and running.router.counts["unknown_source"] >= 1
    # the sender syncs, saying the oldest seq it still holds, then resends from there
    p.send(protocol.SYNC_TOPIC.encode(), p.body(0, kind="system", data={"token": "t", "next": 5}))
    answer = p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("sync") == "t")
    assert data_of(answer)["seq"] == 4
    for seq in (5, 6, 7):
        p.publish(seq)
    p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 7)
    assert [m[1]["seq"] for m in p.events()] == [5, 6, 7]


def test_sync_next_past_the_known_seq_declares_the_rest_lost(make_router: Any,
                                                               peers: Any) -> None:
    cfg, _ = make_router()
    p = peers(cfg)
    p.sync()
    p.publish(1)
    p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 1)
    # the sender's outbox overflowed: it no longer holds 2..9
    p.send(protocol.SYNC_TOPIC.encode(), p.body(0, kind="system", data={"token": "u", "next": 10}))
    gap = p.wait(lambda m: m[0] == "sys.router.gap")
    assert data_of(gap)["state"] == "lost" and data_of(gap)["missing"] == [2, 9]
    p.publish(10)
    p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 10)


def test_refused_envelope_does_not_stall_its_senders_stream(make_router: Any,
                                                             peers: Any) -> None:
    cfg, running = make_router("max_message_bytes = 2000")
    p = peers(cfg)
    p.sync()
    p.publish(1)
    p.publish(2, data={"pad": "x" * 5000})  # too large: refused, but its seq is used up
    p.publish(3, topic="sys.router.fake")  # the router's own topic: refused, seq used up
    p.publish(4)
    ack = p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 4, timeout=5)
    assert ack is not None
    assert [m[1]["seq"] for m in p.events()] == [1, 4]
    assert running.router.bad["too_large"] == 1 and running.router.bad["reserved"] == 1
    assert running.router.counts["gaps_opened"] == 0


def raw_body(p: Peer, seq: int, data: Any) -> bytes:
    """An envelope map with any `data`, packed without envelope.make's validation."""
    m = envelope.make(p.name, p.epoch, seq, "event", {}).to_map()
    return bytes(msgpack.packb({**m, "data": data}, use_bin_type=True))


def test_too_large_body_is_refused_unread_and_consumes_its_seq(
        make_router: Any, peers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body over max_message_bytes is refused before it is decoded (a 20 MiB list of small
    ints takes seconds to decode and check), yet its seq is read from the head and used up."""
    cfg, running = make_router("max_message_bytes = 1048576\n")
    router = running.router
    took: list[tuple[int, float]] = []
    real_ingest = router._ingest

    def timed(frames: list[bytes]) -> None:
        started = time.perf_counter()
        real_ingest(frames)
        took.append((len(frames[-1]), time.perf_counter() - started))

    monkeypatch.setattr(router, "_ingest", timed)
    p = peers(cfg)
    p.sync()
    p.publish(1)
    n = 20 * 1024 * 1024
    head = envelope.make("t1", 1, 2, "event", {"l": []}).encode()
    assert head.endswith(b"\x90")  # data is the last key: {"l": []}, the list is 0x90
    p.send(b"evt.t1.x", head[:-1] + b"\xdd" + n.to_bytes(4, "big") + b"\x00" * n)
    p.publish(3)
    p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 3)
    big = [t for size, t in took if size > n]
    assert len(big) == 1 and big[0] < 0.2, big
    assert [m[1]["seq"] for m in p.events()] == [1, 3]
    assert router.bad["too_large"] == 1 and router.counts["gaps_opened"] == 0
    reports = [data_of(m) for m in p.seen if m[0] == "sys.router.bad"]
    assert [(r["reason"], r["size"] > n) for r in reports] == [("too_large", True)]


def test_envelope_nested_too_deep_is_refused_and_consumes_its_seq(make_router: Any,
                                                                   peers: Any) -> None:
    cfg, running = make_router()
    p = peers(cfg)
    p.sync()
    p.publish(1)
    deep: Any = 1
    for _ in range(envelope.MAX_DEPTH + 5):
        deep = {"k": deep}
    p.send(b"evt.t1.x", raw_body(p, 2, {"a": deep}))
    p.publish(3)
    p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 3, timeout=5)
    assert [m[1]["seq"] for m in p.events()] == [1, 3]
    assert running.router.bad == {**running.router.bad, "invalid": 1}
    assert running.router.counts["gaps_opened"] == 0


def test_refused_first_envelope_still_starts_its_pair(make_router: Any, peers: Any) -> None:
    """A raw client (sync without `next`) whose seq 1 is refused is not asked to resync for
    seq 2: seq 1 starts a pair whether it is journaled or refused."""
    cfg, running = make_router()
    p = peers(cfg)
    p.sync()
    p.publish(1, topic="sys.router.fake")  # refused: reserved
    p.publish(2)
    p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 2, timeout=5)
    assert [m[1]["seq"] for m in p.events()] == [2]
    assert not [m for m in p.seen if m[0] == "ack.t1" and data_of(m).get("resync")]
    assert running.router.counts["unknown_source"] == 0


def test_gap_filled_by_a_refused_envelope_is_reported_filled(make_router: Any,
                                                             peers: Any) -> None:
    cfg, _ = make_router()
    p = peers(cfg)
    p.sync()
    p.publish(1)
    p.publish(3)  # early: a gap opens, expecting 2
    p.wait(lambda m: m[0] == "sys.router.gap" and data_of(m)["state"] == "open")
    p.publish(2, topic="sys.router.fake")  # 2 arrives, refused: it fills the gap all the same
    filled = p.wait(lambda m: m[0] == "sys.router.gap")
    assert data_of(filled) == {"src": "t1", "epoch": 1, "expected": 2, "got": 3,
                               "state": "filled"}
    p.publish(3)
    p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 3)
    assert [m[1]["seq"] for m in p.events()] == [1, 3]
    counts = p.state()["counts"]
    assert counts["gaps_open"] == 0 and counts["gaps_filled"] == 1 and counts["gaps_lost"] == 0


def test_a_timed_out_gap_never_moves_the_known_seq_backwards(make_router: Any,
                                                             peers: Any) -> None:
    """The lowest early seq seen (3) arrives, and more after it, while the gap stays open: a
    late loss declaration must not skip back to 2 (3 and 4 would then be journaled twice)."""
    cfg, _ = make_router("gap_timeout = 0.3\n")
    p = peers(cfg)
    p.sync()
    p.publish(1)
    p.publish(10)  # a gap opens: expected 2, got 10
    p.publish(3)  # early too: the lowest early seq is now 3
    for seq in (2, 3, 4):
        p.publish(seq)  # hc 4, the gap (up to 9) is still open
    p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 4)
    time.sleep(0.4)
    p.publish(12)  # the gap timed out, but 3 has arrived: nothing below 5 may be skipped
    for seq in range(3, 13):
        p.publish(seq)
    p.wait(lambda m: m[0] == "ack.t1" and data_of(m).get("seq") == 12)
    assert [m[1]["seq"] for m in p.events()] == list(range(1, 13))
    gaps = [data_of(m) for m in p.seen if m[0] == "sys.router.gap"]
    assert [g["state"] for g in gaps] == ["open", "filled"], gaps


def test_seq_advances_without_entries_survive_a_restart(make_router: Any, peers: Any,
                                                        tmp_path: Path) -> None:
    """hc raised by a refusal, by a probe's `next` (new pair, lost range) or by a timed-out gap
    is in the journal file: after a restart the next seqs are simply next, no gap, no loss."""
    cfg, first_run = make_router(f'journal_path = "{tmp_path / "journal.bin"}"\n'
                                 "gap_timeout = 0.2\n")
    refused, fresh, skipped, timed_out = (peers(cfg, name) for name in ("ta", "tb", "tc", "td"))
    for p in (refused, fresh, skipped, timed_out):
        p.sync()
    refused.publish(1)
    refused.publish(2, topic="sys.router.fake")  # refused: 2 used up
    fresh.send(protocol.SYNC_TOPIC.encode(),
               fresh.body(0, kind="system", data={"token": "n", "next": 5}))  # starts at 5
    skipped.publish(1)
    skipped.send(protocol.SYNC_TOPIC.encode(),
                 skipped.body(0, kind="system", data={"token": "n", "next": 7}))  # 2..6 lost
    timed_out.publish(1)
    timed_out.publish(4)  # a gap: 2, 3 missing
    time.sleep(0.3)
    timed_out.publish(5)  # 2..3 declared lost (4 is held), hc 3; 5 opens a new gap
    expected = {"ta": 2, "tb": 4, "tc": 6, "td": 3}
    for p in (refused, fresh, skipped, timed_out):
        assert p.sync()["seq"] == expected[p.name]
    first_run.stop()

    make_router(cfg=cfg)
    for p in (refused, fresh, skipped, timed_out):
        assert p.sync()["seq"] == expected[p.name], p.name
        p.publish(expected[p.name] + 1)
    for p in (refused, fresh, skipped, timed_out):
        p.wait(lambda m, p=p: m[0] == f"ack.{p.name}"
               and data_of(m).get("seq") == expected[p.name] + 1, timeout=5)
    counts = refused.state()["counts"]
    assert counts["gaps_opened"] == 0 and counts["gaps_lost"] == 0


def test_sync_probe_from_src_router_is_refused(make_router: Any, peers: Any) -> None:
    cfg, running = make_router()
    p = peers(cfg)
    p.sync()
    fake = envelope.make("router", 1, 0, "system", {"token": "x", "next": 3}).encode()
    p.send(protocol.SYNC_TOPIC.encode(), fake)
    p.sync()
    router = running.router
    assert router.bad["reserved"] == 1 and ("router", 1) not in router.journal.sources
    assert not [m for m in p.seen if m[0] == "ack.router"]
