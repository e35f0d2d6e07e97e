"""CURVE keys, ZAP and per-message authorization for the router (``[router.security]``).

Keys follow pyzmq's `zmq.auth.create_certificates` layout in ``keys_dir``: ``NAME.key`` holds
the public key (and a ``role = "..."`` line under ``metadata``), ``NAME.key_secret`` the pair.
``router.key(_secret)`` is the router's own pair. A revoked key's public file moves to
``keys_dir/revoked/``. Which side holds what:

- router host: ``router.key_secret`` and every allowed ``NAME.key``;
- any client host: ``router.key`` and its own ``NAME.key_secret`` (mode 0600).

Roles (metadata of the public file):

- ``actor``: publishes only with ``src`` = its key name, ``evt.``/``hb.``/``log.`` topics only
  under its own name, ``cmd.*`` only when named in ``grant_commands`` of the site file;
- ``operator``: anything, with ``src`` = its key name or any name that is not another key's
  name (so ``sctl-<host>-<pid>`` client names work, and no actor can be impersonated);
- ``reader``: subscribes and queries; publishes nothing but the ``ctl.sync`` probe every Bus
  needs to start (same ``src`` rule as an operator).

The router answers ZAP itself, on its own loop (`zap_answer`): a key is let in when its public
key is in a ``*.key`` file of keys_dir and not in ``revoked/``; the ZAP User-Id is the key's
NAME, which libzmq then attaches to every message of that connection, and `KeyRing.refusal`
checks each ingress message against it. Changes to keys_dir are picked up while running
(`KeyRing.refresh`): a revoked key can no longer publish even on an open connection.

Nothing here ever logs or returns a secret key.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.auth

from broker.wire import topics
from broker.wire.errors import BusError, ConfigError, TopicError

log = logging.getLogger(__name__)

ROLES: Final = ("operator", "actor", "reader")
ROUTER_KEY: Final = "router"
REVOKED: Final = "revoked"
ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
ZAP_DOMAIN: Final = b"sctl"
DEFAULT_IDENTITY: Final = "operator"
IDENTITY_ENV: Final = "SCTL_AS"
REPORTS_PER_S: Final = 5  # sys.router.denied reports per key (or peer) per second
_ROLE_LINE: Final = re.compile(rb'^\s+role\s*=\s*"?(\w+)"?\s*$', re.M)
_OWN_TOPIC_ROOTS: Final = ("evt", "hb", "log")
_BANNER: Final = ("#   ****  Generated on {} by sctl keys  ****\n"
                  "#   ZeroMQ CURVE {} Certificate (zmq.auth format)\n\n")


@dataclass(frozen=True)
class Security:
    """``[router.security]`` with CURVE on (see `broker.config.SECURITY_SETTINGS`)."""

    keys_dir: Path
    grant_commands: frozenset[str]


def security_of(settings: Mapping[str, Any]) -> Security | None:
    """The security of a RouterConfig's ``security`` map; None when CURVE is off."""
    if not settings.get("curve"):
        return None
    return Security(Path(settings["keys_dir"]), frozenset(settings.get("grant_commands", ())))


def default_identity() -> str:
    """The key a client acts as when it names none: ``$SCTL_AS``, else ``operator``."""
    return os.environ.get(IDENTITY_ENV) or DEFAULT_IDENTITY


# ---------------------------------------------------------------- key files


def _check_key_name(name: str) -> str:
    try:
        return topics.check_name(name, "key name")
    except TopicError as exc:
        raise ConfigError("", str(exc)) from None


def role_of(path: Path) -> str | None:
    """The ``role`` metadata of a key file, None if it has none."""
    m = _ROLE_LINE.search(path.read_bytes())
    return m.group(1).decode() if m else None


def _write(path: Path, text: str, mode: int) -> None:
    """Create `path` (never overwrite) with `mode` from the start: a secret is never readable
    by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)  # the umask may have narrowed it; never widened beyond `mode`


def _cert_text(kind: str, role: str, public: bytes, secret: bytes | None = None) -> str:
    text = _BANNER.format(time.strftime("%Y-%m-%d %H:%M:%S"), kind)
    text += f'metadata\n    role = "{role}"\ncurve\n    public-key = "{public.decode()}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode()}"\n'
    return text


def gen_key(keys_dir: Path, name: str, role: str) -> Path:
    """Write NAME.key (0644) and NAME.key_secret (0600); refuses to replace an existing key."""
    _check_key_name(name)
    if name == ROUTER_KEY:
        role = ROUTER_KEY  # the server's pair: no client role
    elif role not in ROLES:
        raise ConfigError("", f"role {role!r} is not one of {', '.join(ROLES)}")
    keys_dir.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = keys_dir / f"{name}.key", keys_dir / f"{name}.key_secret"
    for p in (public_file, secret_file, keys_dir / REVOKED / f"{name}.key"):
        if p.exists():
            raise ConfigError("", f"{p} already exists (revoke or remove it first)")
    public, secret = zmq.curve_keypair()
    _write(secret_file, _cert_text("Secret", role, public, secret), 0o600)
    _write(public_file, _cert_text("Public", role, public), 0o644)
    return public_file


def allow_key(keys_dir: Path, source: Path, role: str | None, name: str | None = None) -> Path:
    """Copy the PUBLIC key of `source` (a .key or .key_secret file) into keys_dir as
    NAME.key; the role is `role`, else the file's own role metadata, else ``reader``."""
    try:
        public, _ = zmq.auth.load_certificate(source)
    except (OSError, ValueError) as exc:
        raise ConfigError("", f"{source} is not a CURVE key file: {exc}") from None
    key_name = _check_key_name(name or source.name.split(".", 1)[0])
    chosen = role or role_of(source) or "reader"
    if chosen not in ROLES:
        raise ConfigError("", f"role {chosen!r} is not one of {', '.join(ROLES)}")
    if len(zmq.utils.z85.decode(public)) != 32:
        raise ConfigError("", f"{source}: the public key is not 32 bytes of Z85")
    keys_dir.mkdir(parents=True, exist_ok=True)
    target = keys_dir / f"{key_name}.key"
    if target.exists():
        raise ConfigError("", f"{target} already exists (revoke it first)")
    _write(target, _cert_text("Public", chosen, public), 0o644)
    return target


def revoke_key(keys_dir: Path, name: str) -> Path:
    """Move NAME.key to keys_dir/revoked/ (the router refuses it from then on)."""
    _check_key_name(name)
    source = keys_dir / f"{name}.key"
    if not source.exists():
        raise ConfigError("", f"no key {source} to revoke")
    (keys_dir / REVOKED).mkdir(exist_ok=True)
    target = keys_dir / REVOKED / f"{name}.key"
    if target.exists():
        target.unlink()  # an older revocation of the same name
    source.rename(target)
    return target


def list_keys(keys_dir: Path) -> list[dict[str, Any]]:
    """One row per key file: name, role, state (allowed/revoked/router), has_secret."""
    rows: list[dict[str, Any]] = []
    for state, folder in (("allowed", keys_dir), ("revoked", keys_dir / REVOKED)):
        for p in sorted(folder.glob("*.key")) if folder.is_dir() else []:
            name = p.name[:-4]
            rows.append({"name": name, "role": role_of(p) or "?",
                         "state": "router" if name == ROUTER_KEY and state == "allowed"
                         else state,
                         "has_secret": (keys_dir / f"{name}.key_secret").exists()})
    return rows


def client_options(security: Security, identity: str) -> dict[int, bytes]:
    """CURVE socket options of a client acting as `identity`; BusError naming the file and
    the fix when a key is missing. The secret is only handed to ZeroMQ."""
    secret_file = security.keys_dir / f"{identity}.key_secret"
    server_file = security.keys_dir / f"{ROUTER_KEY}.key"
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError):
        raise BusError(f"CURVE is on ([router.security]) but there is no readable secret key "
                       f"for identity {identity!r} at {secret_file}: create it with `sctl keys "
                       f"gen {identity}` (or act as another key: --as NAME / $SCTL_AS)") from None
    if secret is None:
        raise BusError(f"{secret_file} holds no secret-key line")
    try:
        server, _ = zmq.auth.load_certificate(server_file)
    except (OSError, ValueError):
        raise BusError(f"CURVE is on but the router's public key {server_file} is missing: "
                       f"copy it from the router host (`sctl keys gen router` there)") from None
    return {zmq.CURVE_SERVERKEY: server, zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret}


