"""Fixtures: the real `keyward` binary on a free port, a test PKI, the AWS KMS emulator.

The binary is `$KEYWARD_BIN` or the workspace's target/debug/keyward (scripts/test builds it
first). Ports come from `$KEYWARD_PY_TEST_PORTS` (`FIRST-LAST`, default 51300-51399) so that
side-by-side runs stay apart; each server gets a temp data directory (SQLite, local key).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
import socket
import subprocess
import sys
import threading
import uuid
from typing import Dict, Iterator, Optional

import pytest

HERE = pathlib.Path(__file__).resolve().parent
CLIENT_ROOT = HERE.parent
REPO = CLIENT_ROOT.parent.parent
sys.path.insert(0, str(CLIENT_ROOT / "src"))

import keyward_client  # noqa: E402

_port_lock = threading.Lock()
_used_ports: set = set()


def free_port() -> int:
    first, last = (int(x) for x in os.environ.get("KEYWARD_PY_TEST_PORTS", "51300-51399").split("-"))
    with _port_lock:
        for port in range(first, last + 1):
            if port in _used_ports:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _used_ports.add(port)
            return port
    raise RuntimeError(f"no free port in {first}-{last}")


def keyward_bin() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("KEYWARD_BIN", REPO / "target" / "debug" / "keyward"))
    if not path.exists():
        raise RuntimeError(f"{path} not found: build it first (cargo build -p keyward-cli; scripts/test does)")
    return path


class Server:
    """A running `keyward serve` in a private data directory; stopped by `stop()`."""

    def __init__(self, data_dir: pathlib.Path, env: Optional[Dict[str, str]] = None, log: Optional[pathlib.Path] = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        full_env = dict(os.environ)
        full_env.update(
            {
                "KEYWARD_LOG": "warn",
                "KEYWARD_ADMIN__LISTEN": f"127.0.0.1:{free_port()}",
            }
        )
        full_env.update(env or {})
        self.log_path = log or data_dir.parent / f"{data_dir.name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(keyward_bin()), "serve", "--listen", self.addr, "--data-dir", str(data_dir)],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        ready = threading.Event()

        def watch() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith(b"keyward listening on "):
                    ready.set()

        threading.Thread(target=watch, daemon=True).start()
        if not ready.wait(60):
            self.stop()
            raise RuntimeError(f"keyward serve did not start within 60 s; log:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def new_tenant_id() -> str:
    return "t-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("dev") / "data")
    yield s
    s.stop()


@pytest.fixture
def client(server) -> Iterator[keyward_client.Client]:
    with keyward_client.Client(server.addr, timeout=20) as c:
        yield c


@pytest.fixture
def tenant(client) -> str:
    """A fresh tenant bound to the server's local development key "default"."""
    t = new_tenant_id()
    client.create_tenant(t)
    client.register_key(t, local_key="default")
    return t


# --- the test PKI (the e2e tests' shape: tests/e2e/tests/support/pki.rs) ----------------------


class Pki:
    """A CA, the server's certificate (localhost, 127.0.0.1) and client certificates with a
    SPIFFE ID of the shipped identity mapping (policies/identities.toml), as PEM files."""

    def __init__(self, directory: pathlib.Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self._x509, self._hashes, self._ser, self._ec = x509, hashes, serialization, ec
        self._eku, self._name = ExtendedKeyUsageOID, NameOID
        self.dir = directory
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyward-client test CA")])
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def _leaf(self, file: str, sans, eku):
        x509, ser = self._x509, self._ser
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(self._name.COMMON_NAME, file)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .sign(self.ca_key, self._hashes.SHA256())
        )
        cert_file, key_file = self.dir / f"{file}.pem", self.dir / f"{file}.key"
        cert_file.write_bytes(cert.public_bytes(ser.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
        )
        return cert_file, key_file

    def server(self):
        x509 = self._x509
        return self._leaf(
            "server",
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            self._eku.SERVER_AUTH,
        )

    def client(self, file: str, spiffe_id: str):
        return self._leaf(file, [self._x509.UniformResourceIdentifier(spiffe_id)], self._eku.CLIENT_AUTH)

    def tls(self, file: str, spiffe_id: str) -> keyward_client.TlsConfig:
        cert, key = self.client(file, spiffe_id)
        return keyward_client.TlsConfig(ca=str(self.ca_file), cert=str(cert), key=str(key), server_name="localhost")


SPIFFE = "spiffe://keyward.test/ns"


@pytest.fixture(scope="module")
def mtls(tmp_path_factory):
    """A server with mutual TLS and the shipped policies and identity mapping; tenant "acme"
    created by the operator and bound to the local key by acme's security team."""
    d = tmp_path_factory.mktemp("mtls")
    pki = Pki(d)
    cert, key = pki.server()
    s = Server(
        d / "data",
        {
            "KEYWARD_TLS__CERT_FILE": str(cert),
            "KEYWARD_TLS__KEY_FILE": str(key),
            "KEYWARD_TLS__CLIENT_CA_FILE": str(pki.ca_file),
            "KEYWARD_AUTHZ__POLICIES_DIR": str(REPO / "policies"),
            "KEYWARD_AUTHZ__IDENTITIES_FILE": str(REPO / "policies" / "identities.toml"),
        },
    )
    with keyward_client.Client(s.addr, tls=pki.tls("operator", f"{SPIFFE}/keyward/sa/operator")) as op:
        op.create_tenant("acme")
    with keyward_client.Client(s.addr, tls=pki.tls("acme-secops", f"{SPIFFE}/acme/sa/secops")) as admin:
        admin.register_key("acme", local_key="default")
    yield s, pki
    s.stop()


# --- the AWS KMS emulator ----------------------------------------------------------------------


class Moto:
    """tests/kms-emulator/keyward_moto.py on a free port of the range."""

    def __init__(self) -> None:
        python = os.environ.get("KEYWARD_MOTO_PYTHON", sys.executable)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [python, str(REPO / "tests" / "kms-emulator" / "keyward_moto.py"), "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("moto listening on "):
            self.stop()
            raise RuntimeError(f"the KMS emulator did not start: {line!r}")
        self.endpoint = line.split()[-1]

    def create_key(self) -> str:
        import boto3

        kms = boto3.client(
            "kms",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        return kms.create_key(Description="keyward-client test key")["KeyMetadata"]["Arn"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
