"""The iec104-server's TLS settings reach c104, with certificates made by ``openssl`` (a child
process, so not a unit test); TLS sessions are in test_device_tls."""

from __future__ import annotations

import subprocess
from pathlib import Path

import c104
import pytest

from broker.wire.errors import ConfigError
from tests.unit.test_iec104_map import make_actor


def test_tls_settings_build_c104_transport_security(tmp_path: Path) -> None:
    """cert/key/ca/allowed_certs reach c104 (which loads and checks the files); TLS sessions
    themselves are tested elsewhere (the c104 2.2.1 client cannot do TLS)."""
    for name in ("ca", "server", "master"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                        f"/CN={name}", "-keyout", str(tmp_path / f"{name}.key"),
                        "-out", str(tmp_path / f"{name}.crt")], check=True,
                       capture_output=True)
    actor = make_actor(tmp_path, cert=str(tmp_path / "server.crt"),
                       key=str(tmp_path / "server.key"), ca=str(tmp_path / "ca.crt"),
                       allowed_certs=[str(tmp_path / "master.crt")])
    tls = actor._transport_security()
    assert isinstance(tls, c104.TransportSecurity)
    with pytest.raises(ValueError, match="already been passed"):  # c104 took it: read-only
        c104.Server(ip="127.0.0.1", port=2404, transport_security=tls)
        tls.set_ca_certificate(cert=str(tmp_path / "ca.crt"))
    # c104 only prints an mbedtls error for a file that is no certificate: checked before
    with pytest.raises(ConfigError, match=r"actors\.scada\.cert: .* is not a PEM certificate"):
        make_actor(tmp_path, cert=str(tmp_path / "server.key"), key=str(tmp_path / "server.key"))
    with pytest.raises(ConfigError, match=r"actors\.scada\.allowed_certs\[1\]: "):
        make_actor(tmp_path, cert=str(tmp_path / "server.crt"), key=str(tmp_path / "server.key"),
                   allowed_certs=[str(tmp_path / "master.crt"), str(tmp_path / "master.key")])
    assert make_actor(tmp_path)._transport_security() is None
