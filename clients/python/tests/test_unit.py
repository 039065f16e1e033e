"""Tests that need no server: the reason table, the generated code, batch splitting, retries."""

from __future__ import annotations

import pathlib
import random
import re
import subprocess
import sys
import tempfile

import grpc
import pytest

from conftest import CLIENT_ROOT, REPO

import keyward_client
from keyward_client import RetryPolicy, errors
from keyward_client import _common as c
from keyward_client._gen.keyward.v1 import keyward_pb2 as pb


def server_reasons() -> set:
    """Every reason in `ServiceError::reason` (crates/keyward-server/src/error.rs) and in the
    table of docs/errors.md, read from the files themselves."""
    source = (REPO / "crates" / "keyward-server" / "src" / "error.rs").read_text()
    body = re.search(r"pub fn reason\(&self\) -> &'static str \{(.*?)\n    \}\n", source, re.S)
    assert body, "ServiceError::reason not found in error.rs"
    reasons = set(re.findall(r'=> "([A-Z_]+)"', body.group(1)))
    # The reason table: the first table of the page (the "Limits" one after it has no reasons).
    table = (REPO / "docs" / "errors.md").read_text().split("\n## ")[0]
    for row in table.splitlines():
        cells = [x.strip() for x in row.split("|")]
        if len(cells) > 3 and re.fullmatch(r"`[A-Z_]+`", cells[3] or ""):
            reasons.add(cells[3].strip("`"))
    return reasons


def test_client_knows_every_reason_the_server_defines():
    reasons = server_reasons()
    # The parse works: the table and the match name these (a broken regex would find nothing).
    assert {"KEY_REVOKED", "REKEY_BLOCKED", "DECRYPT_FAILED", "CALLER_CONCURRENCY_LIMIT", "MALFORMED_MESSAGE"} <= reasons
    missing = reasons - set(errors.REASONS)
    assert not missing, f"reasons without an error class in keyward_client.errors: {sorted(missing)}"


def test_reason_classes_are_distinct_and_exported():
    for reason, cls in errors.REASONS.items():
        assert cls.REASON == reason
        assert issubclass(cls, keyward_client.KeywardError)
        assert getattr(keyward_client, cls.__name__) is cls


def test_purpose_matches_the_generated_enum():
    generated = {name[len("PURPOSE_"):]: value for name, value in pb.Purpose.items()}
    assert generated == {p.name: p.value for p in keyward_client.Purpose}


