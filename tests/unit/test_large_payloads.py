"""Big binary payloads are read where they lie: the router's `lean_fields` decides like
`fast_fields` without copying the blobs, and the head readers take memoryviews of frames."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.router import ingress
from broker.router.server import Router
from broker.wire import envelope
from broker.wire.errors import EnvelopeError
from tests.unit.test_ingress import EDGES, envelope_maps

BLOB = bytes(range(256)) * (ingress.LEAN_MIN // 256 + 1)  # over LEAN_MIN by itself


def big(m: dict[Any, Any], blob: bytes = BLOB) -> bytes:
    """`m` packed with `blob` added to its data (when data is a map), so that it is big."""
    if isinstance(m.get("data"), dict):
        m = {**m, "data": {**m["data"], "blob": blob}}
    else:
        m = {**m, "pad": blob}
    return bytes(msgpack.packb(m, use_bin_type=True))


def image(n: int = 1, **data: Any) -> bytes:
    return envelope.make("det1", 7, n, "event", {"dtype": "<u2", "shape": [512, 1024],
                                                 "data": BLOB, **data}).encode()


@settings(max_examples=400, deadline=None)
@given(envelope_maps())
def test_lean_path_decides_like_the_fast_path(m: dict[Any, Any]) -> None:
    body = big(m)
    lean = ingress.lean_fields(body)
    if lean is not None:
        assert lean == ingress.fast_fields(body)  # a blob compares equal as a memoryview
        assert envelope.decode(body).data == lean[4]


@pytest.mark.parametrize("data", EDGES["data"], ids=range(len(EDGES["data"])))
def test_lean_path_at_the_edges_of_data(data: Any) -> None:
    """Nesting at MAX_DEPTH and one level beyond, ext types deep inside, odd keys: the lean
    reader either gives up or agrees with the fast path."""
    m = envelope.make("reader1", 7, 3, "event", {"k": 1}).to_map()
    body = big({**m, "data": data})
    lean = ingress.lean_fields(body)
    fast = ingress.fast_fields(body)
    assert lean is None or lean == fast
    if fast is not None and isinstance(data, dict) and len(str(data)) < 200:
        assert lean == fast  # a small plain map beside the blob: the lean reader takes it


def test_common_big_events_take_the_lean_path_and_keep_the_blob_in_place() -> None:
    body = memoryview(image(5, frame=17, exposure=0.25, name="ccd", ok=True, none=None,
                            neg=-3, big=2**64 - 1, nested={"a": [1, {b"k": b"v"}]}))
    fields = ingress.lean_fields(body)
    assert fields is not None and fields[:4] == ("det1", 7, 5, "event")
    blob = fields[4]["data"]
    assert isinstance(blob, memoryview) and blob.obj is body.obj  # a view, not a copy
    assert blob == BLOB and fields == ingress.fast_fields(body)
    assert fields[4]["nested"] == {"a": [1, {b"k": b"v"}]}
    assert ingress.fields(body) == fields


def test_float32_and_every_int_width_read_like_msgpack() -> None:
    m = envelope.make("det1", 7, 1, "event", {}).to_map()
    data = {f"i{i}": v for i, v in enumerate(
        [0, 127, -1, -32, -33, 255, 256, 65535, 65536, 2**32, -129, -32769, -(2**31) - 1,
         -(2**63), 2**63])}
    packer = msgpack.Packer(use_bin_type=True, use_single_float=True)
    body = packer.pack({**m, "data": {**data, "f": 1.5, "s" * 40: "é" * 300, "blob": BLOB}})
    assert ingress.lean_fields(body) == ingress.fast_fields(body) is not None


def test_the_lean_reader_gives_up_on_many_values_and_on_bad_bytes() -> None:
    many = image(1, values=list(range(ingress.LEAN_ITEMS)))
    assert ingress.lean_fields(many) is None and ingress.fields(many)[2] == 1
    good = image(1)
    for bad in (good[:-1], good + b"\x00", b"\xc1" + good[1:], good[:40] + b"\xc7" + good[41:]):
        assert ingress.lean_fields(bad) is None or ingress.lean_fields(bad) == \
            ingress.fast_fields(bad)
    with pytest.raises(EnvelopeError):
        ingress.fields(good[:-1])


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(0, 3))
def test_random_big_bodies_never_escape_the_lean_reader(head: bytes, pad: int) -> None:
    body = head + BLOB[: pad * 1000]
    lean = ingress.lean_fields(body)
    assert lean is None or lean == ingress.fast_fields(body)


def test_head_readers_take_memoryviews_without_copying_them_whole() -> None:
    body = image(9)
    view = memoryview(body)
    assert ingress.sequence_fields(view) == ingress.sequence_fields(body) == ("det1", 7, 9)
    assert envelope.decode(view) == envelope.decode(body)
    with pytest.raises(EnvelopeError) as err:
        envelope.decode(view[:-1])
    assert type(err.value.raw) is bytes and err.value.raw == body[:64]


def test_the_router_journals_and_forwards_a_big_body_in_place_and_reports_big_garbage() -> None:
    """`Router._ingest` with the memoryview `_drain_ingress` makes of a big frame: the journal
    keeps the view, the egress frame is the object it views (ZeroMQ sends that without a copy),
    and garbage of that size is refused and reported with a hex excerpt like any other."""
    import dataclasses

    from tests.unit.test_router_ingest_paths import CONFIG

    router = Router(dataclasses.replace(CONFIG, max_message_bytes=32 * ingress.LEAN_MIN))
    try:
        for seq in (1, 2):
            body = image(seq)
            router._ingest([b"evt.det1.frame", memoryview(body)])
            held = router.journal.entry(router.journal.last)[1]
            assert isinstance(held, memoryview) and held.obj is body
            assert router._pending[-1][0] == b"evt.det1.frame" and router._pending[-1][1] is body
        garbage = b"\xc1" + BLOB
        router._ingest([b"evt.det1.frame", memoryview(garbage)])
        assert router.bad["msgpack"] == 1 and router.counts["journaled"] == 2
        report = msgpack.unpackb(router._pending[-1][1])["data"]
        assert report["reason"] == "msgpack" and report["excerpt"].startswith("c10001")
    finally:
        router.close()


def test_the_size_bounds_fit_together() -> None:
    """A body a site may allow (`max_message_bytes` up to its limit) is refused and reported by
    the router, never cut off by the ingress socket's hard frame limit; the default journal
    holds several frames of the size the default is made for."""
    from broker import config
    from broker.router import server

    limit = config.MAX_MESSAGE_BYTES_LIMIT
    assert config.DEFAULT_MAX_MESSAGE_BYTES <= limit < server.XSUB_MAXMSGSIZE
    journal = next(s.default for s in config.ROUTER_SETTINGS if s.name == "journal_max_bytes")
    assert journal >= 8 * 16 * 1024 * 1024  # eight 16 MiB frames
