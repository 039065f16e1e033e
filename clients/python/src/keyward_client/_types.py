"""Small value types of the public API."""

from __future__ import annotations

import enum
import os
import random
from dataclasses import dataclass
from typing import Generic, Optional, TypeVar, Union

from .errors import (
    CallerConcurrencyLimit,
    Conflict,
    KeywardError,
    KmsUnavailable,
    TransportError,
)

import grpc

PathOrPem = Union[str, bytes, "os.PathLike[str]"]


class Purpose(enum.IntEnum):
    """Why the caller reads or writes the data (``keyward.v1.Purpose``; docs/justifications.md).
    tests/test_unit.py checks these against the generated enum."""

    UNSPECIFIED = 0
    MODEL_INFERENCE = 1
    CUSTOMER_SUPPORT = 2
    ABUSE_INVESTIGATION = 3
    LEGAL_HOLD = 4
    DATA_EXPORT = 5
    SYSTEM_MAINTENANCE = 6


@dataclass(frozen=True)
class Justification:
    """A declared reason for touching a tenant's data: a purpose and an optional reference the
    caller's organisation can trace back (a ticket id, a job name; at most 128 bytes of UTF-8,
    no control characters). Required on decrypts when the tenant's policy lists
    ``decrypt_purposes``."""

    purpose: Purpose
    reference: str = ""


@dataclass(frozen=True)
class Encrypted:
    """An envelope and the id of the data key that sealed it (32 lowercase hex)."""

    envelope: bytes
    dek_id: str


@dataclass(frozen=True)
class StreamResult:
    """What a stream moved: the data key (``encrypt_stream`` only), bytes read and written."""

    dek_id: Optional[str]
    bytes_in: int
    bytes_out: int


T = TypeVar("T")


@dataclass(frozen=True)
class ItemResult(Generic[T]):
    """One item's outcome in ``encrypt_many``/``decrypt_many``, in request order: ``value``
    when it succeeded, else ``error`` (what the single-item call would have raised)."""

    value: Optional[T] = None
    error: Optional[KeywardError] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> T:
        """The value, or raises the item's error."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


def _pem(value: Optional[PathOrPem]) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


@dataclass(frozen=True)
class TlsConfig:
    """Mutual TLS: the CA that signed the server's certificate, and this client's certificate
    and key (its identity: a SPIFFE ID or DNS name the server's identity mapping lists). Each is
    PEM bytes or a path to a PEM file. ``server_name`` overrides the name checked against the
    server's certificate (default: the target's host)."""

    ca: PathOrPem
    cert: Optional[PathOrPem] = None
    key: Optional[PathOrPem] = None
    server_name: Optional[str] = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TlsConfig: give both cert and key, or neither")
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca),
            private_key=_pem(self.key),
            certificate_chain=_pem(self.cert),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """When and how a call is retried.

    Retried: ``KMS_UNAVAILABLE`` (waiting at least the server's ``RetryInfo`` hint),
    ``CALLER_CONCURRENCY_LIMIT`` (``RESOURCE_EXHAUSTED``), ``CONFLICT`` (``ABORTED``: nothing
    changed) and ``UNAVAILABLE`` from the transport (server unreachable). Never retried:
    ``KEY_REVOKED``, ``KEY_REFUSED``, ``DECRYPT_FAILED``, ``PERMISSION_DENIED`` and every other
    reason: the same request would get the same answer. Backoff is exponential with full jitter,
    at most ``max_attempts`` attempts, all within the call's ``timeout`` (an overall deadline:
    a retry that could not start before it is not made).

    Which calls: the data-path calls (Encrypt, Decrypt, their batches) and the admin reads.
    Retrying Encrypt is safe only because a retried Encrypt just makes another envelope (the
    first attempt's, if the server produced one, is never seen and costs nothing but its data
    key's use count). Admin changes (create, register, revoke, restore) and streams are not
    retried.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def should_retry(self, error: KeywardError) -> bool:
        if isinstance(error, TransportError):
            return error.code == grpc.StatusCode.UNAVAILABLE
        return isinstance(error, (KmsUnavailable, CallerConcurrencyLimit, Conflict))

    def backoff(self, attempt: int, error: KeywardError, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (attempt counts from 1)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        delay = rng.uniform(0, ceiling)
        if error.retry_delay:
            # The server's hint is a floor; jitter above it spreads the retries of many clients.
            delay = error.retry_delay + rng.uniform(0, error.retry_delay * 0.2)
        return delay


NO_RETRY = RetryPolicy(max_attempts=1)

__all__ = [
    "Purpose",
    "Justification",
    "Encrypted",
    "StreamResult",
    "ItemResult",
    "TlsConfig",
    "RetryPolicy",
    "NO_RETRY",
]
