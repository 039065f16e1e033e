#!/usr/bin/env python3
"""Client drivers for `keyward-bench peers` (docs/benchmarks.md, "Peers").

Each subcommand runs a closed-loop load of 1 KiB encrypt + decrypt round trips with
`--concurrency` threads in this one Python process for `--seconds` (after a 0.5 s warm-up that
is not counted) and prints one JSON object on stdout:

    {"round_trips": N, "seconds": S, "round_trips_per_s": R, "p50_us": .., "p99_us": .., ...}

    peers.py esdk --kms-endpoint URL --key-arn ARN     AWS Encryption SDK, caching CMM, AWS KMS
    peers.py bao --bao PATH                            OpenBao Transit (starts `bao server -dev`)
    peers.py keyward --addr HOST:PORT --tenant ID --proto-dir DIR    Keyward through grpcio
    peers.py keyward-client --addr HOST:PORT --tenant ID --batch N   Keyward through keyward-client's
                                                       encrypt_many/decrypt_many (clients/python):
                                                       "round_trips" counts items, not calls

Installed by scripts/bench-peers-setup into target/bench-venv; not part of CI.
"""

import argparse
import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

PAYLOAD = bytes([0x42]) * 1024
WARM_UP = 0.5


def closed_loop(make_round_trip, concurrency, seconds):
    """Runs `concurrency` threads, each looping over its own `make_round_trip()` callable."""
    workers = [make_round_trip() for _ in range(concurrency)]
    start = time.perf_counter() + 0.05
    measure_from = start + WARM_UP
    end = measure_from + seconds
    latencies = []
    errors = []
    lock = threading.Lock()

    def run(round_trip):
        mine = []
        try:
            while True:
                now = time.perf_counter()
                if now >= end:
                    break
                if now < start:
                    time.sleep(start - now)
                    continue
                round_trip()
                if now >= measure_from:
                    mine.append(time.perf_counter() - now)
        except Exception as e:  # noqa: BLE001 - reported to the Rust side
            errors.append(repr(e))
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"round trip failed: {errors[0]}")
    latencies.sort()

    def pct(p):
        if not latencies:
            return 0
        return int(latencies[round((len(latencies) - 1) * p)] * 1e6)

    return {
        "round_trips": len(latencies),
        "seconds": seconds,
        "round_trips_per_s": len(latencies) / seconds,
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
        "concurrency": concurrency,
    }


