"""The synchronous client."""

from __future__ import annotations

import random
import threading
import time
from typing import IO, Any, Callable, Iterable, Iterator, List, Mapping, Optional, Sequence, TypeVar, Union

import grpc

from . import _common as c
from ._gen.keyward.v1 import keyward_pb2 as pb
from ._gen.keyward.v1 import keyward_pb2_grpc as pb_grpc
from ._types import (
    NO_RETRY,
    Encrypted,
    ItemResult,
    Justification,
    Purpose,
    RetryPolicy,
    StreamResult,
    TlsConfig,
)
from .errors import IncompleteMessage, KeywardError, error_from_item, error_from_rpc

R = TypeVar("R")
DEFAULT_TIMEOUT = 30.0


class _Deadline:
    def __init__(self, timeout: Optional[float]) -> None:
        self.end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> Optional[float]:
        return None if self.end is None else self.end - time.monotonic()


class Client:
    """A Keyward client: thread-safe, reusable, one gRPC channel.

    ``target`` is ``host:port`` (``127.0.0.1:50051`` for ``keyward serve``'s default). Without
    ``tls`` the channel is plaintext (the server's development mode, loopback only); with a
    :class:`TlsConfig` it is mutual TLS. ``timeout`` is each operation's overall deadline in
    seconds, retries included (``None``: none). ``retry`` is the :class:`RetryPolicy`
    (``NO_RETRY`` to turn retries off). ``max_plaintext_bytes`` is the server's setting of that
    name (default 1 MiB): batches are split to fit its message limit.

    Use it as a context manager, or call :meth:`close`.
    """

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
            self._channel = grpc.insecure_channel(target, options=opts)
        else:
            if tls.server_name:
                opts.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(target, tls.credentials(), options=opts)
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_plaintext_bytes = max_plaintext_bytes
        self._crypto = pb_grpc.CryptoServiceStub(self._channel)
        self._tenants = pb_grpc.TenantServiceStub(self._channel)
        self._audit = pb_grpc.AuditServiceStub(self._channel)
        self._rng = random.Random()
        self._rng_lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- the call loop ------------------------------------------------------------------------

    def _call(
        self,
        method: Callable[..., R],
        request: Any,
        *,
        retry: Optional[RetryPolicy] = None,
        timeout: Optional[float] = None,
    ) -> R:
        policy = retry or self.retry
        deadline = _Deadline(self.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline.remaining()
            try:
                return method(request, timeout=remaining)
            except grpc.RpcError as e:
                error = error_from_rpc(e)
            if attempt >= policy.max_attempts or not policy.should_retry(error):
                raise error
            with self._rng_lock:
                delay = policy.backoff(attempt, error, self._rng)
            remaining = deadline.remaining()
            if remaining is not None and delay >= remaining:
                raise error
            time.sleep(delay)

    # --- CryptoService ------------------------------------------------------------------------

    def encrypt(
        self,
        tenant: str,
        plaintext: bytes,
        *,
        context: Mapping[str, str],
        scope: Optional[str] = None,
        justification: Optional[Justification] = None,
    ) -> Encrypted:
        """Encrypts ``plaintext`` for ``tenant`` under the data key of ``scope`` (default
        ``"default"``), bound to ``context`` (the same map must be given to decrypt)."""
        r = self._call(
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

    def decrypt(
        self,
        tenant: str,
        envelope: bytes,
        *,
        context: Mapping[str, str],
        justification: Optional[Justification] = None,
    ) -> bytes:
        """Decrypts an envelope made by :meth:`encrypt` (same tenant, same context)."""
        r = self._call(
            self._crypto.Decrypt,
            pb.DecryptRequest(
                tenant_id=tenant,
                envelope=envelope,
                encryption_context=c.context_dict(context),
                justification=c.justification_pb(justification),
            ),
        )
        return r.plaintext

    def encrypt_many(
        self,
        tenant: str,
        items: Iterable[Union[bytes, tuple]],
        *,
        context: Optional[Mapping[str, str]] = None,
        scope: Optional[str] = None,
        justification: Optional[Justification] = None,
    ) -> List[ItemResult[Encrypted]]:
        """Encrypts many plaintexts over ``EncryptBatch``, split into calls of at most 1000
        items that fit the server's message limit. Items are plaintext bytes (with ``context``
        and ``scope``) or ``(plaintext, context[, scope])`` tuples. One result per item, in
        order: one failing item does not fail the others. A call that fails as a whole raises."""
        norm = c.normalize_encrypt_items(items, context, scope)
        batches, alone = c.split_batches(
            c.encrypt_costs(tenant, norm), self.max_plaintext_bytes + c.MESSAGE_OVERHEAD_BYTES
        )
        results: List[Optional[ItemResult[Encrypted]]] = [None] * len(norm)
        j = c.justification_pb(justification)
        for batch in batches:
            request = pb.EncryptBatchRequest(
                tenant_id=tenant,
                items=[pb.EncryptBatchItem(plaintext=norm[i][0], encryption_context=norm[i][1], scope=norm[i][2]) for i in batch],
                justification=j,
            )
            response = self._call(self._crypto.EncryptBatch, request)
            for i, r in zip(batch, response.results):
                if r.HasField("ok"):
                    results[i] = ItemResult(value=Encrypted(envelope=r.ok.envelope, dek_id=r.ok.dek_id))
                else:
                    results[i] = ItemResult(error=error_from_item(r.error))
        for i in alone:
            pt, ctx, sc = norm[i]
            try:
                results[i] = ItemResult(value=self.encrypt(tenant, pt, context=ctx, scope=sc, justification=justification))
            except KeywardError as e:
                results[i] = ItemResult(error=e)
        return results  # type: ignore[return-value]

    def decrypt_many(
        self,
        tenant: str,
        items: Iterable[Union[bytes, tuple]],
        *,
        context: Optional[Mapping[str, str]] = None,
        justification: Optional[Justification] = None,
    ) -> List[ItemResult[bytes]]:
        """Decrypts many envelopes over ``DecryptBatch`` (split as :meth:`encrypt_many`). Items
        are envelope bytes (with ``context``) or ``(envelope, context)`` tuples."""
        norm = c.normalize_decrypt_items(items, context)
        batches, alone = c.split_batches(c.decrypt_costs(norm), self.max_plaintext_bytes + c.MESSAGE_OVERHEAD_BYTES)
        results: List[Optional[ItemResult[bytes]]] = [None] * len(norm)
        j = c.justification_pb(justification)
        for batch in batches:
            request = pb.DecryptBatchRequest(
                tenant_id=tenant,
                items=[pb.DecryptBatchItem(envelope=norm[i][0], encryption_context=norm[i][1]) for i in batch],
                justification=j,
            )
            response = self._call(self._crypto.DecryptBatch, request)
            for i, r in zip(batch, response.results):
                if r.HasField("ok"):
                    results[i] = ItemResult(value=r.ok.plaintext)
                else:
                    results[i] = ItemResult(error=error_from_item(r.error))
        for i in alone:
            env, ctx = norm[i]
            try:
                results[i] = ItemResult(value=self.decrypt(tenant, env, context=ctx, justification=justification))
            except KeywardError as e:
                results[i] = ItemResult(error=e)
        return results  # type: ignore[return-value]

    # --- streams ------------------------------------------------------------------------------

    def encrypt_stream(
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
        """Encrypts everything ``reader.read()`` returns into a framed envelope written to
        ``writer``, in bounded memory (``chunk_size`` bytes per message; gRPC flow control
        holds the reader back when the server or the writer is slower). ``frame_size``: 0 for
        the server's default (64 KiB), else 1 KiB to 1 MiB. ``timeout``: the whole stream's
        deadline (default none). On an error the writer holds part of an envelope: discard it."""
        first = pb.EncryptStreamRequest(
            tenant_id=tenant,
            encryption_context=c.context_dict(context),
            scope=scope or "",
            frame_size=frame_size,
            justification=c.justification_pb(justification),
        )
        counted = {"in": 0}

        def requests() -> Iterator[pb.EncryptStreamRequest]:
            yield first
            while True:
                chunk = reader.read(chunk_size)
                if not chunk:
                    return
                counted["in"] += len(chunk)
                yield pb.EncryptStreamRequest(plaintext=chunk)

        dek_id = None
        out = 0
        try:
            for response in self._crypto.EncryptStream(requests(), timeout=timeout):
                if response.dek_id:
                    dek_id = response.dek_id
                writer.write(response.envelope)
                out += len(response.envelope)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        return StreamResult(dek_id=dek_id, bytes_in=counted["in"], bytes_out=out)

    def decrypt_stream(
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
        """Decrypts a framed envelope read from ``reader`` into ``writer``, frame by frame, in
        bounded memory. Each frame's plaintext is written as soon as the server authenticated
        it, so **the writer may hold a partial plaintext** when this raises: every byte of it
        is authentic, but the message is incomplete (truncated, tampered with, revoked or
        cancelled midway). Write to a temporary place and commit only when this returns.

        Raises the typed error (e.g. ``KeyRevoked``) when the stream failed before any
        plaintext was written, and :class:`IncompleteMessage` (its ``cause`` the typed error,
        ``bytes_written`` what was written) once some was, or when the stream ended without its
        final frame."""
        first = pb.DecryptStreamRequest(
            tenant_id=tenant,
            encryption_context=c.context_dict(context),
            justification=c.justification_pb(justification),
        )
        counted = {"in": 0}

        def requests() -> Iterator[pb.DecryptStreamRequest]:
            yield first
            while True:
                chunk = reader.read(chunk_size)
                if not chunk:
                    return
                counted["in"] += len(chunk)
                yield pb.DecryptStreamRequest(envelope=chunk)

        written = 0
        final = False
        try:
            for response in self._crypto.DecryptStream(requests(), timeout=timeout):
                writer.write(response.plaintext)
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

    # --- TenantService ------------------------------------------------------------------------

    def create_tenant(self, tenant: str, *, display_name: str = "") -> pb.Tenant:
        return self._call(
            self._tenants.CreateTenant,
            pb.CreateTenantRequest(tenant_id=tenant, display_name=display_name),
            retry=NO_RETRY,
        )

    def register_key(
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
        """Binds a KEK to the tenant (exactly one of the key arguments); registering again
        rotates it. The server validates the key with a live wrap/unwrap first."""
        return self._call(self._tenants.RegisterKey, _register_request(**locals()), retry=NO_RETRY)

    def get_tenant(self, tenant: str) -> pb.Tenant:
        return self._call(self._tenants.GetTenant, pb.GetTenantRequest(tenant_id=tenant))

    def revoke_key(self, tenant: str, *, reason: str, requested_by: str = "") -> pb.Tenant:
        """Break glass: every later call for the tenant fails ``KeyRevoked`` until restored."""
        return self._call(
            self._tenants.RevokeKey,
            pb.RevokeKeyRequest(tenant_id=tenant, reason=reason, requested_by=requested_by),
            retry=NO_RETRY,
        )

    def restore_key(self, tenant: str, *, reason: str, requested_by: str = "", binding_id: int = 0) -> pb.Tenant:
        return self._call(
            self._tenants.RestoreKey,
            pb.RestoreKeyRequest(tenant_id=tenant, reason=reason, requested_by=requested_by, binding_id=binding_id),
            retry=NO_RETRY,
        )

    def set_tenant_policy(
        self,
        tenant: str,
        *,
        cache_ttl_seconds: int = 0,
        monitor_interval_seconds: int = 0,
        auto_rekey: bool = False,
        decrypt_purposes: Iterable[Purpose] = (),
        requested_by: str = "",
    ) -> pb.Tenant:
        """Replaces the tenant's policy (0 / empty: the server's setting). With
        ``decrypt_purposes``, every decrypt must carry a :class:`Justification` with one of
        them (else ``JustificationRequired`` / ``PurposeNotAllowed``)."""
        return self._call(
            self._tenants.SetTenantPolicy,
            _policy_request(tenant, cache_ttl_seconds, monitor_interval_seconds, auto_rekey, decrypt_purposes, requested_by),
            retry=NO_RETRY,
        )

    # --- AuditService -------------------------------------------------------------------------

    def export_audit(self, out: Union[str, IO[bytes]], *, timeout: Optional[float] = None) -> int:
        """Writes the whole audit chain as JSON Lines (for ``keyward audit verify``) to a path
        or binary file; returns the bytes written."""
        if isinstance(out, str):
            with open(out, "wb") as f:
                return self.export_audit(f, timeout=timeout)
        n = 0
        try:
            for chunk in self._audit.Export(pb.ExportAuditRequest(), timeout=timeout):
                out.write(chunk.jsonl)
                n += len(chunk.jsonl)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        return n

    def audit_public_key(self) -> pb.AuditPublicKey:
        """The deployment's checkpoint-signing public key (``public_key``, ``key_id``)."""
        return self._call(self._audit.GetPublicKey, pb.GetAuditPublicKeyRequest())

    # --- raw access ---------------------------------------------------------------------------

    @property
    def channel(self) -> grpc.Channel:
        """The underlying channel (e.g. for the generated stubs of calls not wrapped here)."""
        return self._channel


def _register_request(
    tenant: str,
    local_key: Optional[str],
    aws_kms_key_arn: Optional[str],
    aws_role_arn: str,
    aws_external_id: str,
    pkcs11_uri: Optional[str],
    gcp_crypto_key: Optional[str],
    azure_key_id: Optional[str],
    **_: Any,
) -> pb.RegisterKeyRequest:
    given = [x for x in (local_key, aws_kms_key_arn, pkcs11_uri, gcp_crypto_key, azure_key_id) if x is not None]
    if len(given) != 1:
        raise ValueError("register_key: give exactly one of local_key, aws_kms_key_arn, pkcs11_uri, gcp_crypto_key, azure_key_id")
    r = pb.RegisterKeyRequest(tenant_id=tenant)
    if local_key is not None:
        r.local.key_name = local_key
    elif aws_kms_key_arn is not None:
        r.aws_kms.key_arn = aws_kms_key_arn
        r.aws_kms.role_arn = aws_role_arn
        r.aws_kms.external_id = aws_external_id
    elif pkcs11_uri is not None:
        r.pkcs11.uri = pkcs11_uri
    elif gcp_crypto_key is not None:
        r.gcp_kms.crypto_key = gcp_crypto_key
    else:
        r.azure_key_vault.key_id = azure_key_id or ""
    return r


def _policy_request(tenant, cache_ttl_seconds, monitor_interval_seconds, auto_rekey, decrypt_purposes, requested_by):
    return pb.SetTenantPolicyRequest(
        tenant_id=tenant,
        policy=pb.TenantPolicy(
            cache_ttl_seconds=cache_ttl_seconds,
            monitor_interval_seconds=monitor_interval_seconds,
            auto_rekey=auto_rekey,
            decrypt_purposes=[int(p) for p in decrypt_purposes],
        ),
        requested_by=requested_by,
    )



