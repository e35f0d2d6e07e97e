"""A throw-away X.509 PKI for TLS tests, made with the ``openssl`` command line tool.

`make_pki(folder)` writes, all with P-256 EC keys (fast to generate, understood by OpenSSL
(Mosquitto, Python's ``ssl``) and Mbed TLS (c104)) and valid for two days:

- ``ca.pem``/``ca.key``: the test CA;
- ``server.pem``/``server.key``: signed by it, ``subjectAltName`` ``DNS:localhost``,
  ``IP:127.0.0.1`` (clients check the name: paho and Python's ``ssl`` do by default), extended
  key usage serverAuth;
- ``client.pem``/``client.key`` and ``intruder.pem``/``intruder.key``: two client certificates
  (clientAuth) signed by the same CA. Tests allow-list ``client`` and show that ``intruder``,
  although validly signed, is refused where only known certificates are accepted;
- ``rogue-ca.pem``: another CA that signed nothing here: a client trusting it must refuse the
  server (the "wrong CA" case).

The ``pki`` fixture makes one per test session (key generation is the slow part). A missing
``openssl`` binary fails the test with a hint, never a skip: TLS is part of what must be shown.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

DAYS: Final = "2"
CURVE: Final = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
SERVER_EXT: Final = ("basicConstraints=critical,CA:FALSE\n"
                     "keyUsage=critical,digitalSignature,keyEncipherment\n"
                     "extendedKeyUsage=serverAuth\n"
                     "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
CLIENT_EXT: Final = ("basicConstraints=critical,CA:FALSE\n"
                     "keyUsage=critical,digitalSignature,keyEncipherment\n"
                     "extendedKeyUsage=clientAuth\n")


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Pair
    rogue_ca: Pair
    server: Pair
    client: Pair
    intruder: Pair


def _openssl(folder: Path, *args: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("the openssl command line tool is missing (Debian package openssl)",
                    pytrace=False)
    done = subprocess.run([binary, *args], cwd=folder, capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed ({done.returncode}):\n"
                             f"{done.stdout}{done.stderr}")


def _ca(folder: Path, name: str) -> Pair:
    pair = Pair(folder / f"{name}.pem", folder / f"{name}.key")
    _openssl(folder, "req", "-x509", *CURVE, "-keyout", pair.key.name, "-out", pair.cert.name,
             "-days", DAYS, "-subj", f"/O=sctl tests/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return pair


def _leaf(folder: Path, name: str, ca: Pair, extensions: str, serial: int) -> Pair:
    pair = Pair(folder / f"{name}.pem", folder / f"{name}.key")
    ext = folder / f"{name}.ext"
    ext.write_text(extensions, encoding="ascii")
    csr = f"{name}.csr"
    _openssl(folder, "req", "-new", *CURVE, "-keyout", pair.key.name, "-out", csr,
             "-subj", f"/O=sctl tests/CN={name}")
    _openssl(folder, "x509", "-req", "-in", csr, "-CA", ca.cert.name, "-CAkey", ca.key.name,
             "-set_serial", str(serial), "-days", DAYS, "-sha256", "-extfile", ext.name,
             "-out", pair.cert.name)
    return pair


def make_pki(folder: Path) -> Pki:
    """Write the CA, the rogue CA, the server and two client certificates into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    return Pki(ca=ca, rogue_ca=_ca(folder, "rogue-ca"),
               server=_leaf(folder, "server", ca, SERVER_EXT, 1),
               client=_leaf(folder, "client", ca, CLIENT_EXT, 2),
               intruder=_leaf(folder, "intruder", ca, CLIENT_EXT, 3))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One PKI for the whole test session."""
    return make_pki(tmp_path_factory.mktemp("pki"))
