#!/usr/bin/env python3
"""Open a Keyward envelope from an exit-kit export, without Keyward.

A reference implementation of docs/exit.md, sections 4 to 6, written from that page only, for
the `aws-kms` provider (boto3: credentials from the standard AWS chain, the region from the key
ARN) and the `local` development provider. Dependencies: Python 3.9+, boto3 (for aws-kms) and
cryptography.

Both envelope versions: version 1 (one AES-GCM message, read whole) and version 2, the framed
envelope of docs/envelope-format.md section 10 (written from that section only), which is read
from the file or stdin and written out frame by frame in constant memory: each frame's plaintext
is written only once it has been authenticated, and the message is complete only when its final
frame has opened and nothing follows. On a failure part-way, --out is removed; on stdout, what
was written is authentic but incomplete (the exit status says so).

    python3 tools/exit/keyward_open.py --export DIR [--envelope FILE] [--base64] \
        [--context KEY=VALUE]... [--aws-endpoint-url URL] [--local-kms-dir DIR] [--out FILE]

Exit status as keyward-open's (docs/exit.md, section 2): 0 done, 1 export refused, 2 usage,
3 shredded, 4 the KMS did not unwrap the tenant key, 5 the envelope cannot be opened.
"""

import argparse
import base64
import hashlib
import hmac
import io
import json
import os
import re
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

REFUSED, USAGE, SHREDDED, KMS, ENVELOPE = 1, 2, 3, 4, 5
FILES = ("tenant_keys.json", "data_keys.jsonl", "tombstones.jsonl")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
BINDING_STATES = {"active", "revoked", "unavailable", "restored", "destroyed", "retired"}
PROVIDERS = {"aws-kms", "gcp-kms", "azure-key-vault", "pkcs11", "local"}


