"""The asyncio client against the real binary (each test runs its own event loop)."""

from __future__ import annotations

import asyncio
import io

import pytest

from conftest import new_tenant_id

from keyward_client import AsyncClient, errors

CTX = {"conversation": "a"}


def run(coro):
    return asyncio.run(coro)


def test_async_round_trip_batches_and_errors(server):
    async def main():
        async with AsyncClient(server.addr) as kw:
            t = new_tenant_id()
            await kw.create_tenant(t)
            await kw.register_key(t, local_key="default")
            sealed = await kw.encrypt(t, b"hello", context=CTX)
            assert await kw.decrypt(t, sealed.envelope, context=CTX) == b"hello"
            # Concurrent calls on one client.
            pts = [b"m%d" % i for i in range(50)]
            envs = await asyncio.gather(*(kw.encrypt(t, p, context=CTX) for p in pts))
            assert await asyncio.gather(*(kw.decrypt(t, e.envelope, context=CTX) for e in envs)) == pts
            # Batches split at 1000 and run concurrently.
            many = [b"i%d" % i for i in range(2500)]
            sealed_many = await kw.encrypt_many(t, many, context=CTX)
            opened = await kw.decrypt_many(t, [r.unwrap().envelope for r in sealed_many], context=CTX)
            assert [r.unwrap() for r in opened] == many
            with pytest.raises(errors.DecryptFailed):
                await kw.decrypt(t, sealed.envelope, context={"other": "1"})
            with pytest.raises(errors.TenantNotFound):
                await kw.encrypt(new_tenant_id(), b"x", context=CTX)
            await kw.revoke_key(t, reason="test")
            with pytest.raises(errors.KeyRevoked):
                await kw.decrypt(t, sealed.envelope, context=CTX)
            await kw.restore_key(t, reason="test")
            assert (await kw.get_tenant(t)).tenant_id == t
            assert (await kw.audit_public_key()).public_key

    run(main())


def test_async_streams(server):
    async def main():
        async with AsyncClient(server.addr) as kw:
            t = new_tenant_id()
            await kw.create_tenant(t)
            await kw.register_key(t, local_key="default")
            data = b"s" * (2 << 20)
            envelope = io.BytesIO()
            r = await kw.encrypt_stream(t, io.BytesIO(data), envelope, context=CTX)
            assert r.bytes_in == len(data) and r.dek_id
            out = io.BytesIO()
            await kw.decrypt_stream(t, io.BytesIO(envelope.getvalue()), out, context=CTX)
            assert out.getvalue() == data
            cut = io.BytesIO(envelope.getvalue()[: len(envelope.getvalue()) - 100])
            partial = io.BytesIO()
            with pytest.raises(errors.IncompleteMessage) as e:
                await kw.decrypt_stream(t, cut, partial, context=CTX)
            assert isinstance(e.value.cause, errors.MalformedEnvelope)
            assert data.startswith(partial.getvalue()) and 0 < len(partial.getvalue()) < len(data)

    run(main())
