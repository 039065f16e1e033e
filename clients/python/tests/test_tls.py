"""Mutual TLS with the test PKI and the shipped policies: who may do what, as typed errors."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from conftest import SPIFFE

from keyward_client import NO_RETRY, AsyncClient, Client, TlsConfig, errors

CTX = {"conversation": "tls"}


def test_mtls_round_trip(mtls):
    server, pki = mtls
    with Client(server.addr, tls=pki.tls("gateway", f"{SPIFFE}/edge/sa/gateway")) as kw:
        sealed = kw.encrypt("acme", b"over mTLS", context=CTX)
        assert kw.decrypt("acme", sealed.envelope, context=CTX) == b"over mTLS"

    async def main():
        async with AsyncClient(server.addr, tls=pki.tls("gateway-a", f"{SPIFFE}/edge/sa/gateway")) as kw:
            assert await kw.decrypt("acme", sealed.envelope, context=CTX) == b"over mTLS"

    asyncio.run(main())


def test_permission_denied(mtls):
    server, pki = mtls
    # billing-worker serves globex only.
    with Client(server.addr, tls=pki.tls("billing", f"{SPIFFE}/billing/sa/billing-worker")) as kw:
        with pytest.raises(errors.PermissionDenied) as e:
            kw.encrypt("acme", b"x", context=CTX)
    assert type(e.value) is errors.PermissionDenied and e.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_unauthenticated(mtls):
    server, pki = mtls
    with Client(server.addr, tls=pki.tls("stranger", f"{SPIFFE}/nowhere/sa/stranger")) as kw:
        with pytest.raises(errors.Unauthenticated) as e:
            kw.encrypt("acme", b"x", context=CTX)
    assert e.value.reason == "UNAUTHENTICATED"


def test_no_client_certificate_fails_the_handshake(mtls):
    server, pki = mtls
    with Client(server.addr, tls=TlsConfig(ca=str(pki.ca_file), server_name="localhost"), timeout=5, retry=NO_RETRY) as kw:
        with pytest.raises(errors.KeywardError) as e:
            kw.encrypt("acme", b"x", context=CTX)
    assert e.value.reason is None  # the transport's, not a Keyward reason


def test_tls_config_needs_cert_and_key_together(mtls):
    _, pki = mtls
    with pytest.raises(ValueError):
        TlsConfig(ca=str(pki.ca_file), cert=str(pki.ca_file)).credentials()