class Fail(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Bad(Exception):
    """A problem with an entry; the caller names the file (and line)."""


def refused(file, problem):
    return Fail(REFUSED, f"the export is refused: {file}: {problem}")


# --- 4.1 the canonical encoding of a string map -----------------------------------------------


def canonical(mapping):
    pairs = sorted((k.encode(), v.encode()) for k, v in mapping.items())
    out = struct.pack(">H", len(pairs))
    for k, v in pairs:
        out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return out


def tenant_key_context(tenant, tenant_key_id):
    return {
        "keyward:purpose": "tenant-key",
        "keyward:tenant": tenant,
        "keyward:tenant-key-id": tenant_key_id,
    }


def dek_aad(tenant, scope, dek_id):
    """4.4: the data key's wrap AAD."""
    return canonical(
        {
            "keyward:dek-id": dek_id,
            "keyward:purpose": "dek",
            "keyward:scope": scope,
            "keyward:tenant": tenant,
        }
    )


def b64(text, what):
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise Bad(f"{what} is not base64") from None


def exact_fields(obj, fields, where):
    if not isinstance(obj, dict) or set(obj) != set(fields):
        raise Bad(f"{where}: the fields are not exactly {sorted(fields)}")


# --- 5. verifying an export ------------------------------------------------------------------


def read_manifest(directory):
    path = os.path.join(directory, "manifest.json")
    if not os.path.exists(path):
        raise refused("manifest.json", "missing: the export is incomplete")
    with open(path, "rb") as f:
        try:
            manifest = json.loads(f.read(64 * 1024 + 1))
        except ValueError as e:
            raise refused("manifest.json", f"is not valid JSON: {e}") from None
    try:
        check_manifest(manifest)
    except (Bad, KeyError, TypeError, AttributeError) as e:
        raise refused("manifest.json", str(e)) from None
    return manifest


def check_manifest(manifest):
    exact_fields(
        manifest,
        ["format", "format_version", "tenant", "exported_at", "exported_at_ms", "audit", "counts", "files"],
        "the manifest",
    )
    if manifest["format"] != "keyward-export":
        raise refused("manifest.json", f"format is {manifest['format']!r}")
    if manifest["format_version"] != 1:
        raise refused("manifest.json", f"format_version {manifest['format_version']} is not 1")
    if sorted(manifest["files"]) != sorted(FILES):
        raise refused("manifest.json", f"lists the files {sorted(manifest['files'])}")
    for name, entry in manifest["files"].items():
        exact_fields(entry, ["sha256", "bytes"], name)
        if not HEX64.match(entry["sha256"]):
            raise refused("manifest.json", f"the SHA-256 of {name} is not 64 hex digits")
    exact_fields(manifest["counts"], ["tenant_keys", "data_keys", "tombstones"], "counts")


def check_digest(manifest, name, digest, size):
    entry = manifest["files"][name]
    if digest != entry["sha256"] or size != entry["bytes"]:
        raise refused(name, "does not match its SHA-256 and size in manifest.json")


def open_listed(directory, name):
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        raise refused(name, "missing: manifest.json lists it")
    return open(path, "rb")


def read_tenant_keys(directory, manifest, tenant):
    name = "tenant_keys.json"
    with open_listed(directory, name) as f:
        data = f.read()
    check_digest(manifest, name, hashlib.sha256(data).hexdigest(), len(data))
    try:
        body = json.loads(data)
    except ValueError as e:
        raise refused(name, f"is not valid JSON: {e}") from None
    try:
        return check_tenant_keys(body, manifest, tenant)
    except (Bad, KeyError, TypeError, AttributeError) as e:
        raise refused(name, str(e)) from None


def check_tenant_keys(body, manifest, tenant):
    name = "tenant_keys.json"
    exact_fields(body, ["tenant", "tenant_keys"], "the file")
    if body["tenant"] != tenant:
        raise refused(name, f"is of tenant {body['tenant']!r}, the manifest of {tenant!r}")
    if len(body["tenant_keys"]) != manifest["counts"]["tenant_keys"]:
        raise refused(name, "holds another number of tenant keys than manifest.json says")
    keys = {}
    fields = ["id", "created_at_ms", "provider", "key_ref", "binding_id", "binding_state",
              "wrap_context", "wrap_aad", "wrapped"]
    for entry in body["tenant_keys"]:
        exact_fields(entry, fields, f"tenant key {entry.get('id')!r}")
        key_id = entry["id"]
        if not HEX32.match(key_id) or key_id in keys:
            raise refused(name, f"tenant key id {key_id!r} is invalid or listed twice")
        if entry["provider"] not in PROVIDERS or entry["binding_state"] not in BINDING_STATES:
            raise refused(name, f"tenant key {key_id}: unknown provider or binding state")
        context = tenant_key_context(tenant, key_id)
        if entry["wrap_context"] != context:
            raise refused(name, f"tenant key {key_id}: wrap_context is not this tenant key's")
        if b64(entry["wrap_aad"], "wrap_aad") != canonical(context):
            raise refused(name, f"tenant key {key_id}: wrap_aad is not the encoding of wrap_context")
        entry["wrapped_bytes"] = b64(entry["wrapped"], "wrapped")
        keys[key_id] = entry
    return keys


def scan_lines(directory, manifest, name, each):
    """Streams a JSON Lines file: hashes it, hands each parsed line to `each`, counts lines."""
    sha = hashlib.sha256()
    size = lines = 0
    problem = None
    with open_listed(directory, name) as f:
        for raw in f:
            sha.update(raw)
            size += len(raw)
            lines += 1
            if problem:
                continue
            if not raw.endswith(b"\n"):
                problem = f"line {lines} does not end with a newline"
                continue
            try:
                each(json.loads(raw))
            except (ValueError, Bad, KeyError, TypeError, AttributeError) as e:
                problem = f"line {lines}: {e}"
    check_digest(manifest, name, sha.hexdigest(), size)
    if problem:
        raise refused(name, problem)
    return lines


def verify(directory, want):
    """Section 5; returns (manifest, tenant keys by id, data key entry or None, tombstone or None)."""
    manifest = read_manifest(directory)
    tenant = manifest["tenant"]
    keys = read_tenant_keys(directory, manifest, tenant)
    found = {"data_key": None, "tombstone": None, "last": ""}

    def data_key(entry):
        exact_fields(entry, ["id", "tenant_key_id", "scope", "created_at_ms", "retired_at_ms",
                             "wrap_aad", "wrapped"], "a data key")
        key_id = entry["id"]
        if not HEX32.match(key_id) or key_id <= found["last"]:
            raise Bad(f"data key {key_id!r} is invalid or out of order")
        found["last"] = key_id
        if entry["tenant_key_id"] not in keys:
            raise Bad(f"data key {key_id}: its tenant key is not in tenant_keys.json")
        scope = entry["scope"]
        if not 1 <= len(scope.encode()) <= 128 or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in scope):
            raise Bad(f"data key {key_id}: invalid scope")
        aad = dek_aad(tenant, scope, key_id)
        if b64(entry["wrap_aad"], "wrap_aad") != aad:
            raise Bad(f"data key {key_id}: wrap_aad is not the AAD of its tenant, scope and id")
        wrapped = b64(entry["wrapped"], "wrapped")
        if len(wrapped) != 61 or wrapped[0] != 1:
            raise Bad(f"data key {key_id}: wrapped is not 61 bytes of format 01")
        if key_id == want:
            found["data_key"] = dict(entry, aad=aad, wrapped_bytes=wrapped)

    def tombstone(entry):
        exact_fields(entry, ["id", "tenant_key_id", "scope_hmac", "created_at_ms", "shredded_at_ms",
                             "shredded_by", "reason"], "a tombstone")
        if not HEX32.match(entry["id"]) or not HEX32.match(entry["tenant_key_id"]):
            raise Bad(f"tombstone {entry['id']!r}: invalid id")
        if entry["id"] == want:
            found["tombstone"] = entry

    for name, each, count in (("data_keys.jsonl", data_key, "data_keys"),
                              ("tombstones.jsonl", tombstone, "tombstones")):
        lines = scan_lines(directory, manifest, name, each)
        if lines != manifest["counts"][count]:
            raise refused(name, f"holds {lines} lines; manifest.json says {manifest['counts'][count]}")
    return manifest, keys, found["data_key"], found["tombstone"]


