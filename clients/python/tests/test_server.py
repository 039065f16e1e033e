"""The sync client against the real `keyward` binary (development mode, local key)."""

from __future__ import annotations

import concurrent.futures
import io
import subprocess
import threading
import tracemalloc

import grpc
import pytest

from conftest import Server, keyward_bin, new_tenant_id

import keyward_client
from keyward_client import NO_RETRY, Client, Justification, Purpose, errors
from keyward_client._gen.keyward.v1 import keyward_pb2 as pb
from keyward_client._gen.keyward.v1 import keyward_pb2_grpc as pb_grpc

CTX = {"conversation": "42"}
LIMIT = (1 << 20) + 64 * 1024  # the default server's message limit


def test_round_trip(client, tenant):
    sealed = client.encrypt(tenant, b"hello", context=CTX, scope="conversation-42")
    assert len(sealed.dek_id) == 32 and sealed.envelope != b"hello"
    assert client.decrypt(tenant, sealed.envelope, context=CTX) == b"hello"
    # Justifications are accepted on every data-path call.
    j = Justification(Purpose.MODEL_INFERENCE, "ticket-7")
    sealed = client.encrypt(tenant, b"", context={}, justification=j)
    assert client.decrypt(tenant, sealed.envelope, context={}, justification=j) == b""


def test_admin_helpers(client, tenant):
    t = client.get_tenant(tenant)
    assert t.tenant_id == tenant and t.active_key.key_ref == "default"
    t = client.set_tenant_policy(tenant, cache_ttl_seconds=60)
    assert t.policy.cache_ttl_seconds == 60
    assert client.revoke_key(tenant, reason="test").active_key.state == pb.KEK_STATE_REVOKED
    assert client.restore_key(tenant, reason="test").active_key.state != pb.KEK_STATE_REVOKED
    key = client.audit_public_key()
    assert key.public_key.startswith("keyward-audit-ed25519:")
    out = io.BytesIO()
    n = client.export_audit(out)
    assert n == len(out.getvalue()) > 0 and tenant.encode() in out.getvalue()


# --- each error type from a real server condition ---------------------------------------------


def test_key_revoked(client, tenant):
    sealed = client.encrypt(tenant, b"x", context=CTX)
    client.revoke_key(tenant, reason="break glass")
    for call in (
        lambda: client.encrypt(tenant, b"x", context=CTX),
        lambda: client.decrypt(tenant, sealed.envelope, context=CTX),
    ):
        with pytest.raises(errors.KeyRevoked) as e:
            call()
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.metadata["state"] == "revoked" and e.value.metadata["source"] == "explicit"
        assert int(e.value.metadata["since_ms"]) > 0


def test_decrypt_failed_on_wrong_context(client, tenant):
    sealed = client.encrypt(tenant, b"x", context=CTX)
    with pytest.raises(errors.DecryptFailed) as e:
        client.decrypt(tenant, sealed.envelope, context={"conversation": "43"})
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and e.value.reason == "DECRYPT_FAILED"


def test_tenant_not_found(client):
    with pytest.raises(errors.TenantNotFound) as e:
        client.encrypt(new_tenant_id(), b"x", context=CTX)
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_invalid_argument_names_the_field(client):
    with pytest.raises(errors.InvalidArgument) as e:
        client.encrypt("Not A Tenant!", b"x", context=CTX)
    assert type(e.value) is errors.InvalidArgument and e.value.field == "tenant_id"
    with pytest.raises(errors.InvalidArgument) as e:
        client.encrypt("acme", b"x", context={"keyward:reserved": "1"})
    assert e.value.field == "encryption_context"


def test_payload_too_large_and_message_too_large(client, tenant):
    with pytest.raises(errors.PayloadTooLarge) as e:
        client.encrypt(tenant, b"x" * ((1 << 20) + 1), context=CTX)
    assert e.value.metadata["limit_bytes"] == str(1 << 20) and "EncryptStream" in e.value.message
    with pytest.raises(errors.MessageTooLarge) as e:
        client.encrypt(tenant, b"x" * (2 << 20), context=CTX)
    assert e.value.code == grpc.StatusCode.OUT_OF_RANGE


def test_other_reasons(client, tenant):
    with pytest.raises(errors.TenantAlreadyExists):
        client.create_tenant(tenant)
    bare = new_tenant_id()
    client.create_tenant(bare)
    with pytest.raises(errors.NoKeyRegistered):
        client.encrypt(bare, b"x", context=CTX)
    sealed = client.encrypt(tenant, b"x", context=CTX)
    with pytest.raises(errors.MalformedEnvelope):
        client.decrypt(tenant, sealed.envelope[:20], context=CTX)
    with pytest.raises(errors.TenantMismatch):
        client.decrypt(bare, sealed.envelope, context=CTX)
    framed = io.BytesIO()
    client.encrypt_stream(tenant, io.BytesIO(b"y"), framed, context=CTX)
    with pytest.raises(errors.UnsupportedEnvelope):
        client.decrypt(tenant, framed.getvalue(), context=CTX)
    with pytest.raises(ValueError):
        client.register_key(tenant)


