"""Keyward's errors as Python types: one class per stable reason of docs/errors.md.

Every error the server returns is a gRPC status whose details carry a ``google.rpc.ErrorInfo``
(domain ``keyward.v1``) with a stable ``reason``; this module turns it into an exception of the
class registered for that reason (``KeyRevoked`` for ``KEY_REVOKED``...). Each carries the gRPC
code, the reason, the ErrorInfo metadata, the request id (internal errors), the field
(``BadRequest``, input errors) and the server's retry hint (``RetryInfo``, KMS outages).

The details are decoded with a private protobuf descriptor pool built here, not with
``googleapis-common-protos``: the package depends on ``grpcio`` and ``protobuf`` only, and a
private pool cannot collide with another copy of ``google/rpc/*.proto`` an application loads.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple, Type

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "KeywardError",
    "InvalidArgument",
    "PayloadTooLarge",
    "MalformedMessage",
    "MalformedEnvelope",
    "UnsupportedEnvelope",
    "TenantMismatch",
    "DecryptFailed",
    "TenantNotFound",
    "DataKeyNotFound",
    "DataKeyShredded",
    "TenantAlreadyExists",
    "NoKeyRegistered",
    "KeyRefused",
    "KeyRevoked",
    "RekeyBlocked",
    "KeyNotFound",
    "KeyMisconfigured",
    "ProviderNotConfigured",
    "KmsUnavailable",
    "Conflict",
    "Unauthenticated",
    "PermissionDenied",
    "JustificationRequired",
    "PurposeNotAllowed",
    "CallerConcurrencyLimit",
    "WrappedKeyRejected",
    "StoreError",
    "InternalError",
    "TransportError",
    "MessageTooLarge",
    "IncompleteMessage",
    "REASONS",
    "error_from_rpc",
    "error_from_item",
]

ERROR_DOMAIN = "keyward.v1"


class KeywardError(Exception):
    """An error returned by Keyward (or by gRPC on the way to it).

    Attributes:
        code: the gRPC status code.
        reason: the stable reason (``ErrorInfo.reason``, docs/errors.md); ``None`` when the
            status carries none (a transport failure: see :class:`TransportError`).
        message: the status message (for people; match on ``reason`` or the class).
        metadata: ``ErrorInfo.metadata`` (e.g. ``state``/``since_ms``/``source`` for
            ``KEY_REVOKED``, ``remediation`` for key errors at onboarding).
        request_id: ``RequestInfo.request_id`` (internal errors): also in the server's log.
        field: the first ``BadRequest`` field violation's field (input errors).
        retry_delay: the server's ``RetryInfo`` hint in seconds (KMS outages).
    """

    #: The reason this class stands for (``None`` on the base classes).
    REASON: Optional[str] = None
    #: Whether the client may retry the same request (docs/errors.md, "Why these codes").
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
        request_id: Optional[str] = None,
        field: Optional[str] = None,
        retry_delay: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason if reason is not None else self.REASON
        self.message = message
        self.metadata: Dict[str, str] = dict(metadata or {})
        self.request_id = request_id
        self.field = field
        self.retry_delay = retry_delay

    def __str__(self) -> str:
        parts = [f"status {self.code.name}"]
        if self.reason:
            parts.append(f"reason {self.reason}")
        if self.field:
            parts.append(f"field {self.field}")
        if self.request_id:
            parts.append(f"request id {self.request_id}")
        return f"{self.message} ({', '.join(parts)})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.name}, reason={self.reason!r})"


# --- INVALID_ARGUMENT: the request's own bytes; retrying it can never succeed ---------------


class InvalidArgument(KeywardError):
    """A field is invalid; ``field`` names it (from ``google.rpc.BadRequest``)."""

    REASON = "INVALID_ARGUMENT"


class PayloadTooLarge(InvalidArgument):
    """The plaintext is over the server's ``max_plaintext_bytes`` (``metadata['limit_bytes']``):
    use :meth:`Client.encrypt_stream`."""

    REASON = "PAYLOAD_TOO_LARGE"


class MalformedMessage(InvalidArgument):
    """The request is not valid protobuf for its type (e.g. invalid UTF-8 in a string)."""

    REASON = "MALFORMED_MESSAGE"


class MalformedEnvelope(InvalidArgument):
    """The envelope is truncated or its header is malformed (also: a framed envelope ending
    before its final frame, or with bytes after it)."""

    REASON = "MALFORMED_ENVELOPE"


class UnsupportedEnvelope(InvalidArgument):
    """Unknown format version or suite; also a framed envelope given to ``decrypt`` (use
    ``decrypt_stream``) or a version 1 envelope given to ``decrypt_stream``."""

    REASON = "UNSUPPORTED_ENVELOPE"


class TenantMismatch(InvalidArgument):
    """The request's tenant differs from the envelope's."""

    REASON = "TENANT_MISMATCH"


class DecryptFailed(InvalidArgument):
    """Wrong encryption context, altered envelope or key-commitment mismatch (deliberately one
    answer: no oracle)."""

    REASON = "DECRYPT_FAILED"


# --- NOT_FOUND / ALREADY_EXISTS --------------------------------------------------------------


class TenantNotFound(KeywardError):
    REASON = "TENANT_NOT_FOUND"


class DataKeyNotFound(KeywardError):
    """The envelope's data key never existed for this tenant."""

    REASON = "DATA_KEY_NOT_FOUND"