# --- 4.2 unwrapping the tenant key -----------------------------------------------------------


def unwrap_tenant_key(tenant, key, args):
    context = tenant_key_context(tenant, key["id"])
    if key["provider"] == "aws-kms":
        import boto3
        import botocore.exceptions

        arn = key["key_ref"].split("?", 1)[0]
        region = arn.split(":")[3]
        client = boto3.client("kms", region_name=region, endpoint_url=args.aws_endpoint_url)
        try:
            out = client.decrypt(KeyId=arn, CiphertextBlob=key["wrapped_bytes"], EncryptionContext=context)
        except botocore.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code == "InvalidCiphertextException":
                raise refused("tenant_keys.json", f"tenant key {key['id']} does not unwrap under its KEK") from None
            raise Fail(KMS, f"tenant key {key['id']} (aws-kms key {arn}) was not unwrapped: {code}: {e}") from None
        except botocore.exceptions.BotoCoreError as e:
            raise Fail(KMS, f"tenant key {key['id']} (aws-kms key {arn}) was not unwrapped: {e}") from None
        plaintext = out["Plaintext"]
        if len(plaintext) != 32:
            raise Fail(KMS, "the KMS returned a key that is not 32 bytes")
        return plaintext
    if key["provider"] == "local":
        if not args.local_kms_dir:
            raise Fail(KMS, "the tenant key is wrapped by a local key: give --local-kms-dir")
        path = os.path.join(args.local_kms_dir, key["key_ref"] + ".key")
        if os.path.exists(os.path.join(args.local_kms_dir, key["key_ref"] + ".disabled")):
            raise Fail(KMS, f"local key {key['key_ref']} is disabled")
        try:
            with open(path, "rb") as f:
                kek = f.read()
        except OSError as e:
            raise Fail(KMS, f"cannot read local key {key['key_ref']}: {e}") from None
        return unwrap_key(kek, key["wrapped_bytes"], canonical(context), "tenant_keys.json",
                          f"tenant key {key['id']} does not unwrap under its KEK")
    raise Fail(KMS, f"this reference implements aws-kms and local only, not {key['provider']}")


def unwrap_key(wrapping_key, wrapped, aad, file, problem):
    """4.3: 01 || nonce (12) || encrypted key (32) || tag (16), AES-256-GCM."""
    if len(wrapped) != 61 or wrapped[0] != 1:
        raise refused(file, problem)
    try:
        return AESGCM(wrapping_key).decrypt(wrapped[1:13], wrapped[13:], aad)
    except InvalidTag:
        raise refused(file, problem) from None


# --- 4.5 the envelope ------------------------------------------------------------------------


def parse_envelope(envelope):
    if len(envelope) < 6 or envelope[:2] != b"KW" or envelope[2] != 1:
        raise Fail(ENVELOPE, "the input is not a Keyward envelope (magic or version)")
    suite = struct.unpack(">H", envelope[3:5])[0]
    if suite not in (1, 2):
        raise Fail(ENVELOPE, f"unsupported suite {suite:#06x}")
    t = envelope[5]
    if not 1 <= t <= 64 or len(envelope) < 86 + t + 16:
        raise Fail(ENVELOPE, "the input is not a Keyward envelope (lengths)")
    tenant = envelope[6:6 + t].decode("ascii", "replace")
    return {
        "suite": suite,
        "tenant": tenant,
        "dek_id": envelope[6 + t:22 + t].hex(),
        "salt": envelope[22 + t:54 + t],
        "commitment": envelope[54 + t:86 + t],
        "header": envelope[:86 + t],
        "body": envelope[86 + t:],
    }


def open_envelope(parsed, dek, context):
    salt = parsed["salt"]
    if parsed["suite"] == 2:
        okm = hmac.new(dek, b"KEYWARD-V2-MSGKEYS\x00\x02" + salt + b"\x01", hashlib.sha512).digest()
        message_key, commitment = okm[:32], okm[32:]
    else:
        prk = hmac.new(salt, dek, hashlib.sha512).digest()
        message_key = hmac.new(prk, b"KEYWARD-V1-DERIVEKEY\x00\x01\x01", hashlib.sha512).digest()[:32]
        commitment = hmac.new(prk, b"KEYWARD-V1-COMMITKEY\x00\x01\x01", hashlib.sha512).digest()[:32]
    fail = Fail(ENVELOPE, "the envelope does not open: the encryption context differs, or it was altered")
    if not hmac.compare_digest(commitment, parsed["commitment"]):
        raise fail
    try:
        return AESGCM(message_key).decrypt(bytes(12), parsed["body"], parsed["header"] + canonical(context))
    except InvalidTag:
        raise fail from None


# --- 4.6 the framed envelope (envelope format version 2) ----------------------------------------
# docs/envelope-format.md section 10. All integers big-endian.

FRAMED_VERSION = 2
FRAMED_SUITE = 2
MAX_FRAME_SIZE = 1 << 20
MAX_FRAMES = 1 << 32
MAX_MESSAGE_BYTES = 1 << 40
FINAL_FLAG = 1 << 31
TAG = 16
TENANT_FIRST = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789")
TENANT_BYTES = TENANT_FIRST | frozenset(b"._-")


class EnvelopeError(Exception):
    """A framed envelope that does not open: `stage` is "parse" (the header) or "open"; `kind`
    is the error kind of section 10.6 (Malformed, UnsupportedVersion, UnsupportedSuite,
    DecryptFailed)."""

    def __init__(self, stage, kind, message):
        super().__init__(message)
        self.stage = stage
        self.kind = kind


def read_exact(stream, n):
    """Up to `n` bytes: fewer only at the end of the input (pipes return short reads)."""
    parts, got = [], 0
    while got < n:
        part = stream.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def read_framed_header(stream, first=b""):
    """Section 10.6, rules 1 to 8, in order: the header's fields, reading no byte past it.
    `first`: bytes of the header already read from `stream`."""
    buf = bytearray(first)
    at = 0  # a cursor over buf, which is filled from the stream as the fields are read


    def field(size, what):
        nonlocal at
        need = at + size
        if len(buf) < need:
            buf.extend(read_exact(stream, need - len(buf)))
        if len(buf) < need:
            raise EnvelopeError("parse", "Malformed", f"truncated in the {what}")
        value = bytes(buf[at:need])
        at = need
        return value

    if field(2, "magic") != b"KW":
        raise EnvelopeError("parse", "Malformed", "bad magic (not a Keyward envelope)")
    version = field(1, "version")[0]
    if version != FRAMED_VERSION:
        raise EnvelopeError("parse", "UnsupportedVersion", f"unsupported envelope format version {version}")
    suite = struct.unpack(">H", field(2, "suite id"))[0]
    if suite != FRAMED_SUITE:
        raise EnvelopeError("parse", "UnsupportedSuite", f"unsupported suite {suite:#06x}")
    t = field(1, "tenant id length")[0]
    if not 1 <= t <= 64:
        raise EnvelopeError("parse", "Malformed", "tenant id length is not 1 to 64")
    tenant = field(t, "tenant id")
    if tenant[0] not in TENANT_FIRST or any(b not in TENANT_BYTES for b in tenant):
        raise EnvelopeError("parse", "Malformed", "tenant id has bytes outside [a-z0-9._-]")
    dek_id = field(16, "DEK id")
    salt = field(32, "salt")
    commitment = field(32, "commitment")
    frame_size = struct.unpack(">I", field(4, "frame size"))[0]
    if not 1 <= frame_size <= MAX_FRAME_SIZE:
        raise EnvelopeError("parse", "Malformed", "frame size is not 1 to 1048576")
    return {
        "version": FRAMED_VERSION,
        "suite": suite,
        "tenant": tenant.decode("ascii"),
        "dek_id": dek_id.hex(),
        "salt": salt,
        "commitment": commitment,
        "frame_size": frame_size,
        "header": bytes(buf[:at]),
    }


def open_framed(header, stream, out, dek, context):
    """Section 10.4: opens the frames that follow `header` in `stream`, writing each frame's
    plaintext to `out` once it has opened, holding one frame at a time. Returns the number of
    plaintext bytes; raises EnvelopeError (stage "open") at the first failure, after having
    written the frames that opened before it."""
    okm = hmac.new(dek, b"KEYWARD-V2-FRAMEKEYS" + struct.pack(">H", FRAMED_SUITE) + header["salt"] + b"\x01",
                   hashlib.sha512).digest()
    message_key, commitment = okm[:32], okm[32:]
    if not hmac.compare_digest(commitment, header["commitment"]):
        raise EnvelopeError("open", "DecryptFailed", "decryption failed")
    aead = AESGCM(message_key)
    prefix = header["header"] + canonical(context)
    size = header["frame_size"]
    seq = total = 0
    finished = False
    while True:
        word = read_exact(stream, 4)
        if finished:
            if word:
                raise EnvelopeError("open", "Malformed", "bytes after the final frame")
            return total
        if not word:
            raise EnvelopeError("open", "Malformed", "truncated: the message ended before its final frame")
        if len(word) < 4:
            raise EnvelopeError("open", "Malformed", "truncated inside a frame")
        value = struct.unpack(">I", word)[0]
        last, length = bool(value & FINAL_FLAG), value & (FINAL_FLAG - 1)
        if length > size or (not last and length != size):
            raise EnvelopeError("open", "Malformed", "frame length does not match the frame size")
        if seq >= MAX_FRAMES or total + length > MAX_MESSAGE_BYTES:
            raise EnvelopeError("open", "Malformed", "more than 2^32 frames or 2^40 bytes")
        body = read_exact(stream, length + TAG)
        if len(body) < length + TAG:
            raise EnvelopeError("open", "Malformed", "truncated inside a frame")
        seq_bytes = struct.pack(">Q", seq)
        try:
            plaintext = aead.decrypt(b"\x00" * 4 + seq_bytes, body, prefix + seq_bytes + word)
        except InvalidTag:
            raise EnvelopeError("open", "DecryptFailed", "decryption failed") from None
        out.write(plaintext)
        total += length
        seq += 1
        finished = last