def test_generated_code_is_up_to_date():
    """Regenerates the stubs into a temp dir with tools/generate.py (pinned grpcio-tools) and
    compares them with the checked-in files byte for byte."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(CLIENT_ROOT / "tools" / "generate.py"), "--out", tmp], check=True)
        sys.path.insert(0, str(CLIENT_ROOT / "tools"))
        try:
            import generate
        finally:
            sys.path.pop(0)
        for rel in generate.OUTPUTS:
            fresh = (pathlib.Path(tmp) / rel).read_bytes()
            checked_in = (CLIENT_ROOT / "src" / rel).read_bytes()
            assert fresh == checked_in, f"{rel} is stale: run python clients/python/tools/generate.py"


def test_split_batches_respects_item_count_and_size():
    limit = (1 << 20) + 65536
    # 2500 small items: 1000 + 1000 + 500.
    batches, alone = c.split_batches(c.encrypt_costs("acme", [(b"x", {}, "")] * 2500), limit)
    assert [len(b) for b in batches] == [1000, 1000, 500] and alone == []
    # 1 KiB items: the worst-case response (envelope + framing) decides before the count.
    batches, _ = c.split_batches(c.encrypt_costs("acme", [(b"x" * 1024, {}, "")] * 2000), limit)
    assert all(sum(1024 + 102 + 4 + 64 for _ in b) <= limit for b in batches)
    assert len(batches[0]) < 1000
    # An item larger than any batch goes alone (the single call reports the server's error).
    batches, alone = c.split_batches(c.encrypt_costs("acme", [(b"a", {}, ""), (b"x" * limit, {}, ""), (b"b", {}, "")]), limit)
    assert batches == [[0, 2]] and alone == [1]
    # Order is kept.
    flat = [i for b in c.split_batches(c.decrypt_costs([(b"e" * 500_000, {})] * 7), limit)[0] for i in b]
    assert flat == list(range(7))


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, reason=None, retry_delay=None):
        self._code, self._reason = code, reason
        self._trailers = ()
        if reason:
            from keyward_client.errors import _RPC

            info = _RPC["ErrorInfo"](reason=reason, domain="keyward.v1")
            status = _RPC["Status"](code=code.value[0], message="m")
            d = status.details.add()
            d.type_url = "type.googleapis.com/google.rpc.ErrorInfo"
            d.value = info.SerializeToString()
            if retry_delay is not None:
                r = _RPC["RetryInfo"]()
                r.retry_delay.seconds = 0
                r.retry_delay.nanos = int(retry_delay * 1e9)
                d = status.details.add()
                d.type_url = "type.googleapis.com/google.rpc.RetryInfo"
                d.value = r.SerializeToString()
            self._trailers = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self):
        return self._code

    def details(self):
        return "m"

    def trailing_metadata(self):
        return self._trailers


def calls_until(errors_then_ok):
    seen = []

    def method(request, timeout=None):
        seen.append(timeout)
        if len(seen) <= len(errors_then_ok):
            raise errors_then_ok[len(seen) - 1]
        return "ok"

    return method, seen


@pytest.mark.parametrize(
    "code,reason",
    [
        (grpc.StatusCode.FAILED_PRECONDITION, "KEY_REVOKED"),
        (grpc.StatusCode.INVALID_ARGUMENT, "DECRYPT_FAILED"),
        (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
        (grpc.StatusCode.FAILED_PRECONDITION, "KEY_REFUSED"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, None),
    ],
)
def test_never_retried(code, reason):
    client = keyward_client.Client("127.0.0.1:1", retry=RetryPolicy(max_attempts=5, initial_backoff=0.001))
    method, seen = calls_until([FakeRpcError(code, reason)])
    with pytest.raises(errors.KeywardError) as e:
        client._call(method, None)
    assert len(seen) == 1 and e.value.reason == reason


@pytest.mark.parametrize(
    "code,reason,cls",
    [
        (grpc.StatusCode.UNAVAILABLE, "KMS_UNAVAILABLE", errors.KmsUnavailable),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "CALLER_CONCURRENCY_LIMIT", errors.CallerConcurrencyLimit),
        (grpc.StatusCode.ABORTED, "CONFLICT", errors.Conflict),
        (grpc.StatusCode.UNAVAILABLE, None, errors.TransportError),
    ],
)
def test_retried_with_bounded_attempts(code, reason, cls):
    client = keyward_client.Client("127.0.0.1:1", retry=RetryPolicy(max_attempts=3, initial_backoff=0.001))
    method, seen = calls_until([FakeRpcError(code, reason)] * 2)
    assert client._call(method, None) == "ok" and len(seen) == 3
    method, seen = calls_until([FakeRpcError(code, reason)] * 5)
    with pytest.raises(cls):
        client._call(method, None)
    assert len(seen) == 3


def test_retry_waits_for_the_server_hint_within_the_deadline():
    policy = RetryPolicy(max_attempts=10)
    hinted = errors.error_from_rpc(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "KMS_UNAVAILABLE", retry_delay=0.3))
    assert isinstance(hinted, errors.KmsUnavailable) and hinted.retry_delay == pytest.approx(0.3)
    delays = [policy.backoff(1, hinted, random.Random(i)) for i in range(50)]
    assert min(delays) >= 0.3 and max(delays) <= 0.36 and len(set(delays)) > 1
    # The overall deadline: a retry that would start after it is not made.
    client = keyward_client.Client("127.0.0.1:1", timeout=0.5, retry=policy)
    method, seen = calls_until([FakeRpcError(grpc.StatusCode.UNAVAILABLE, "KMS_UNAVAILABLE", retry_delay=0.3)] * 10)
    with pytest.raises(errors.KmsUnavailable):
        client._call(method, None)
    assert len(seen) == 2
    assert seen[0] <= 0.5 and seen[1] < seen[0] - 0.29  # each attempt gets what is left


def test_batch_item_errors_are_typed():
    e = errors.error_from_item(pb.BatchItemError(code=9, reason="KEY_REVOKED", message="revoked"))
    assert isinstance(e, errors.KeyRevoked) and e.code == grpc.StatusCode.FAILED_PRECONDITION