class TenantAlreadyExists(KeywardError):
    REASON = "TENANT_ALREADY_EXISTS"


# --- FAILED_PRECONDITION: the system is in a state someone must change ------------------------


class DataKeyShredded(KeywardError):
    """The data key was crypto-shredded: the data is gone for good (``metadata['shredded_at']``)."""

    REASON = "DATA_KEY_SHREDDED"


class NoKeyRegistered(KeywardError):
    REASON = "NO_KEY_REGISTERED"


class KeyRefused(KeywardError):
    """The tenant's KEK refused (disabled, pending deletion, access denied): revocation.
    ``metadata.get('remediation')`` says what the customer must do when known."""

    REASON = "KEY_REFUSED"


class KeyRevoked(KeywardError):
    """The tenant's key is revoked or destroyed (``metadata``: ``state``, ``since_ms``,
    ``source``); refused without a KMS call until the key is restored. Never retried."""

    REASON = "KEY_REVOKED"


class RekeyBlocked(KeywardError):
    """A re-key found an older binding revoked or destroyed (``metadata``: ``binding_id``,
    ``key_ref``, ``state``)."""

    REASON = "REKEY_BLOCKED"


class KeyNotFound(KeywardError):
    REASON = "KEY_NOT_FOUND"


class KeyMisconfigured(KeywardError):
    REASON = "KEY_MISCONFIGURED"


class ProviderNotConfigured(KeywardError):
    REASON = "PROVIDER_NOT_CONFIGURED"


# --- transient -------------------------------------------------------------------------------


class KmsUnavailable(KeywardError):
    """The KMS is unreachable, throttling or timing out (not a revocation); ``retry_delay`` is
    the server's hint. Retried by the client's retry policy."""

    REASON = "KMS_UNAVAILABLE"
    retryable = True


class Conflict(KeywardError):
    """A concurrent writer won a race; nothing changed, retrying is safe."""

    REASON = "CONFLICT"
    retryable = True


class CallerConcurrencyLimit(KeywardError):
    """This caller already has ``metadata['limit']`` RPCs in flight: back off."""

    REASON = "CALLER_CONCURRENCY_LIMIT"
    retryable = True


# --- who you are, what you may do ------------------------------------------------------------


class Unauthenticated(KeywardError):
    """The client certificate has no identity in the server's identity mapping."""

    REASON = "UNAUTHENTICATED"


class PermissionDenied(KeywardError):
    """No policy permits this caller this action on this tenant. Never retried."""

    REASON = "PERMISSION_DENIED"


class JustificationRequired(PermissionDenied):
    """The tenant's policy lists decrypt purposes and the call carried no justification."""

    REASON = "JUSTIFICATION_REQUIRED"


class PurposeNotAllowed(PermissionDenied):
    """The call's justification names a purpose the tenant's policy does not allow."""

    REASON = "PURPOSE_NOT_ALLOWED"


# --- server-side failures --------------------------------------------------------------------


