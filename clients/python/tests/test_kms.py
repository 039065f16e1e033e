"""KMS_UNAVAILABLE from a real outage: a tenant on an AWS KMS key of the emulator, the emulator
stopped, the cached keys expired."""

from __future__ import annotations

import time

import pytest

from conftest import Moto, Server

from keyward_client import NO_RETRY, Client, RetryPolicy, errors
from keyward_client import pb

CTX = {"doc": "1"}


def test_kms_unavailable_is_typed_and_retried(tmp_path):
    moto = Moto()
    server = None
    try:
        key_arn = moto.create_key()
        server = Server(
            tmp_path / "data",
            {
                "KEYWARD_AWS_KMS__ENDPOINT_URL": moto.endpoint,
                "KEYWARD_AWS_KMS__STS_ENDPOINT_URL": moto.endpoint,
                "KEYWARD_AWS_KMS__MAX_ATTEMPTS": "1",
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
                # Unwrapped keys live 1 s, so the next decrypt asks the KMS; no monitor.
                "KEYWARD_CACHE__TTL_SECONDS": "1",
                "KEYWARD_REVOCATION__MONITOR_INTERVAL_SECONDS": "0",
            },
        )
        with Client(server.addr, retry=NO_RETRY, timeout=30) as kw:
            kw.create_tenant("acme")
            kw.register_key("acme", aws_kms_key_arn=key_arn)
            sealed = kw.encrypt("acme", b"x", context=CTX)
            moto.stop()
            time.sleep(1.5)  # past the 1 s cache TTL (a wall-clock bound, nothing to wait on)
            with pytest.raises(errors.KmsUnavailable) as e:
                kw.decrypt("acme", sealed.envelope, context=CTX)
            assert e.value.retry_delay == pytest.approx(1.0) and e.value.metadata.get("provider_error")
            # Not a revocation: the key is not revoked.
            assert kw.get_tenant("acme").active_key.state not in (pb.KEK_STATE_REVOKED, pb.KEK_STATE_DESTROYED)
        # With retries: three attempts, each after the server's 1 s hint, then the error.
        with Client(server.addr, retry=RetryPolicy(max_attempts=3), timeout=30) as kw:
            start = time.monotonic()
            with pytest.raises(errors.KmsUnavailable):
                kw.decrypt("acme", sealed.envelope, context=CTX)
            assert time.monotonic() - start >= 2.0
        # The overall deadline bounds the retries.
        with Client(server.addr, retry=RetryPolicy(max_attempts=10), timeout=1.5) as kw:
            start = time.monotonic()
            with pytest.raises(errors.KmsUnavailable):
                kw.decrypt("acme", sealed.envelope, context=CTX)
            assert time.monotonic() - start < 3.0
    finally:
        if server:
            server.stop()
        moto.stop()