def test_caller_concurrency_limit(tmp_path):
    """A server allowing one RPC in flight per caller: a stream held open makes the next call
    RESOURCE_EXHAUSTED / CALLER_CONCURRENCY_LIMIT (not retried here: NO_RETRY)."""
    s = Server(tmp_path / "data", {"KEYWARD_LIMITS__MAX_IN_FLIGHT_PER_CALLER": "1"})
    try:
        with Client(s.addr, retry=NO_RETRY) as kw:
            stub = pb_grpc.CryptoServiceStub(kw.channel)
            release = threading.Event()

            def held():
                # No message yet: the call is open (and counted) while the server waits for one.
                release.wait(20)
                yield pb.DecryptStreamRequest(tenant_id="acme")

            calls = [stub.DecryptStream(held())]
            try:
                # The stream counts once the server has it; the next call is refused. With one
                # slot, whichever call reaches the server first takes it: when a GetTenant won the
                # race, the stream itself was refused (it is done), so it is opened again.
                for _ in range(100):
                    if calls[-1].done():
                        assert calls[-1].code() == grpc.StatusCode.RESOURCE_EXHAUSTED, calls[-1].code()
                        calls.append(stub.DecryptStream(held()))
                        threading.Event().wait(0.05)
                    try:
                        kw.get_tenant("acme")
                    except errors.CallerConcurrencyLimit as e:
                        assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.metadata["limit"] == "1"
                        break
                    except errors.TenantNotFound:
                        threading.Event().wait(0.05)
                else:
                    pytest.fail("no CALLER_CONCURRENCY_LIMIT while a stream was held open")
            finally:
                release.set()
                for call in calls:
                    call.cancel()
    finally:
        s.stop()


def test_justification_required_and_purpose_not_allowed(client, tenant):
    sealed = client.encrypt(tenant, b"x", context=CTX)
    client.set_tenant_policy(tenant, decrypt_purposes=[Purpose.MODEL_INFERENCE])
    with pytest.raises(errors.JustificationRequired) as e:
        client.decrypt(tenant, sealed.envelope, context=CTX)
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(errors.PurposeNotAllowed):
        client.decrypt(tenant, sealed.envelope, context=CTX, justification=Justification(Purpose.DATA_EXPORT))
    ok = client.decrypt(tenant, sealed.envelope, context=CTX, justification=Justification(Purpose.MODEL_INFERENCE, "t-1"))
    assert ok == b"x"
    results = client.decrypt_many(tenant, [sealed.envelope], context=CTX)
    assert isinstance(results[0].error, errors.JustificationRequired)


# --- batches ---------------------------------------------------------------------------------


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self):
        self.calls = []

    def intercept_unary_unary(self, continuation, details, request):
        self.calls.append((details.method, len(getattr(request, "items", ()))))
        return continuation(details, request)


def counting(kw: Client) -> CountingInterceptor:
    counter = CountingInterceptor()
    kw._crypto = pb_grpc.CryptoServiceStub(grpc.intercept_channel(kw.channel, counter))
    return counter


