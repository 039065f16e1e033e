"""The asyncio client (``grpc.aio``): the same API as :class:`keyward_client.Client`, awaitable.

    async with AsyncClient("127.0.0.1:50051") as kw:
        sealed = await kw.encrypt("acme", b"hello", context={"conversation": "42"})
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from typing import IO, Any, AsyncIterator, Iterable, List, Mapping, Optional, Sequence, Union

import grpc
import grpc.aio

from . import _common as c
from ._client import DEFAULT_TIMEOUT, _policy_request, _register_request
from ._gen.keyward.v1 import keyward_pb2 as pb
from ._gen.keyward.v1 import keyward_pb2_grpc as pb_grpc
from ._types import NO_RETRY, Encrypted, ItemResult, Justification, Purpose, RetryPolicy, StreamResult, TlsConfig
from .errors import IncompleteMessage, KeywardError, error_from_item, error_from_rpc

__all__ = ["AsyncClient"]


async def _maybe_await(value):
    if inspect.isawaitable(value):
        return await value
    return value


class AsyncClient:
    """See :class:`keyward_client.Client`; every method is a coroutine. Create it inside the
    event loop that uses it. Stream readers and writers may be plain files or objects whose
    ``read``/``write`` are coroutines."""

    def __init__(
        self,
        target: str,
        *,
        tls: Optional[TlsConfig] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        retry: Optional[RetryPolicy] = None,
        max_plaintext_bytes: int = c.DEFAULT_MAX_PLAINTEXT_BYTES,
        options: Sequence = (),
    ) -> None:
        opts = c.channel_options(max_plaintext_bytes) + list(options)
        if tls is None:
            self._channel = grpc.aio.insecure_channel(target, options=opts)
        else:
            if tls.server_name:
                opts.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.aio.secure_channel(target, tls.credentials(), options=opts)
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_plaintext_bytes = max_plaintext_bytes
        self._crypto = pb_grpc.CryptoServiceStub(self._channel)
        self._tenants = pb_grpc.TenantServiceStub(self._channel)
        self._audit = pb_grpc.AuditServiceStub(self._channel)
        self._rng = random.Random()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _call(self, method, request, *, retry: Optional[RetryPolicy] = None):
        policy = retry or self.retry
        end = None if self.timeout is None else time.monotonic() + self.timeout
        attempt = 0
        while True:
            attempt += 1
            remaining = None if end is None else end - time.monotonic()
            try:
                return await method(request, timeout=remaining)
            except grpc.RpcError as e:
                error = error_from_rpc(e)
            if attempt >= policy.max_attempts or not policy.should_retry(error):
                raise error
            delay = policy.backoff(attempt, error, self._rng)
            if end is not None and delay >= end - time.monotonic():
                raise error
            await asyncio.sleep(delay)

    async def encrypt(
        self,
        tenant: str,
        plaintext: bytes,
        *,
        context: Mapping[str, str],
        scope: Optional[str] = None,
        justification: Optional[Justification] = None,
    ) -> Encrypted:
        r = await self._call(
            self._crypto.Encrypt,
            pb.EncryptRequest(
                tenant_id=tenant,
                plaintext=plaintext,
                encryption_context=c.context_dict(context),
                scope=scope or "",
                justification=c.justification_pb(justification),
            ),
        )
        return Encrypted(envelope=r.envelope, dek_id=r.dek_id)

    async def decrypt(
        self,
        tenant: str,
        envelope: bytes,
        *,
        context: Mapping[str, str],
        justification: Optional[Justification] = None,
    ) -> bytes:
        r = await self._call(
            self._crypto.Decrypt,
            pb.DecryptRequest(
                tenant_id=tenant,
                envelope=envelope,
                encryption_context=c.context_dict(context),
                justification=c.justification_pb(justification),
            ),
        )
        return r.plaintext

    async def encrypt_many(
        self,
        tenant: str,
        items: Iterable[Union[bytes, tuple]],
        *,
        context: Optional[Mapping[str, str]] = None,
        scope: Optional[str] = None,
        justification: Optional[Justification] = None,
        concurrency: int = 4,
    ) -> List[ItemResult[Encrypted]]:
        """As :meth:`Client.encrypt_many`; up to ``concurrency`` batch calls in flight."""
        norm = c.normalize_encrypt_items(items, context, scope)
        batches, alone = c.split_batches(c.encrypt_costs(tenant, norm), self.max_plaintext_bytes + c.MESSAGE_OVERHEAD_BYTES)
        results: List[Optional[ItemResult[Encrypted]]] = [None] * len(norm)
        j = c.justification_pb(justification)
        gate = asyncio.Semaphore(max(1, concurrency))

        async def run(batch: List[int]) -> None:
            request = pb.EncryptBatchRequest(
                tenant_id=tenant,
                items=[pb.EncryptBatchItem(plaintext=norm[i][0], encryption_context=norm[i][1], scope=norm[i][2]) for i in batch],
                justification=j,
            )
            async with gate:
                response = await self._call(self._crypto.EncryptBatch, request)
            for i, r in zip(batch, response.results):
                if r.HasField("ok"):
                    results[i] = ItemResult(value=Encrypted(envelope=r.ok.envelope, dek_id=r.ok.dek_id))
                else:
                    results[i] = ItemResult(error=error_from_item(r.error))

        async def one(i: int) -> None:
            pt, ctx, sc = norm[i]
            try:
                results[i] = ItemResult(value=await self.encrypt(tenant, pt, context=ctx, scope=sc, justification=justification))
            except KeywardError as e:
                results[i] = ItemResult(error=e)

        await asyncio.gather(*(run(b) for b in batches), *(one(i) for i in alone))
        return results  # type: ignore[return-value]

    async def decrypt_many(
        self,
        tenant: str,
        items: Iterable[Union[bytes, tuple]],
        *,
        context: Optional[Mapping[str, str]] = None,
        justification: Optional[Justification] = None,
        concurrency: int = 4,
    ) -> List[ItemResult[bytes]]:
        norm = c.normalize_decrypt_items(items, context)
        batches, alone = c.split_batches(c.decrypt_costs(norm), self.max_plaintext_bytes + c.MESSAGE_OVERHEAD_BYTES)
        results: List[Optional[ItemResult[bytes]]] = [None] * len(norm)
        j = c.justification_pb(justification)
        gate = asyncio.Semaphore(max(1, concurrency))

        async def run(batch: List[int]) -> None:
            request = pb.DecryptBatchRequest(
                tenant_id=tenant,
                items=[pb.DecryptBatchItem(envelope=norm[i][0], encryption_context=norm[i][1]) for i in batch],
                justification=j,
            )
            async with gate:
                response = await self._call(self._crypto.DecryptBatch, request)
            for i, r in zip(batch, response.results):
                if r.HasField("ok"):
                    results[i] = ItemResult(value=r.ok.plaintext)
                else:
                    results[i] = ItemResult(error=error_from_item(r.error))

        async def one(i: int) -> None:
            env, ctx = norm[i]
            try:
                results[i] = ItemResult(value=await self.decrypt(tenant, env, context=ctx, justification=justification))
            except KeywardError as e:
                results[i] = ItemResult(error=e)

        await asyncio.gather(*(run(b) for b in batches), *(one(i) for i in alone))
        return results  # type: ignore[return-value]

    async def encrypt_stream(
        self,
        tenant: str,
        reader: IO[bytes],
        writer: IO[bytes],
        *,
        context: Mapping[str, str],
        scope: Optional[str] = None,
        frame_size: int = 0,
        justification: Optional[Justification] = None,
        chunk_size: int = c.STREAM_CHUNK,
        timeout: Optional[float] = None,
    ) -> StreamResult:
        """As :meth:`Client.encrypt_stream`."""
        counted = {"in": 0}

        async def requests() -> AsyncIterator[pb.EncryptStreamRequest]:
            yield pb.EncryptStreamRequest(
                tenant_id=tenant,
                encryption_context=c.context_dict(context),
                scope=scope or "",
                frame_size=frame_size,
                justification=c.justification_pb(justification),
            )
            while True:
                chunk = await _maybe_await(reader.read(chunk_size))
                if not chunk:
                    return
                counted["in"] += len(chunk)
                yield pb.EncryptStreamRequest(plaintext=chunk)

        dek_id = None
        out = 0
        try:
            async for response in self._crypto.EncryptStream(requests(), timeout=timeout):
                if response.dek_id:
                    dek_id = response.dek_id
                await _maybe_await(writer.write(response.envelope))
                out += len(response.envelope)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        return StreamResult(dek_id=dek_id, bytes_in=counted["in"], bytes_out=out)

    async def decrypt_stream(
        self,
        tenant: str,
        reader: IO[bytes],
        writer: IO[bytes],
        *,
        context: Mapping[str, str],
        justification: Optional[Justification] = None,
        chunk_size: int = c.STREAM_CHUNK,
        timeout: Optional[float] = None,
    ) -> StreamResult:
        """As :meth:`Client.decrypt_stream`: the writer may hold an authentic but incomplete
        plaintext when this raises :class:`IncompleteMessage`."""
        counted = {"in": 0}

        async def requests() -> AsyncIterator[pb.DecryptStreamRequest]:
            yield pb.DecryptStreamRequest(
                tenant_id=tenant,
                encryption_context=c.context_dict(context),
                justification=c.justification_pb(justification),
            )
            while True:
                chunk = await _maybe_await(reader.read(chunk_size))
                if not chunk:
                    return
                counted["in"] += len(chunk)
                yield pb.DecryptStreamRequest(envelope=chunk)

        written = 0
        final = False
        try:
            async for response in self._crypto.DecryptStream(requests(), timeout=timeout):
                await _maybe_await(writer.write(response.plaintext))
                written += len(response.plaintext)
                final = final or response.final
        except grpc.RpcError as e:
            error = error_from_rpc(e)
            if written == 0 and not final:
                raise error from None
            raise IncompleteMessage(
                f"the stream failed after {written} bytes of plaintext: what was written is "
                f"authentic but incomplete ({error.message})",
                cause=error,
                bytes_written=written,
            ) from None
        if not final:
            raise IncompleteMessage(
                "the stream ended without its final frame: what was written is authentic but incomplete",
                cause=None,
                bytes_written=written,
            )
        return StreamResult(dek_id=None, bytes_in=counted["in"], bytes_out=written)

    async def create_tenant(self, tenant: str, *, display_name: str = "") -> pb.Tenant:
        return await self._call(
            self._tenants.CreateTenant, pb.CreateTenantRequest(tenant_id=tenant, display_name=display_name), retry=NO_RETRY
        )

    async def register_key(
        self,
        tenant: str,
        *,
        local_key: Optional[str] = None,
        aws_kms_key_arn: Optional[str] = None,
        aws_role_arn: str = "",
        aws_external_id: str = "",
        pkcs11_uri: Optional[str] = None,
        gcp_crypto_key: Optional[str] = None,
        azure_key_id: Optional[str] = None,
    ) -> pb.Tenant:
        return await self._call(self._tenants.RegisterKey, _register_request(**locals()), retry=NO_RETRY)

    async def get_tenant(self, tenant: str) -> pb.Tenant:
        return await self._call(self._tenants.GetTenant, pb.GetTenantRequest(tenant_id=tenant))

    async def revoke_key(self, tenant: str, *, reason: str, requested_by: str = "") -> pb.Tenant:
        return await self._call(
            self._tenants.RevokeKey,
            pb.RevokeKeyRequest(tenant_id=tenant, reason=reason, requested_by=requested_by),
            retry=NO_RETRY,
        )

    async def restore_key(self, tenant: str, *, reason: str, requested_by: str = "", binding_id: int = 0) -> pb.Tenant:
        return await self._call(
            self._tenants.RestoreKey,
            pb.RestoreKeyRequest(tenant_id=tenant, reason=reason, requested_by=requested_by, binding_id=binding_id),
            retry=NO_RETRY,
        )

    async def set_tenant_policy(
        self,
        tenant: str,
        *,
        cache_ttl_seconds: int = 0,
        monitor_interval_seconds: int = 0,
        auto_rekey: bool = False,
        decrypt_purposes: Iterable[Purpose] = (),
        requested_by: str = "",
    ) -> pb.Tenant:
        return await self._call(
            self._tenants.SetTenantPolicy,
            _policy_request(tenant, cache_ttl_seconds, monitor_interval_seconds, auto_rekey, decrypt_purposes, requested_by),
            retry=NO_RETRY,
        )

    async def export_audit(self, out: IO[bytes], *, timeout: Optional[float] = None) -> int:
        n = 0
        try:
            async for chunk in self._audit.Export(pb.ExportAuditRequest(), timeout=timeout):
                await _maybe_await(out.write(chunk.jsonl))
                n += len(chunk.jsonl)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        return n

    async def audit_public_key(self) -> pb.AuditPublicKey:
        return await self._call(self._audit.GetPublicKey, pb.GetAuditPublicKeyRequest())

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel
