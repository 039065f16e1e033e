"""What the sync and asyncio clients share: request building and batch splitting."""

from __future__ import annotations

from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

from ._gen.keyward.v1 import keyward_pb2 as pb
from ._types import Justification

#: The server's default ``max_plaintext_bytes`` (1 MiB); its message limit is that + 64 KiB.
DEFAULT_MAX_PLAINTEXT_BYTES = 1 << 20
MESSAGE_OVERHEAD_BYTES = 64 * 1024
#: Items per batch call (the server's bound).
MAX_BATCH_ITEMS = 1000
# The server's worst-case accounting of a batch response (crates/keyward-server/src/api/
# crypto.rs, check_response_size): each item counts max(its envelope or plaintext, 576 bytes of
# error) + 64 bytes of framing; an envelope of N plaintext bytes for tenant T is 102 + |T| + N
# bytes (keyward_envelope::sealed_len, docs/envelope-format.md).
ITEM_ERROR_MAX_BYTES = 576
ITEM_FRAMING_BYTES = 64
ENVELOPE_OVERHEAD = 102
# Room kept in each request for the tenant id, the justification and protobuf's own framing.
REQUEST_SLACK = 4096
#: Bytes per message of a stream: as the CLI (docs/streaming.md), fits every server's limit.
STREAM_CHUNK = 256 * 1024


def justification_pb(j: Optional[Justification]):
    if j is None:
        return None
    return pb.Justification(purpose=int(j.purpose), reference=j.reference)


def context_dict(context: Optional[Mapping[str, str]]) -> Mapping[str, str]:
    if context is None:
        raise TypeError("context= is required: the encryption context bound to the envelope (may be {})")
    return context


def _context_len(context: Mapping[str, str]) -> int:
    # Each map entry: tag + length + key field + value field.
    return sum(len(k.encode()) + len(v.encode()) + 12 for k, v in context.items())


def split_batches(
    costs: Sequence[Tuple[int, int]], limit: int, max_items: int = MAX_BATCH_ITEMS
) -> Tuple[List[List[int]], List[int]]:
    """Groups item indexes into batches whose request cost and worst-case response cost both
    fit ``limit``, with at most ``max_items`` each, in order. ``costs[i]`` is (request bytes,
    response bound). Returns (batches, alone): items too large for any batch, to be sent as
    single calls (which then fail with the server's own error, e.g. PAYLOAD_TOO_LARGE)."""
    batches: List[List[int]] = []
    alone: List[int] = []
    current: List[int] = []
    req_sum = resp_sum = 0
    budget = limit - REQUEST_SLACK
    for i, (req, resp) in enumerate(costs):
        if req > budget or resp > budget:
            alone.append(i)
            continue
        if current and (len(current) >= max_items or req_sum + req > budget or resp_sum + resp > budget):
            batches.append(current)
            current, req_sum, resp_sum = [], 0, 0
        current.append(i)
        req_sum += req
        resp_sum += resp
    if current:
        batches.append(current)
    return batches, alone


def encrypt_costs(tenant: str, items: Sequence[Tuple[bytes, Mapping[str, str], str]]) -> List[Tuple[int, int]]:
    t = len(tenant.encode())
    out = []
    for plaintext, context, scope in items:
        req = len(plaintext) + _context_len(context) + len(scope) + 16
        resp = max(ENVELOPE_OVERHEAD + t + len(plaintext), ITEM_ERROR_MAX_BYTES) + ITEM_FRAMING_BYTES
        out.append((req, resp))
    return out


def decrypt_costs(items: Sequence[Tuple[bytes, Mapping[str, str]]]) -> List[Tuple[int, int]]:
    out = []
    for envelope, context in items:
        req = len(envelope) + _context_len(context) + 16
        resp = max(len(envelope), ITEM_ERROR_MAX_BYTES) + ITEM_FRAMING_BYTES
        out.append((req, resp))
    return out


def normalize_encrypt_items(items: Iterable, context, scope) -> List[Tuple[bytes, Mapping[str, str], str]]:
    """Items of ``encrypt_many``: plaintext bytes (with the call's ``context``/``scope``), or
    (plaintext, context) or (plaintext, context, scope) tuples."""
    out = []
    for item in items:
        if isinstance(item, (bytes, bytearray, memoryview)):
            out.append((bytes(item), context_dict(context), scope or ""))
        else:
            pt, ctx, *rest = item
            out.append((bytes(pt), ctx, (rest[0] if rest else scope) or ""))
    return out


def normalize_decrypt_items(items: Iterable, context) -> List[Tuple[bytes, Mapping[str, str]]]:
    """Items of ``decrypt_many``: envelope bytes (with the call's ``context``), or
    (envelope, context) tuples."""
    out = []
    for item in items:
        if isinstance(item, (bytes, bytearray, memoryview)):
            out.append((bytes(item), context_dict(context)))
        else:
            env, ctx = item
            out.append((bytes(env), ctx))
    return out


def channel_options(max_plaintext_bytes: int):
    limit = max_plaintext_bytes + MESSAGE_OVERHEAD_BYTES
    return [
        # A response is at most the server's message limit; grpcio's default receive limit is
        # 4 MiB, below what a server with a larger max_plaintext_bytes may send.
        ("grpc.max_receive_message_length", max(limit + MESSAGE_OVERHEAD_BYTES, 4 << 20)),
        ("grpc.max_send_message_length", -1),
    ]
