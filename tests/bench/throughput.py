"""Figure 1: throughput, one publisher → broker → one subscriber, 200-byte payloads.

Four runs side by side, each with its own fresh broker process, the same envelope bodies
(`tests.bench.worker.body`) and the same counting subscriber (`tests.bench.feeds.Tally`):

- **full stack**: `Bus` publisher (outbox, acks) → ``sctl router`` (journal in memory) → `Bus`
  subscriber (gseq gap checking); zero loss verified by count and order;
- **file journal**: the same with ``journal_path`` set (written every batch, no fsync);
- **baseline**: plain PUB → `zmq.proxy` XSUB/XPUB → plain SUB, default HWMs; it drops at its
  HWM when the subscriber falls behind, and those drops are counted (``baseline_lost``);
- **Mosquitto**: paho-mqtt QoS 1 → mosquitto → paho-mqtt QoS 1 (its losses counted too).

A rate is measured at the subscriber, first to last arrival. The ratios are what counts.
"""

from __future__ import annotations

from typing import Any, Final

from tests.bench.common import Figure, Procs, Scale
from tests.bench.feeds import BusFeed, MqttFeed, Tally, ZmqFeed, collect

SIZE: Final = 200
TOPIC: Final = "evt.bench.n"


def full_stack(scale: Scale, file_journal: bool = False) -> dict[str, Any]:
    count = scale.pick(200_000, 5_000)
    with Procs() as procs:
        router = 'journal_path = "journal.bin"\n' if file_journal else ""
        site = procs.site(router=router + "journal_max_messages = 250000\n")
        procs.router(site)
        feed = BusFeed(site.router, "evt.bench.")
        try:
            pub = procs.worker("bus-pub", "bus-pub", site=str(site.path), name="bench-pub",
                               topic=TOPIC, count=count, size=SIZE)
            tally = collect(feed.receive, Tally(), count, [pub], timeout=300)
            sent = pub.result()
        finally:
            feed.close()
    return {"count": count, "sent": sent, **tally.summary(count)}


def baseline(scale: Scale) -> dict[str, Any]:
    count = scale.pick(200_000, 5_000)
    with Procs() as procs:
        site = procs.site()  # only for its three fresh ports
        ingress, egress = site.router.ingress, site.router.egress
        proxy = procs.worker("zmq-proxy", "zmq-proxy", ingress=ingress, egress=egress)
        feed = ZmqFeed(egress, "evt.bench.")
        try:
            pub = procs.worker("zmq-pub", "zmq-pub", url=ingress, topic=TOPIC, count=count,
                               size=SIZE)
            tally = collect(feed.receive, Tally(), count, [pub], timeout=300)
            sent = pub.result()
        finally:
            feed.close()
        proxy.stop()
    return {"count": count, "sent": sent, **tally.summary(count)}


def mosquitto(scale: Scale) -> dict[str, Any]:
    from tests.support.mosquitto import Mosquitto

    count = scale.pick(200_000, 2_000)
    with Procs() as procs:
        broker = Mosquitto(procs.folder / "mosquitto", extra="max_queued_messages 0\n")
        procs.callback(broker.stop)
        broker.start()
        tally = Tally()
        feed = MqttFeed(broker.port, "bench/n", tally)
        try:
            pub = procs.worker("mqtt-pub", "mqtt-pub", port=broker.port, topic="bench/n",
                               count=count, size=SIZE)
            collect(feed.receive, tally, count, [pub], timeout=600)
            sent = pub.result()
        finally:
            feed.close()
    return {"count": count, "sent": sent, **tally.summary(count)}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def run(scale: Scale) -> list[Figure]:
    full = full_stack(scale)
    filed = full_stack(scale, file_journal=True)
    plain = baseline(scale)
    mqtt = mosquitto(scale)
    return [
        Figure("throughput_msgs", "full stack rate (1 pub → router → 1 sub)", full["rate"],
               "msg/s", 50_000, "high",
               f"{full['delivered']}/{full['count']} delivered, lost {full['lost']}, "
               f"out of order {full['backwards']}"),
        Figure("full_lost", "full stack lost or out of order", full["lost"] + full["backwards"],
               "msgs", 0, "low"),
        Figure("baseline_msgs", "baseline rate (PUB → zmq.proxy → SUB)", plain["rate"],
               "msg/s"),
        Figure("baseline_lost", "baseline dropped (its HWM)", plain["lost"], "msgs", None, "",
               f"{plain['delivered']}/{plain['count']} delivered"),
        Figure("throughput_ratio", "full stack / baseline", _ratio(full["rate"], plain["rate"]),
               "ratio", 0.5, "high"),
        Figure("file_journal_msgs", "full stack, journal file", filed["rate"], "msg/s", None,
               "", f"lost {filed['lost']}, out of order {filed['backwards']}"),
        Figure("file_journal_ratio", "journal file / baseline",
               _ratio(filed["rate"], plain["rate"]), "ratio", 0.4, "high"),
        Figure("mosquitto_msgs", "Mosquitto QoS 1 rate (paho → paho)", mqtt["rate"], "msg/s",
               None, "", f"lost {mqtt['lost']}, out of order {mqtt['backwards']}, "
               f"{mqtt['sent']['acked']}/{mqtt['sent']['sent']} PUBACKed"),
        Figure("vs_mosquitto_ratio", "full stack / Mosquitto",
               _ratio(full["rate"], mqtt["rate"]), "ratio", 1.5, "high"),
    ]