def esdk(args):
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    # botocore's service-specific endpoint variable: the SDK's own KMS clients go to the emulator.
    os.environ["AWS_ENDPOINT_URL_KMS"] = args.kms_endpoint
    import aws_encryption_sdk
    import botocore.session
    from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy

    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=[args.key_arn], botocore_session=botocore.session.Session()
    )
    # The same limits as Keyward's defaults: 300 s in memory, 2^20 messages per data key.
    cmm = aws_encryption_sdk.CachingCryptoMaterialsManager(
        master_key_provider=provider,
        cache=aws_encryption_sdk.LocalCryptoMaterialsCache(capacity=1000),
        max_age=300.0,
        max_messages_encrypted=1 << 20,
    )
    # Committing, unsigned suite: like Keyward's envelope (HKDF-SHA-512, key commitment, no
    # per-message signature). The SDK's default suite adds an ECDSA P-384 signature per message.
    algorithm = getattr(Algorithm, args.algorithm)

    def make():
        def round_trip():
            ciphertext, _ = client.encrypt(
                source=PAYLOAD, materials_manager=cmm, algorithm=algorithm
            )
            plaintext, _ = client.decrypt(source=ciphertext, materials_manager=cmm)
            if plaintext != PAYLOAD:
                raise RuntimeError("decrypt returned other bytes")

        return round_trip

    result = closed_loop(make, args.concurrency, args.seconds)
    result["algorithm"] = args.algorithm
    return result


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bao(args):
    port = free_port()
    token = "keyward-bench"
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [
            args.bao,
            "server",
            "-dev",
            f"-dev-root-token-id={token}",
            f"-dev-listen-address=127.0.0.1:{port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HOME": tempfile.mkdtemp()},
    )
    try:

        def call(conn, method, path, body=None):
            conn.request(
                method,
                path,
                body=None if body is None else json.dumps(body),
                headers={"X-Vault-Token": token, "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            data = response.read()
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
            return json.loads(data) if data else None

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                call(conn, "GET", "/v1/sys/health")
                break
            except (OSError, RuntimeError, http.client.HTTPException):
                if time.monotonic() > deadline or proc.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"bao did not start: {log.read()[-2000:]!r}")
                time.sleep(0.2)
        call(conn, "POST", "/v1/sys/mounts/transit", {"type": "transit"})
        call(conn, "POST", "/v1/transit/keys/bench", {"type": "aes256-gcm96"})
        version = call(conn, "GET", "/v1/sys/seal-status").get("version", "")
        encoded = base64.b64encode(PAYLOAD).decode()

        def make():
            # One persistent HTTP/1.1 connection per thread (as Keyward's clients keep theirs).
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

            def round_trip():
                ct = call(conn, "POST", "/v1/transit/encrypt/bench", {"plaintext": encoded})
                pt = call(
                    conn,
                    "POST",
                    "/v1/transit/decrypt/bench",
                    {"ciphertext": ct["data"]["ciphertext"]},
                )
                if base64.b64decode(pt["data"]["plaintext"]) != PAYLOAD:
                    raise RuntimeError("decrypt returned other bytes")

            return round_trip

        result = closed_loop(make, args.concurrency, args.seconds)
        result["version"] = version
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def keyward(args):
    import grpc
    import grpc_tools
    from grpc_tools import protoc

    out = tempfile.mkdtemp()
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{args.proto_dir}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "keyward/v1/keyward.proto",
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc})")
    sys.path.insert(0, out)
    from keyward.v1 import keyward_pb2, keyward_pb2_grpc

    # As many connections as the Rust client uses (min(concurrency, 4)); distinct channel
    # arguments keep grpcio from sharing one subchannel.
    channels = [
        grpc.insecure_channel(args.addr, options=[("keyward.bench.channel", i)])
        for i in range(min(args.concurrency, 4))
    ]
    counter = iter(range(1 << 30))

    def make():
        stub = keyward_pb2_grpc.CryptoServiceStub(channels[next(counter) % len(channels)])

        def round_trip():
            envelope = stub.Encrypt(
                keyward_pb2.EncryptRequest(tenant_id=args.tenant, plaintext=PAYLOAD)
            ).envelope
            plaintext = stub.Decrypt(
                keyward_pb2.DecryptRequest(tenant_id=args.tenant, envelope=envelope)
            ).plaintext
            if plaintext != PAYLOAD:
                raise RuntimeError("decrypt returned other bytes")

        return round_trip

    return closed_loop(make, args.concurrency, args.seconds)


def keyward_client(args):
    """Batches through the Python client: each loop encrypts `--batch` 1 KiB items with
    `encrypt_many` and decrypts them with `decrypt_many`; an item round trip is one item
    encrypted and decrypted (what one single-call round trip of the other sides does)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "..", "..", "clients", "python", "src"))
    from keyward_client import Client

    client = Client(args.addr, timeout=60)
    items = [PAYLOAD] * args.batch
    context = {}

    def make():
        def round_trip():
            sealed = client.encrypt_many(args.tenant, items, context=context)
            opened = client.decrypt_many(args.tenant, [r.unwrap().envelope for r in sealed], context=context)
            if any(r.unwrap() != PAYLOAD for r in opened):
                raise RuntimeError("decrypt returned other bytes")

        return round_trip

    result = closed_loop(make, args.concurrency, args.seconds)
    calls = result["round_trips"]
    result["calls"] = calls
    result["batch"] = args.batch
    result["round_trips"] = calls * args.batch
    result["round_trips_per_s"] = result["round_trips"] / args.seconds
    # Latencies stay per loop (one encrypt_many + decrypt_many of `batch` items).
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="peer", required=True)
    for name in ("esdk", "bao", "keyward", "keyward-client"):
        p = sub.add_parser(name)
        p.add_argument("--concurrency", type=int, default=8)
        p.add_argument("--seconds", type=float, default=5.0)
        if name == "esdk":
            p.add_argument("--kms-endpoint", required=True)
            p.add_argument("--key-arn", required=True)
            p.add_argument("--algorithm", default="AES_256_GCM_HKDF_SHA512_COMMIT_KEY")
        elif name == "bao":
            p.add_argument("--bao", required=True)
        elif name == "keyward":
            p.add_argument("--addr", required=True)
            p.add_argument("--tenant", required=True)
            p.add_argument("--proto-dir", required=True)
        else:
            p.add_argument("--addr", required=True)
            p.add_argument("--tenant", required=True)
            p.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    runs = {"esdk": esdk, "bao": bao, "keyward": keyward, "keyward-client": keyward_client}
    result = runs[args.peer](args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