class WrappedKeyRejected(KeywardError):
    """A stored wrapped key was rejected (store corruption or tampering); ``request_id``."""

    REASON = "WRAPPED_KEY_REJECTED"


class StoreError(KeywardError):
    REASON = "STORE_ERROR"


class InternalError(KeywardError):
    REASON = "INTERNAL"


# --- statuses without a Keyward reason, and client-side conditions ---------------------------


class TransportError(KeywardError):
    """A status gRPC made up itself (no ``ErrorInfo``): the server could not be reached, the
    connection failed, the deadline passed. ``code`` says which."""

    retryable = True


class MessageTooLarge(KeywardError):
    """``OUT_OF_RANGE``: the request message is over the server's transport limit (rejected
    before decoding, so it has no reason). Use ``encrypt_stream`` for large payloads."""


class IncompleteMessage(KeywardError):
    """A ``decrypt_stream`` ended before the message was complete. Every byte written to the
    writer before it was authentic, but the message is **incomplete**: discard or quarantine
    what was written (docs/streaming.md). ``cause`` is the error that ended the stream (``None``
    when the stream ended without its final frame); ``bytes_written`` counts what was written.
    """

    def __init__(self, message: str, *, cause: Optional[KeywardError], bytes_written: int) -> None:
        if cause is not None:
            super().__init__(
                message,
                code=cause.code,
                reason=cause.reason,
                metadata=cause.metadata,
                request_id=cause.request_id,
                field=cause.field,
            )
        else:
            super().__init__(message, code=grpc.StatusCode.DATA_LOSS)
        self.cause = cause
        self.bytes_written = bytes_written


def _all_reason_classes() -> Dict[str, Type[KeywardError]]:
    found: Dict[str, Type[KeywardError]] = {}
    stack = [KeywardError]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            stack.append(sub)
            if "REASON" in sub.__dict__ and sub.REASON is not None:
                found[sub.REASON] = sub
    return found


#: Every reason the client knows, and its class.
REASONS: Mapping[str, Type[KeywardError]] = _all_reason_classes()


# --- google.rpc details, decoded with a private pool ------------------------------------------


def _rpc_messages():
    f = descriptor_pb2.FileDescriptorProto()
    f.name = "keyward_client/google_rpc_subset.proto"
    f.package = "google.rpc"
    f.syntax = "proto3"
    T = descriptor_pb2.FieldDescriptorProto

    def add_fields(m, fields):
        for number, (fname, ftype, label, type_name) in enumerate(fields, start=1):
            if fname is None:
                continue
            fd = m.field.add()
            fd.name = fname
            fd.number = number
            fd.type = ftype
            fd.label = label
            if type_name:
                fd.type_name = type_name

    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED
    # google.protobuf.Any and Duration, under private names (same wire format).
    any_ = f.message_type.add()
    any_.name = "AnyLite"
    add_fields(any_, [("type_url", T.TYPE_STRING, opt, None), ("value", T.TYPE_BYTES, opt, None)])
    dur = f.message_type.add()
    dur.name = "DurationLite"
    add_fields(dur, [("seconds", T.TYPE_INT64, opt, None), ("nanos", T.TYPE_INT32, opt, None)])
    status = f.message_type.add()
    status.name = "Status"
    add_fields(
        status,
        [
            ("code", T.TYPE_INT32, opt, None),
            ("message", T.TYPE_STRING, opt, None),
            ("details", T.TYPE_MESSAGE, rep, ".google.rpc.AnyLite"),
        ],
    )
    info = f.message_type.add()
    info.name = "ErrorInfo"
    entry = info.nested_type.add()
    entry.name = "MetadataEntry"
    entry.options.map_entry = True
    add_fields(entry, [("key", T.TYPE_STRING, opt, None), ("value", T.TYPE_STRING, opt, None)])
    add_fields(
        info,
        [
            ("reason", T.TYPE_STRING, opt, None),
            ("domain", T.TYPE_STRING, opt, None),
            ("metadata", T.TYPE_MESSAGE, rep, ".google.rpc.ErrorInfo.MetadataEntry"),
        ],
    )
    retry = f.message_type.add()
    retry.name = "RetryInfo"
    add_fields(retry, [("retry_delay", T.TYPE_MESSAGE, opt, ".google.rpc.DurationLite")])
    violation = f.message_type.add()
    violation.name = "FieldViolation"
    add_fields(
        violation,
        [("field", T.TYPE_STRING, opt, None), ("description", T.TYPE_STRING, opt, None)],
    )
    bad = f.message_type.add()
    bad.name = "BadRequest"
    add_fields(bad, [("field_violations", T.TYPE_MESSAGE, rep, ".google.rpc.FieldViolation")])
    req = f.message_type.add()
    req.name = "RequestInfo"
    add_fields(
        req,
        [("request_id", T.TYPE_STRING, opt, None), ("serving_data", T.TYPE_STRING, opt, None)],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"google.rpc.{name}"))
        for name in ("Status", "ErrorInfo", "RetryInfo", "BadRequest", "RequestInfo")
    }