def server_secret(security: Security) -> tuple[bytes, bytes]:
    """The router's own (public, secret) pair; ConfigError if it is missing."""
    path = security.keys_dir / f"{ROUTER_KEY}.key_secret"
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError):
        raise ConfigError("router.security.keys_dir", f"no router key pair at {path}: run "
                          f"`sctl keys gen router`") from None
    if secret is None:
        raise ConfigError("router.security.keys_dir", f"{path} holds no secret-key line")
    return public, secret


# ---------------------------------------------------------------- the router's view


@dataclass(frozen=True)
class Key:
    name: str
    role: str


class KeyRing:
    """The allowed keys of keys_dir, reloaded when the folder changes."""

    def __init__(self, security: Security) -> None:
        self.security = security
        self.by_public: dict[bytes, Key] = {}
        self.by_name: dict[str, Key] = {}
        self.revoked: set[bytes] = set()
        self._stamp: tuple[Any, ...] | None = None
        self.refresh()

    def _folder_stamp(self) -> tuple[Any, ...]:
        stamp: list[Any] = []
        for folder in (self.security.keys_dir, self.security.keys_dir / REVOKED):
            try:
                st = folder.stat()
                stamp += [st.st_mtime_ns, st.st_ino]
                stamp += sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(folder)
                                if e.name.endswith(".key"))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def refresh(self) -> bool:
        """Reload if keys_dir or revoked/ changed; True when it did."""
        stamp = self._folder_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        by_public: dict[bytes, Key] = {}
        revoked: set[bytes] = set()
        folder = self.security.keys_dir
        for path in sorted(folder.glob("*.key")) if folder.is_dir() else []:
            name = path.name[:-4]
            if name == ROUTER_KEY:
                continue
            try:
                public, _ = zmq.auth.load_certificate(path)
                role = role_of(path) or "reader"
                topics.check_name(name, "key name")
            except (OSError, ValueError) as exc:
                log.warning("key file %s ignored: %s", path, exc)
                continue
            if role not in ROLES:
                log.warning("key file %s ignored: role %r is not one of %s", path, role,
                            ", ".join(ROLES))
                continue
            by_public[public] = Key(name, role)
        for path in sorted((folder / REVOKED).glob("*.key")):
            try:
                revoked.add(zmq.auth.load_certificate(path)[0])
            except (OSError, ValueError) as exc:
                log.warning("revoked key file %s unreadable: %s", path, exc)
        for public in revoked:
            by_public.pop(public, None)
        self.by_public, self.revoked = by_public, revoked
        self.by_name = {k.name: k for k in by_public.values()}
        log.info("keys loaded from %s: %d allowed, %d revoked", folder, len(by_public),
                 len(revoked))
        return True

    def may_use_src(self, key: Key, src: str) -> bool:
        """`src` is the key's own name, or (operator, reader) a name no other key owns."""
        if src == key.name:
            return True
        return key.role != "actor" and src not in self.by_name and src != ROUTER_KEY

    def refusal(self, name: str | None, topic: str, src: str) -> tuple[Key | None, str] | None:
        """None when key `name` may publish on `topic` with `src`; else (key, reason)."""
        key = self.by_name.get(name or "")
        if key is None:
            return None, f"key {name!r} is not allowed (revoked or removed)"
        if not self.may_use_src(key, src):
            return key, f"src {src!r} is not {key.name!r}'s own name"
        root, _, rest = topic.partition(".")
        if key.role == "reader":
            if topic != "ctl.sync":
                return key, "read-only key: subscribe only"
        elif key.role == "actor":
            if root == "cmd" and key.name not in self.security.grant_commands:
                return key, "cmd.* needs an operator key (or grant_commands in the site file)"
            if root in _OWN_TOPIC_ROOTS and rest.split(".", 1)[0] != key.name:
                return key, f"{root}.* only under the key's own name ({root}.{key.name})"
        return None

    # ------------------------------------------------------------ ZAP (RFC 27)

    def zap_answer(self, frames: list[bytes]) -> tuple[list[bytes], dict[str, Any] | None]:
        """The reply frames for one ZAP request and, when the peer is refused, what to report
        (peer address, mechanism, key excerpt, reason)."""
        if len(frames) < 6:
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"500",
                    b"malformed ZAP request", b"", b""], None
        version, request_id, _domain, address, _routing_id, mechanism = frames[:6]
        peer = address.decode(errors="replace")
        refused: dict[str, Any] | None = None
        user = b""
        if version != b"1.0":
            status, text = b"500", b"unsupported ZAP version"
        elif mechanism != b"CURVE" or len(frames) < 7 or len(frames[6]) != 32:
            status, text = b"400", b"CURVE required"
            refused = {"peer": peer, "mechanism": mechanism.decode(errors="replace"),
                       "reason": "not a CURVE client"}
        else:
            self.refresh()
            public = zmq.utils.z85.encode(frames[6])
            key = self.by_public.get(public)
            if key is None:
                why = "revoked key" if public in self.revoked else "unknown key"
                status, text = b"400", why.encode()
                refused = {"peer": peer, "mechanism": "CURVE", "reason": why,
                           "public_key": public[:8].decode() + "..."}
            else:
                status, text, user = b"200", b"OK", key.name.encode()
        return [b"1.0", request_id, status, text, user, b""], refused


