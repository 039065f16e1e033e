"""keyward-client: the Python client of Keyward, the customer-managed-key encryption service.

    from keyward_client import Client

    with Client("127.0.0.1:50051") as kw:
        sealed = kw.encrypt("acme", b"hello", context={"conversation": "42"})
        assert kw.decrypt("acme", sealed.envelope, context={"conversation": "42"}) == b"hello"

``keyward_client.aio.AsyncClient`` is the asyncio variant; ``keyward_client.errors`` has one
exception class per stable reason of docs/errors.md; ``keyward_client.pb`` is the generated
protobuf module (the admin helpers return its ``Tenant`` messages).
"""

from . import errors
from ._client import Client
from ._gen.keyward.v1 import keyward_pb2 as pb
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
from .aio import AsyncClient
from .errors import *  # noqa: F401,F403  (the error classes, also at the top level)
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = [
    "Client",
    "AsyncClient",
    "TlsConfig",
    "RetryPolicy",
    "NO_RETRY",
    "Encrypted",
    "ItemResult",
    "StreamResult",
    "Justification",
    "Purpose",
    "errors",
    "pb",
    *_errors_all,
]
