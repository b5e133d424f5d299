"""kvslite's own certificate authority for device certificates (the IoT credential
provider's, when the operator brings no `--iot-ca` of their own).

It lives in `<data-dir>/iot-ca/`: `ca.pem` (the certificate, public) and `ca.key` (its
private key, readable by the owner only), made at first use. A device certificate names
its thing in the subject's common name, which the credential provider checks against
the `x-amzn-iot-thingname` header.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_YEARS = 20
DEVICE_DAYS = 3650  # a camera's certificate outlives its firmware; revoke to end one early


class DeviceCa:
    def __init__(self, directory: Path):
        self.directory = directory
        self.cert_path = directory / "ca.pem"
        self.key_path = directory / "ca.key"
        self.crl_path = directory / "crl.pem"

    def ensure(self) -> DeviceCa:
        """Make the CA if this directory has none yet."""
        if not self.cert_path.is_file():
            self.directory.mkdir(parents=True, exist_ok=True)
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvslite device CA")])
            cert = (_builder(name, name, key.public_key(), days=365 * CA_YEARS)
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .sign(key, hashes.SHA256()))
            _write_private(self.key_path, _key_pem(key))
            self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return self

    def issue(self, thing: str, out_dir: Path, *, days: int = DEVICE_DAYS,
              not_before: dt.datetime | None = None) -> tuple[Path, Path]:
        """A key and a certificate for `thing` (CN=thing) in `out_dir`, as
        `<thing>.cert.pem` and `<thing>.key.pem`."""
        ca_cert, ca_key = self._load()
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, thing)])
        cert = (_builder(subject, ca_cert.subject, key.public_key(), days=days,
                         not_before=not_before)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        out_dir.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = out_dir / f"{thing}.cert.pem", out_dir / f"{thing}.key.pem"
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def server_certificate(self, hosts: list[str]) -> tuple[Path, Path]:
        """The IoT listener's own certificate, for `hosts` (names or addresses), signed by
        this CA so a device that trusts `ca.pem` trusts the listener too; made once."""
        cert_path, key_path = self.directory / "server.cert.pem", self.directory / "server.key.pem"
        if cert_path.is_file() and key_path.is_file():
            return cert_path, key_path
        ca_cert, ca_key = self._load()
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        cert = (_builder(subject, ca_cert.subject, key.public_key(), days=365 * CA_YEARS)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def revoke(self, cert_pem: bytes) -> Path:
        """Add a certificate this CA issued to its revocation list (`crl.pem`, what
        `--iot-crl` names); returns the list's path."""
        ca_cert, ca_key = self._load()
        cert = x509.load_pem_x509_certificate(cert_pem)
        if cert.issuer != ca_cert.subject:
            raise ValueError("the certificate was not issued by this CA")
        now = dt.datetime.now(dt.timezone.utc)
        crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - dt.timedelta(minutes=5))
               .next_update(now + dt.timedelta(days=365 * CA_YEARS)))
        for revoked in self._revoked():
            crl = crl.add_revoked_certificate(revoked)
        crl = crl.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
            .revocation_date(now).build())
        self.crl_path.write_bytes(crl.sign(ca_key, hashes.SHA256())
                                  .public_bytes(serialization.Encoding.PEM))
        return self.crl_path

    def _revoked(self) -> list[x509.RevokedCertificate]:
        if not self.crl_path.is_file():
            return []
        return list(x509.load_pem_x509_crl(self.crl_path.read_bytes()))

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        self.ensure()
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.key_path} is not the EC key kvslite makes")
        return cert, key


def _builder(subject: x509.Name, issuer: x509.Name, public_key, *, days: int,
             not_before: dt.datetime | None = None) -> x509.CertificateBuilder:
    start = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days)))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    """Written readable by the owner alone, from its creation on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
