"""Federation between local Synapses: one self-signed certificate, TLS listeners on loopback.

A server name with an explicit port (``localhost:8448``, ``127.0.0.1:8449``) skips
``.well-known`` and SRV: Synapse connects straight to that host and port over HTTPS, so the
TLS federation listener sits on the port in the name. One certificate with IP and DNS
subject alternative names serves every local server as its listener certificate and as the
only trust root, so certificate checks stay on (shared/notes/federation-on-loopback.md).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


@dataclass(frozen=True)
class FederationTLS:
    """A certificate and key that every local server uses and trusts."""

    certificate: Path
    key: Path

    def listener(self, server_name: str) -> dict[str, Any]:
        host, _, port = server_name.rpartition(":")
        if not port.isdigit():
            raise ValueError(f"A local federating server needs a port in its name: {server_name}")
        return {
            "port": int(port),
            "bind_addresses": [host if _is_ip(host) else "127.0.0.1"],
            "type": "http",
            "tls": True,
            "x_forwarded": False,
            "resources": [{"names": ["federation"], "compress": False}],
        }

    def settings(self) -> dict[str, Any]:
        return {
            "tls_certificate_path": str(self.certificate),
            "tls_private_key_path": str(self.key),
            "federation_custom_ca_list": [str(self.certificate)],
            # Loopback is blocked for federation by default, and the IP allow list does not
            # cover IP-literal server names (the note's trap 1).
            "federation_ip_range_blacklist": [],
            "ip_range_blacklist": [],
            # Each test run starts with fresh databases; no key server outside.
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "allow_public_rooms_over_federation": False,
        }


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def make_certificate(directory: Path, days: int = 30) -> FederationTLS:
    """A self-signed RSA certificate for ``localhost`` and a few loopback addresses."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "selfsigned.crt", directory / "selfsigned.key"
    if cert_path.exists() and key_path.exists():
        return FederationTLS(cert_path, key_path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in LOOPBACK_NAMES]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in LOOPBACK_IPS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return FederationTLS(cert_path, key_path)