class Denials:
    """Counts refusals and rate-limits their reports (REPORTS_PER_S per key or peer)."""

    def __init__(self) -> None:
        self.messages = 0
        self.handshakes = 0
        self.by_key: dict[str, int] = {}
        self._window: dict[str, tuple[int, int, int]] = {}  # who -> (second, sent, suppressed)

    def report(self, who: str, now: float) -> int | None:
        """None to stay quiet; else how many reports for `who` were suppressed before."""
        second = int(now)
        at, sent, suppressed = self._window.get(who, (second, 0, 0))
        if at != second:
            sent = 0
        if sent >= REPORTS_PER_S:
            self._window[who] = (second, sent, suppressed + 1)
            return None
        if len(self._window) > 10_000:
            self._window.clear()
        self._window[who] = (second, sent + 1, 0)
        return suppressed

    def message(self, key: str) -> None:
        self.messages += 1
        self.by_key[key] = self.by_key.get(key, 0) + 1
        if len(self.by_key) > 10_000:
            self.by_key.clear()

    def counts(self) -> dict[str, Any]:
        return {"messages": self.messages, "handshakes": self.handshakes,
                "by_key": dict(self.by_key)}


# ---------------------------------------------------------------- failed handshakes

HANDSHAKE_EVENTS: Final = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
                           | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_FAILED: Final[dict[int, str]] = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no detail",
                  zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol error (a client without "
                  "CURVE, or a wrong router key)",
                  zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused by ZAP"}


def peer_of_fd(fd: int) -> str:
    """host:port of the TCP peer on `fd`, read on a duplicate so libzmq's socket is untouched."""
    import socket

    try:
        with socket.socket(fileno=os.dup(fd)) as dup:  # closing the duplicate only
            peer = dup.getpeername()
    except OSError:  # already closed by libzmq (a very quick failure): the address is gone
        return "?"
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return str(peer) or "?"


class HandshakeWatch:
    """Turns one server socket's monitor events into "handshake failed from PEER" reports.

    libzmq's (v1) monitor gives the fd on ACCEPTED and DISCONNECTED but only an error code on
    HANDSHAKE_FAILED_*; the engine reports the failure and then the disconnect of the same
    connection, so the failure is held until that disconnect names the fd, whose peer address
    was read when it was accepted.
    """

    def __init__(self, which: str) -> None:
        self.which = which
        self._peers: dict[int, str] = {}
        self._failed: str | None = None

    def event(self, event: int, value: int) -> dict[str, Any] | None:
        """Feed one event; returns a report when a failed handshake's peer is known."""
        if event == zmq.EVENT_ACCEPTED:
            self._peers[value] = peer_of_fd(value)
            if len(self._peers) > 100_000:
                self._peers.clear()
        elif event in _FAILED:
            self._failed = _FAILED[event]
        elif event == zmq.EVENT_DISCONNECTED:
            peer = self._peers.pop(value, "?")
            failed, self._failed = self._failed, None
            if failed is not None:
                return {"socket": self.which, "peer": peer, "reason": failed}
        return None
