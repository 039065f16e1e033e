#!/usr/bin/env python3
"""keyward-client vs raw grpcio stubs on the same server, in one run (docs/benchmarks.md,
"Python client").

Each side does 1 KiB Encrypt + Decrypt round trips (checking the plaintext) in a closed loop
with `--concurrency` threads sharing one channel, for `--seconds` after a 0.5 s warm-up; the
sides alternate, `--rounds` times, and each side's best round is kept (as `keyward-bench peers`),
and the client/raw ratio of each round (the two sides back to back) is reported: its median is
the figure that noise on a shared machine disturbs least.
Then the batch path: `encrypt_many` + `decrypt_many` of `--batch` items per call, items/s.

    python clients/python/bench/bench_client.py --keyward-bin target/release/keyward
    python clients/python/bench/bench_client.py --addr 127.0.0.1:50051   # a running server

The server is started in a temp data directory on 127.0.0.1:`--port` (development mode, local
key) unless `--addr` is given.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import grpc  # noqa: E402

from keyward_client import NO_RETRY, Client  # noqa: E402
from keyward_client._gen.keyward.v1 import keyward_pb2 as pb  # noqa: E402
from keyward_client._gen.keyward.v1 import keyward_pb2_grpc as pb_grpc  # noqa: E402

PAYLOAD = bytes([0x42]) * 1024
CTX = {"conversation": "bench"}
WARM_UP = 0.5


def closed_loop(round_trip, concurrency, seconds):
    start = time.perf_counter() + 0.05
    measure_from = start + WARM_UP
    end = measure_from + seconds
    latencies, errors = [], []
    lock = threading.Lock()
    total = [0]

    def run():
        mine = []
        n = 0
        try:
            while True:
                now = time.perf_counter()
                if now >= end:
                    break
                if now < start:
                    time.sleep(start - now)
                    continue
                round_trip()
                n += 1
                if now >= measure_from:
                    mine.append(time.perf_counter() - now)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        with lock:
            latencies.extend(mine)
            total[0] += n

    cpu0 = time.process_time()
    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu = time.process_time() - cpu0
    if errors:
        raise SystemExit(f"round trip failed: {errors[0]}")
    latencies.sort()
    pct = lambda p: int(latencies[round((len(latencies) - 1) * p)] * 1e6) if latencies else 0  # noqa: E731
    # CPU time of this whole process (Python and gRPC's C threads) per loop, warm-up included:
    # the client's own cost, which the server's speed and the machine's load disturb far less
    # than throughput.
    return {
        "per_s": len(latencies) / seconds,
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
        "cpu_us": cpu / max(total[0], 1) * 1e6,
    }


def wrapper_micro(addr, tenant, n=100_000):
    """The wrapper's own Python cost per Encrypt, without the network: the same request built
    and handed to a stub that answers at once, raw vs through Client.encrypt (µs per call)."""
    answer = pb.EncryptResponse(envelope=b"e" * 1154, dek_id="0" * 32)

    class Instant:
        @staticmethod
        def Encrypt(request, timeout=None):
            return answer

    best_raw = best_cli = float("inf")
    client = Client(addr)
    client._crypto = Instant
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            r = Instant.Encrypt(pb.EncryptRequest(tenant_id=tenant, plaintext=PAYLOAD, encryption_context=CTX), timeout=30)
            (r.envelope, r.dek_id)
        best_raw = min(best_raw, (time.perf_counter() - t) / n * 1e6)
        t = time.perf_counter()
        for _ in range(n):
            client.encrypt(tenant, PAYLOAD, context=CTX)
        best_cli = min(best_cli, (time.perf_counter() - t) / n * 1e6)
    client.close()
    return best_raw, best_cli


def median(xs):
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def start_server(binary, port):
    data = tempfile.mkdtemp(prefix="kw-bench-")
    env = dict(os.environ, KEYWARD_LOG="warn", KEYWARD_ADMIN__LISTEN=f"127.0.0.1:{port + 1}")
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data],
        env=env,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    for line in proc.stdout:
        if line.startswith(b"keyward listening on "):
            return proc, f"127.0.0.1:{port}"
    raise SystemExit("the server did not start")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr")
    ap.add_argument("--keyward-bin", default="target/release/keyward")
    ap.add_argument("--port", type=int, default=51390)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()

    proc = None
    addr = args.addr
    if addr is None:
        proc, addr = start_server(args.keyward_bin, args.port)
    try:
        tenant = "bench-" + uuid.uuid4().hex[:8]
        client = Client(addr, timeout=30, retry=NO_RETRY)
        client.create_tenant(tenant)
        client.register_key(tenant, local_key="default")
        # The raw side: the generated stub on its own channel, the same options a bare grpcio
        # user would pass (none).
        channel = grpc.insecure_channel(addr)
        stub = pb_grpc.CryptoServiceStub(channel)
        with_retries = Client(addr, timeout=30)
        grpc.channel_ready_future(channel).result(timeout=10)
        grpc.channel_ready_future(with_retries.channel).result(timeout=10)

        def raw():
            r = stub.Encrypt(pb.EncryptRequest(tenant_id=tenant, plaintext=PAYLOAD, encryption_context=CTX), timeout=30)
            d = stub.Decrypt(pb.DecryptRequest(tenant_id=tenant, envelope=r.envelope, encryption_context=CTX), timeout=30)
            if d.plaintext != PAYLOAD:
                raise RuntimeError("mismatch")

        def wrapped():
            sealed = with_retries.encrypt(tenant, PAYLOAD, context=CTX)
            if with_retries.decrypt(tenant, sealed.envelope, context=CTX) != PAYLOAD:
                raise RuntimeError("mismatch")

        items = [PAYLOAD] * args.batch

        def batch():
            sealed = with_retries.encrypt_many(tenant, items, context=CTX)
            opened = with_retries.decrypt_many(tenant, [r.unwrap().envelope for r in sealed], context=CTX)
            if any(r.unwrap() != PAYLOAD for r in opened):
                raise RuntimeError("mismatch")

        sides = []
        for conc in args.concurrency:
            sides.append((f"raw grpcio stub, {conc} thread(s)", raw, conc, 1))
            sides.append((f"keyward-client, {conc} thread(s)", wrapped, conc, 1))
        sides.append((f"keyward-client encrypt_many+decrypt_many ({args.batch}/call), 1 thread", batch, 1, args.batch))
        best = {}
        cpus = {}
        ratios = {conc: [] for conc in args.concurrency}
        for rnd in range(args.rounds):
            this = {}
            # Odd rounds run each pair raw first, even rounds client first: neither side always
            # gets the machine just after the other.
            order = sides if rnd % 2 == 0 else [s for pair in zip(sides[1::2], sides[0::2]) for s in pair] + sides[len(sides) - 1 :]
            for name, fn, conc, per in order:
                r = closed_loop(fn, conc, args.seconds)
                cpus.setdefault(name, []).append(r["cpu_us"])
                r["per_s"] *= per
                this[name] = r["per_s"]
                print(f"round {rnd + 1}: {name}: {r['per_s']:.0f}/s p50 {r['p50_us']} us", file=sys.stderr)
                if name not in best or r["per_s"] > best[name]["per_s"]:
                    best[name] = r
            for conc in args.concurrency:
                # The two sides ran back to back: their ratio within a round cancels slow drifts
                # of the machine's load.
                ratios[conc].append(this[f"keyward-client, {conc} thread(s)"] / this[f"raw grpcio stub, {conc} thread(s)"])
        load = os.getloadavg()
        print(
            f"1 KiB Encrypt+Decrypt round trips, {args.seconds:g} s per side and round, best of {args.rounds} "
            f"alternating rounds; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        )
        print("| side | round trips/s (items/s for batches) | p50 µs per loop | p99 µs per loop | client CPU µs per loop (median of rounds) |")
        print("|---|---|---|---|---|")
        for name, *_ in sides:
            r = best[name]
            print(f"| {name} | {r['per_s']:.0f} | {r['p50_us']} | {r['p99_us']} | {median(cpus[name]):.0f} |")
        for conc in args.concurrency:
            raw_r = best[f"raw grpcio stub, {conc} thread(s)"]["per_s"]
            cli_r = best[f"keyward-client, {conc} thread(s)"]["per_s"]
            rs = sorted(ratios[conc])
            med = median(rs)
            cpu_raw = median(cpus[f"raw grpcio stub, {conc} thread(s)"])
            cpu_cli = median(cpus[f"keyward-client, {conc} thread(s)"])
            print(
                f"- wrapper cost at {conc} thread(s): best rounds {100 * (1 - cli_r / raw_r):.1f} % "
                f"(client/raw {cli_r / raw_r:.3f}); per-round client/raw median {med:.3f}, "
                f"range {rs[0]:.3f}-{rs[-1]:.3f} over {len(rs)} rounds; client CPU per round trip "
                f"{cpu_cli:.0f} vs {cpu_raw:.0f} µs ({100 * (cpu_cli / cpu_raw - 1):+.1f} %)"
            )
        raw_us, cli_us = wrapper_micro(addr, tenant)
        print(
            f"- the wrapper's own cost per Encrypt, no network (best of 3 x 100k calls): {cli_us:.1f} µs "
            f"through Client.encrypt vs {raw_us:.1f} µs building the request for the raw stub "
            f"(+{cli_us - raw_us:.1f} µs per call)"
        )
        single = best[f"keyward-client, {args.concurrency[0]} thread(s)"]["per_s"]
        b = best[sides[-1][0]]["per_s"]
        print(f"- batch items/s vs single round trips/s ({args.concurrency[0]} thread): {b / single:.1f} x")
        channel.close()
        client.close()
        with_retries.close()
    finally:
        if proc:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