_RPC = _rpc_messages()
_TYPE_PREFIX = "type.googleapis.com/google.rpc."


def _details(trailers) -> Tuple[Optional[str], Dict[str, str], Optional[str], Optional[str], Optional[float]]:
    """(reason, metadata, request_id, field, retry_delay) from grpc-status-details-bin."""
    raw = None
    for key, value in trailers or ():
        if key == "grpc-status-details-bin":
            raw = value
            break
    if raw is None:
        return None, {}, None, None, None
    status = _RPC["Status"]()
    try:
        status.ParseFromString(raw)
    except Exception:  # a malformed detail is no reason to lose the status itself
        return None, {}, None, None, None
    reason, metadata, request_id, field, retry = None, {}, None, None, None
    for any_ in status.details:
        if not any_.type_url.startswith(_TYPE_PREFIX):
            continue
        kind = any_.type_url[len(_TYPE_PREFIX) :]
        cls = _RPC.get(kind)
        if cls is None or kind == "Status":
            continue
        detail = cls()
        try:
            detail.ParseFromString(any_.value)
        except Exception:
            continue
        if kind == "ErrorInfo" and detail.domain == ERROR_DOMAIN:
            reason, metadata = detail.reason, dict(detail.metadata)
        elif kind == "RequestInfo":
            request_id = detail.request_id or None
        elif kind == "BadRequest" and detail.field_violations:
            field = detail.field_violations[0].field
        elif kind == "RetryInfo":
            retry = detail.retry_delay.seconds + detail.retry_delay.nanos / 1e9
    return reason, metadata, request_id, field, retry


def _make(
    code: grpc.StatusCode,
    message: str,
    reason: Optional[str],
    metadata: Dict[str, str],
    request_id: Optional[str],
    field: Optional[str],
    retry_delay: Optional[float],
) -> KeywardError:
    if reason is not None:
        cls: Type[KeywardError] = REASONS.get(reason, KeywardError)
    elif code == grpc.StatusCode.OUT_OF_RANGE:
        cls = MessageTooLarge
    elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        cls = TransportError
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        cls = Unauthenticated
    elif code == grpc.StatusCode.PERMISSION_DENIED:
        cls = PermissionDenied
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # e.g. a response over the client's receive limit: nothing the server said to retry.
        cls = KeywardError
    else:
        cls = KeywardError
    return cls(
        message,
        code=code,
        reason=reason,
        metadata=metadata,
        request_id=request_id,
        field=field,
        retry_delay=retry_delay,
    )


def error_from_rpc(err: grpc.RpcError) -> KeywardError:
    """The typed error for a failed call (sync or asyncio)."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    message = err.details() if callable(getattr(err, "details", None)) else str(err)
    trailers = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else None
    reason, metadata, request_id, field, retry = _details(trailers)
    return _make(code or grpc.StatusCode.UNKNOWN, message or "", reason, metadata, request_id, field, retry)


_CODES_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def error_from_item(item_error) -> KeywardError:
    """The typed error of one batch item (``BatchItemError``: code number, reason, message)."""
    code = _CODES_BY_NUMBER.get(item_error.code, grpc.StatusCode.UNKNOWN)
    return _make(code, item_error.message, item_error.reason or None, {}, None, None, None)