def test_batches_split_at_1000_items(client, tenant):
    raw = pb_grpc.CryptoServiceStub(client.channel)
    items = [b"item %d" % i for i in range(2001)]
    # The limit is real: one call with 2001 items is refused.
    with pytest.raises(grpc.RpcError) as e:
        raw.EncryptBatch(pb.EncryptBatchRequest(tenant_id=tenant, items=[pb.EncryptBatchItem(plaintext=p) for p in items]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    counter = counting(client)
    sealed = client.encrypt_many(tenant, items, context=CTX)
    assert [n for _, n in counter.calls] == [1000, 1000, 1]
    opened = client.decrypt_many(tenant, [r.unwrap().envelope for r in sealed], context=CTX)
    assert [r.unwrap() for r in opened] == items


def test_batches_split_under_the_message_limit(client, tenant):
    raw = pb_grpc.CryptoServiceStub(client.channel)
    # 1000 items of 1 KiB: the request fits the message limit, the response's worst case
    # (envelope + framing per item) does not, and the server refuses the batch.
    small = [b"%04d" % i + b"k" * 1020 for i in range(1000)]
    with pytest.raises(grpc.RpcError) as e:
        raw.EncryptBatch(pb.EncryptBatchRequest(tenant_id=tenant, items=[pb.EncryptBatchItem(plaintext=p) for p in small]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "smaller batches" in e.value.details()
    counter = counting(client)
    sealed = client.encrypt_many(tenant, small, context=CTX)
    per_item = 1024 + 102 + len(tenant) + 64
    first = (LIMIT - 4096) // per_item
    assert [n for _, n in counter.calls] == [first, 1000 - first]
    opened = client.decrypt_many(tenant, [r.unwrap().envelope for r in sealed], context=CTX)
    assert [r.unwrap() for r in opened] == small
    # 2 MB of 400 kB items: one request would be over the transport limit (OUT_OF_RANGE).
    items = [bytes([i]) * 400_000 for i in range(5)]
    with pytest.raises(grpc.RpcError) as e:
        raw.EncryptBatch(pb.EncryptBatchRequest(tenant_id=tenant, items=[pb.EncryptBatchItem(plaintext=p) for p in items[:3]]))
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
    counter = counting(client)
    sealed = client.encrypt_many(tenant, items, context=CTX)
    assert [n for _, n in counter.calls] == [2, 2, 1]
    opened = client.decrypt_many(tenant, [r.unwrap().envelope for r in sealed], context=CTX)
    assert [r.unwrap() for r in opened] == items
    # An item larger than the server's plaintext limit fails alone, with the server's error.
    mixed = client.encrypt_many(tenant, [b"a", b"x" * ((1 << 20) + 1), b"b"], context=CTX)
    assert mixed[0].ok and mixed[2].ok and isinstance(mixed[1].error, errors.PayloadTooLarge)


def test_batch_items_fail_one_by_one(client, tenant):
    good = client.encrypt(tenant, b"good", context=CTX).envelope
    other = client.encrypt(tenant, b"other", context={"conversation": "43"}).envelope
    results = client.decrypt_many(tenant, [(good, CTX), (other, CTX), (good[:10], CTX)])
    assert results[0].unwrap() == b"good"
    assert isinstance(results[1].error, errors.DecryptFailed)
    assert isinstance(results[2].error, errors.MalformedEnvelope)
    with pytest.raises(errors.DecryptFailed):
        results[1].unwrap()
    # Per-item context and scope.
    sealed = client.encrypt_many(tenant, [(b"a", {"k": "1"}, "s1"), (b"b", {"k": "2"})])
    assert client.decrypt(tenant, sealed[0].unwrap().envelope, context={"k": "1"}) == b"a"
    assert client.decrypt(tenant, sealed[1].unwrap().envelope, context={"k": "2"}) == b"b"
    # A request invalid as a whole raises.
    with pytest.raises(errors.InvalidArgument):
        client.encrypt_many("Bad Tenant", [b"x"], context=CTX)


def test_thread_safety_under_concurrent_use(client, tenant):
    def work(n):
        out = []
        for i in range(25):
            pt = b"%d-%d" % (n, i)
            ctx = {"thread": str(n), "i": str(i)}
            sealed = client.encrypt(tenant, pt, context=ctx, scope=f"s{n % 3}")
            out.append(client.decrypt(tenant, sealed.envelope, context=ctx) == pt)
        batch = client.encrypt_many(tenant, [b"b%d" % n] * 10, context={"n": str(n)})
        opened = client.decrypt_many(tenant, [r.unwrap().envelope for r in batch], context={"n": str(n)})
        out.extend(r.unwrap() == b"b%d" % n for r in opened)
        return out

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = [ok for f in [pool.submit(work, n) for n in range(16)] for ok in f.result()]
    assert len(results) == 16 * 35 and all(results)


# --- streams ---------------------------------------------------------------------------------


class Lazy(io.RawIOBase):
    """A reader of `size` pseudo-random bytes made on demand (nothing held)."""

    def __init__(self, size: int):
        self.left = size
        self.n = 0

    def readable(self):
        return True

    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        self.n += 1
        return bytes([self.n % 251]) * n


class Sink:
    def __init__(self):
        self.size = 0

    def write(self, b):
        self.size += len(b)


def test_stream_round_trip(client, tenant):
    data = bytes(range(256)) * 12_000  # 3 MB: over the unary limit
    envelope = io.BytesIO()
    r = client.encrypt_stream(tenant, io.BytesIO(data), envelope, context=CTX, scope="docs", frame_size=16 * 1024)
    assert r.bytes_in == len(data) and r.bytes_out == len(envelope.getvalue()) and len(r.dek_id) == 32
    out = io.BytesIO()
    r = client.decrypt_stream(tenant, io.BytesIO(envelope.getvalue()), out, context=CTX, chunk_size=10_000)
    assert out.getvalue() == data and r.bytes_out == len(data)
    # An empty message is a message too.
    envelope = io.BytesIO()
    client.encrypt_stream(tenant, io.BytesIO(b""), envelope, context=CTX)
    out = io.BytesIO()
    client.decrypt_stream(tenant, io.BytesIO(envelope.getvalue()), out, context=CTX)
    assert out.getvalue() == b""


def test_stream_memory_is_bounded(client, tenant):
    """32 MiB through encrypt_stream with Python's allocations traced: the peak stays a few
    chunks, not the message."""
    size = 32 << 20
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        r = client.encrypt_stream(tenant, Lazy(size), Sink(), context=CTX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.bytes_in == size and r.bytes_out > size
    assert peak < 8 << 20, f"peak {peak} bytes of Python memory for a {size}-byte stream"


def test_truncated_stream_is_incomplete(client, tenant):
    data = b"z" * (300 * 1024)
    envelope = io.BytesIO()
    client.encrypt_stream(tenant, io.BytesIO(data), envelope, context=CTX, frame_size=16 * 1024)
    cut = envelope.getvalue()[: len(envelope.getvalue()) // 2]
    out = io.BytesIO()
    with pytest.raises(errors.IncompleteMessage) as e:
        client.decrypt_stream(tenant, io.BytesIO(cut), out, context=CTX)
    assert isinstance(e.value.cause, errors.MalformedEnvelope)
    # What was written is authentic (a prefix of the message) but incomplete.
    assert 0 < e.value.bytes_written == len(out.getvalue()) < len(data)
    assert data.startswith(out.getvalue())
    # A stream refused at the start raises the typed error itself (nothing was written).
    with pytest.raises(errors.DecryptFailed):
        client.decrypt_stream(tenant, io.BytesIO(envelope.getvalue()), io.BytesIO(), context={"other": "1"})
    with pytest.raises(errors.TenantNotFound):
        client.encrypt_stream(new_tenant_id(), io.BytesIO(b"x"), io.BytesIO(), context=CTX)


def test_transport_error_when_unreachable():
    with Client("127.0.0.1:1", timeout=2, retry=NO_RETRY) as kw:
        with pytest.raises(errors.TransportError) as e:
            kw.encrypt("acme", b"x", context=CTX)
    assert e.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and e.value.reason is None


def test_context_is_required(client, tenant):
    with pytest.raises(TypeError):
        client.encrypt(tenant, b"x", context=None)  # type: ignore[arg-type]
    assert isinstance(keyward_client.KeyRevoked("m"), keyward_client.KeywardError)


def keyward_cli(server, *args):
    subprocess.run([str(keyward_bin()), *args, "--data-dir", str(server.data_dir)], check=True, capture_output=True)


def test_key_errors_at_registration(client, server):
    t = new_tenant_id()
    client.create_tenant(t)
    with pytest.raises(errors.KeyNotFound) as e:
        client.register_key(t, local_key="no-such-key")
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    # A disabled key: the KEK refuses the registration's live check.
    name = "k" + t.replace("-", "")[-10:]
    keyward_cli(server, "key", "create", name)
    keyward_cli(server, "key", "disable", name)
    with pytest.raises(errors.KeyRefused) as e:
        client.register_key(t, local_key=name)
    assert e.value.metadata.get("provider_error") == "refused"
    # A provider this server does not run.
    with pytest.raises(errors.ProviderNotConfigured) as e:
        client.register_key(t, gcp_crypto_key="projects/p/locations/global/keyRings/r/cryptoKeys/k")
    assert e.value.metadata.get("remediation")


def test_data_key_shredded(client, tenant):
    sealed = client.encrypt(tenant, b"gone", context=CTX, scope="conversation-9")
    pb_grpc.TenantServiceStub(client.channel).ShredScope(
        pb.ShredScopeRequest(tenant_id=tenant, scope="conversation-9", reason="test", requested_by="pytest")
    )
    with pytest.raises(errors.DataKeyShredded) as e:
        client.decrypt(tenant, sealed.envelope, context=CTX)
    assert e.value.metadata["shredded_at"]


def test_malformed_message(client):
    """Invalid UTF-8 in a string field (tenant_id), sent as raw bytes."""
    encrypt = client.channel.unary_unary(
        "/keyward.v1.CryptoService/Encrypt",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.EncryptResponse.FromString,
    )
    with pytest.raises(errors.MalformedMessage) as e:
        client._call(encrypt, b"\x0a\x02\xff\xfe")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