# --- 6. open one envelope --------------------------------------------------------------------


def run(args):
    context = {}
    for pair in args.context:
        if "=" not in pair:
            raise Fail(USAGE, f"--context: expected KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        context[k] = v
    if args.envelope and args.envelope != "-":
        stream = open(args.envelope, "rb")
    else:
        stream = sys.stdin.buffer
    with stream:
        if args.base64:
            # Base64 text is read whole: it is for envelopes small enough to paste.
            stream = io.BytesIO(base64.b64decode(stream.read().strip()))
        first = read_exact(stream, 3)
        if first[:2] == b"KW" and first[2:] == bytes([FRAMED_VERSION]):
            open_framed_envelope(args, context, stream, first)
        else:
            open_single_envelope(args, context, first + stream.read())


def dek_of(args, tenant, dek_id):
    """Section 6, steps 1 and 3 to 5: the data key `dek_id` of `tenant`'s envelope."""
    manifest, keys, data_key, tombstone = verify(args.export, dek_id)
    if tenant != manifest["tenant"]:
        raise Fail(ENVELOPE, f"the envelope is tenant {tenant}'s; the export is {manifest['tenant']}'s")
    if tombstone:
        raise Fail(SHREDDED, f"the data key {dek_id} of this envelope was shredded "
                             f"(shredded_at_ms {tombstone['shredded_at_ms']}, by {tombstone['shredded_by']}, "
                             f"reason {tombstone['reason']!r}): its data is unreadable for good")
    if not data_key:
        raise Fail(ENVELOPE, f"the envelope's data key {dek_id} is not in this export")
    tenant_key = unwrap_tenant_key(manifest["tenant"], keys[data_key["tenant_key_id"]], args)
    return unwrap_key(tenant_key, data_key["wrapped_bytes"], data_key["aad"], "data_keys.jsonl",
                      f"data key {data_key['id']} does not unwrap under its tenant key with its AAD")


def create_out(path):
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def open_single_envelope(args, context, envelope):
    parsed = parse_envelope(envelope)
    dek = dek_of(args, parsed["tenant"], parsed["dek_id"])
    plaintext = open_envelope(parsed, dek, context)
    if args.out:
        with create_out(args.out) as f:
            f.write(plaintext)
    else:
        sys.stdout.buffer.write(plaintext)
        sys.stdout.buffer.flush()


def open_framed_envelope(args, context, stream, first):
    try:
        header = read_framed_header(stream, first)
    except EnvelopeError as e:
        raise Fail(ENVELOPE, f"the input is not a Keyward envelope: {e}") from None
    dek = dek_of(args, header["tenant"], header["dek_id"])
    out = create_out(args.out) if args.out else sys.stdout.buffer
    try:
        open_framed(header, stream, out, dek, context)
        out.flush()
    except EnvelopeError as e:
        if args.out:
            out.close()
            os.unlink(args.out)
            written = f"{args.out} was removed"
        else:
            out.flush()
            written = "what was written to stdout is authentic but incomplete"
        if e.kind == "DecryptFailed":
            reason = "the encryption context differs, or it was altered"
        else:
            reason = str(e)
        raise Fail(ENVELOPE, f"the envelope does not open: {reason} ({written})") from None
    finally:
        if args.out and not out.closed:
            out.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", required=True, help="the export directory")
    parser.add_argument("--envelope", help="the envelope file (default: stdin)")
    parser.add_argument("--base64", action="store_true", help="the envelope is base64")
    parser.add_argument("--context", action="append", default=[], help="KEY=VALUE, repeatable")
    parser.add_argument("--aws-endpoint-url", help="AWS KMS endpoint (VPC, FIPS, emulator)")
    parser.add_argument("--local-kms-dir", help="the local development provider's key directory")
    parser.add_argument("--out", help="write the plaintext here (mode 0600) instead of stdout")
    args = parser.parse_args()
    try:
        run(args)
    except Fail as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.code)


if __name__ == "__main__":
    main()
