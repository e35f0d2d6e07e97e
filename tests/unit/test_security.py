"""broker.security without sockets: key files (modes, pyzmq compatibility, revocation), the
authorization table, ZAP answers, the handshake watch and the report rate limit."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth

from broker import security
from broker.security import HandshakeWatch, KeyRing, Security
from broker.wire.errors import BusError, ConfigError


def ring(tmp_path: Path, grant: tuple[str, ...] = ()) -> KeyRing:
    keys = tmp_path / "keys"
    security.gen_key(keys, "router", "operator")
    security.gen_key(keys, "operator", "operator")
    security.gen_key(keys, "reader1", "actor")
    security.gen_key(keys, "reader2", "actor")
    security.gen_key(keys, "iec1", "actor")
    security.gen_key(keys, "viewer", "reader")
    return KeyRing(Security(keys, frozenset(grant)))


def test_gen_writes_pyzmq_certificates_with_secret_mode_0600(tmp_path: Path) -> None:
    public_file = security.gen_key(tmp_path / "k", "reader1", "actor")
    secret_file = tmp_path / "k" / "reader1.key_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_file.stat().st_mode) & 0o077 in (0o044, 0o004, 0o040, 0)
    public, secret = zmq.auth.load_certificate(secret_file)
    assert zmq.auth.load_certificate(public_file) == (public, None)
    assert secret is not None and zmq.curve_public(secret) == public
    assert security.role_of(public_file) == "actor"
    assert secret.decode() not in public_file.read_text()


def test_gen_never_overwrites_and_checks_names_and_roles(tmp_path: Path) -> None:
    security.gen_key(tmp_path, "a", "reader")
    with pytest.raises(ConfigError, match="already exists"):
        security.gen_key(tmp_path, "a", "reader")
    with pytest.raises(ConfigError, match="key name"):
        security.gen_key(tmp_path, "a.b", "reader")
    with pytest.raises(ConfigError, match="role 'boss'"):
        security.gen_key(tmp_path, "b", "boss")


def test_allow_copies_only_the_public_key_of_a_pyzmq_certificate(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    pub_file, secret_file = zmq.auth.create_certificates(outside, "tool",
                                                         metadata={"role": "operator"})
    keys = tmp_path / "keys"
    target = security.allow_key(keys, Path(secret_file), None)
    assert target == keys / "tool.key"
    assert "secret" not in target.read_text().replace("Secret", "")
    assert zmq.auth.load_certificate(target)[0] == zmq.auth.load_certificate(pub_file)[0]
    assert security.role_of(target) == "operator"  # from the file's metadata
    plain = outside / "plain.key"
    plain.write_text(Path(pub_file).read_text().replace("role = operator", ""))
    assert security.role_of(security.allow_key(keys, plain, None)) == "reader"
    other = security.allow_key(keys, plain, "actor", name="other")
    assert security.role_of(other) == "actor"
    with pytest.raises(ConfigError, match="not a CURVE key file"):
        security.allow_key(keys, tmp_path / "nothing.key", None)


def test_revoke_moves_the_key_and_the_ring_forgets_it(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    assert "viewer" in keys.by_name
    security.revoke_key(keys.security.keys_dir, "viewer")
    assert keys.refresh()
    assert "viewer" not in keys.by_name and len(keys.revoked) == 1
    assert not keys.refresh()  # unchanged folder: no reload
    rows = {r["name"]: r for r in security.list_keys(keys.security.keys_dir)}
    assert rows["viewer"]["state"] == "revoked" and rows["router"]["state"] == "router"
    assert rows["operator"] == {"name": "operator", "role": "operator", "state": "allowed",
                                "has_secret": True}
    with pytest.raises(ConfigError, match="no key"):
        security.revoke_key(keys.security.keys_dir, "viewer")


@pytest.mark.parametrize(("key", "topic", "src", "refused"), [
    ("operator", "cmd.reader1", "sctl-host-1", None),
    ("operator", "evt.x.y", "operator", None),
    ("operator", "evt.x.y", "reader1", "src 'reader1'"),  # may not impersonate an actor
    ("operator", "evt.x.y", "router", "src 'router'"),
    ("reader1", "evt.reader1.tag", "reader1", None),
    ("reader1", "rep.sctl-host-1", "reader1", None),
    ("reader1", "sys.alarm", "reader1", None),
    ("reader1", "evt.reader1.tag", "sctl-host-1", "src 'sctl-host-1'"),
    ("reader2", "evt.reader1.tag", "reader1", "src 'reader1'"),
    ("reader2", "evt.reader1.tag", "reader2", "only under the key's own name"),
    ("reader2", "hb.reader1", "reader2", "only under the key's own name"),
    ("reader2", "cmd.reader1", "reader2", "cmd.* needs an operator key"),
    ("iec1", "cmd.reader1", "iec1", None),  # granted in the site file
    ("viewer", "ctl.sync", "sctl-host-2", None),
    ("viewer", "cmd.reader1", "sctl-host-2", "read-only key"),
    ("viewer", "evt.viewer.x", "viewer", "read-only key"),
    ("nobody", "evt.x.y", "nobody", "not allowed"),
    (None, "evt.x.y", "x", "not allowed"),
])
def test_authorization_table(tmp_path: Path, key: str | None, topic: str, src: str,
                             refused: str | None) -> None:
    verdict = ring(tmp_path, grant=("iec1",)).refusal(key, topic, src)
    if refused is None:
        assert verdict is None
    else:
        assert verdict is not None and refused in verdict[1]


def zap(public: bytes | None, mechanism: bytes = b"CURVE") -> list[bytes]:
    frames = [b"1.0", b"req7", b"sctl", b"10.0.0.9", b"", mechanism]
    return frames + ([zmq.utils.z85.decode(public)] if public is not None else [])


def test_zap_lets_known_keys_in_with_their_name_as_user_id(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    public = zmq.auth.load_certificate(keys.security.keys_dir / "reader1.key")[0]
    reply, refused = keys.zap_answer(zap(public))
    assert reply == [b"1.0", b"req7", b"200", b"OK", b"reader1", b""] and refused is None


def test_zap_refuses_unknown_revoked_and_plain_peers_naming_the_address(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    stranger, _ = zmq.curve_keypair()
    reply, refused = keys.zap_answer(zap(stranger))
    assert reply[2] == b"400" and reply[4] == b""
    assert refused is not None and refused["peer"] == "10.0.0.9"
    assert refused["reason"] == "unknown key"
    viewer = zmq.auth.load_certificate(keys.security.keys_dir / "viewer.key")[0]
    security.revoke_key(keys.security.keys_dir, "viewer")
    reply, refused = keys.zap_answer(zap(viewer))  # re-reads the changed folder itself
    assert reply[2] == b"400" and refused is not None and refused["reason"] == "revoked key"
    router = zmq.auth.load_certificate(keys.security.keys_dir / "router.key")[0]
    assert keys.zap_answer(zap(router))[0][2] == b"400"  # the server's key is no client's
    reply, refused = keys.zap_answer(zap(None, b"NULL"))
    assert reply[2] == b"400" and refused is not None and refused["mechanism"] == "NULL"
    assert keys.zap_answer([b"1.0"])[0][2] == b"500"


def test_broken_key_files_are_skipped_loudly(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    keys = ring(tmp_path)
    (keys.security.keys_dir / "junk.key").write_text("not a key\n")
    bad_role = keys.security.keys_dir / "boss.key"
    bad_role.write_text((keys.security.keys_dir / "viewer.key").read_text()
                        .replace("reader", "king"))
    keys.refresh()
    assert "junk" not in keys.by_name and "boss" not in keys.by_name
    assert "junk.key ignored" in caplog.text and "role 'king'" in caplog.text


def test_client_options_and_missing_keys(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    sec = keys.security
    opts = security.client_options(sec, "viewer")
    assert opts[zmq.CURVE_SERVERKEY] == zmq.auth.load_certificate(sec.keys_dir / "router.key")[0]
    with pytest.raises(BusError, match="sctl keys gen ghost") as info:
        security.client_options(sec, "ghost")
    secret = zmq.auth.load_certificate(sec.keys_dir / "viewer.key_secret")[1]
    assert secret is not None and secret.decode() not in str(info.value)
    (sec.keys_dir / "router.key").unlink()
    with pytest.raises(BusError, match="router's public key"):
        security.client_options(sec, "viewer")
    assert security.server_secret(sec)[0] == opts[zmq.CURVE_SERVERKEY]
    with pytest.raises(ConfigError, match="keys gen router"):
        security.server_secret(Security(tmp_path / "empty", frozenset()))


def test_default_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCTL_AS", raising=False)
    assert security.default_identity() == "operator"
    monkeypatch.setenv("SCTL_AS", "viewer")
    assert security.default_identity() == "viewer"


def test_security_of() -> None:
    assert security.security_of({}) is None
    assert security.security_of({"curve": False, "keys_dir": Path("k")}) is None
    sec = security.security_of({"curve": True, "keys_dir": Path("k"), "grant_commands": ("a",)})
    assert sec == Security(Path("k"), frozenset({"a"}))


def test_handshake_watch_names_the_peer_of_the_failed_connection() -> None:
    watch = HandshakeWatch("ingress")
    assert watch.event(zmq.EVENT_ACCEPTED, 999_999) is None  # fd not open: peer unknown
    assert watch.event(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, 0x10000011) is None
    report = watch.event(zmq.EVENT_DISCONNECTED, 999_999)
    assert report is not None and report["socket"] == "ingress" and report["peer"] == "?"
    assert "protocol error" in report["reason"]
    watch.event(zmq.EVENT_ACCEPTED, 999_998)
    assert watch.event(zmq.EVENT_DISCONNECTED, 999_998) is None  # a clean disconnect


def test_peer_of_fd_reads_the_tcp_peer() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, addr = server.accept()
        with client, conn:
            assert security.peer_of_fd(conn.fileno()) == f"{addr[0]}:{addr[1]}"
            conn.getpeername()  # the original is untouched by the duplicate's close


def test_denials_rate_limit_per_sender() -> None:
    d = security.Denials()
    got = [d.report("key:x", 100.2) for _ in range(security.REPORTS_PER_S + 3)]
    assert got[:security.REPORTS_PER_S] == [0] * security.REPORTS_PER_S
    assert got[security.REPORTS_PER_S:] == [None] * 3
    assert d.report("key:y", 100.5) == 0  # another sender is not silenced
    assert d.report("key:x", 101.0) == 3  # the next second says how many were kept back
    d.message("x")
    d.message("x")
    assert d.counts() == {"messages": 2, "handshakes": 0, "by_key": {"x": 2}}
