from tests.integration.test_actor import *  # noqa

def test_dbg(site, site_path, client, spawn):
    client.subscribe("log.echo1")
    p = spawn("-c", str(site_path), "actor", "echo1", name="echo1")
    client.request("echo1", "ping", timeout=20)
    client.request("echo1", "warn", {"text": "to the bus"})
    try:
        (rec,) = collect(client, lambda g: len(g) >= 1, timeout=3)
    except AssertionError:
        hdr, items = client.query({"op": "since", "gseq": 1, "prefixes": ["log.", "evt."]})
        print("JOURNAL", hdr, [(d.topic, d.gseq, d.envelope.data) for d in items])
        print("COUNTERS", client.counters, client._stream.expected, client._subs)
        print(p.output())
        raise
