#!/usr/bin/env python3
"""Open a Keyward envelope from an exit-kit export, without Keyward.

A reference implementation of docs/exit.md, sections 4 to 6, written from that page only, for
the `aws-kms` provider (boto3: credentials from the standard AWS chain, the region from the key
ARN) and the `local` development provider. Dependencies: Python 3.9+, boto3 (for aws-kms) and
cryptography.

    python3 tools/exit/keyward_open.py --export DIR [--envelope FILE] [--base64] \
        [--context KEY=VALUE]... [--aws-endpoint-url URL] [--local-kms-dir DIR] [--out FILE]

Exit status as keyward-open's (docs/exit.md, section 2): 0 done, 1 export refused, 2 usage,
3 shredded, 4 the KMS did not unwrap the tenant key, 5 the envelope cannot be opened.
"""

import argparse
import base64
import hashlib
import hmac
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


# --- 6. open one envelope --------------------------------------------------------------------


def run(args):
    context = {}
    for pair in args.context:
        if "=" not in pair:
            raise Fail(USAGE, f"--context: expected KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        context[k] = v
    if args.envelope and args.envelope != "-":
        with open(args.envelope, "rb") as f:
            envelope = f.read()
    else:
        envelope = sys.stdin.buffer.read()
    if args.base64:
        envelope = base64.b64decode(envelope.strip())
    parsed = parse_envelope(envelope)
    manifest, keys, data_key, tombstone = verify(args.export, parsed["dek_id"])
    if parsed["tenant"] != manifest["tenant"]:
        raise Fail(ENVELOPE, f"the envelope is tenant {parsed['tenant']}'s; the export is {manifest['tenant']}'s")
    if tombstone:
        raise Fail(SHREDDED, f"the data key {parsed['dek_id']} of this envelope was shredded "
                             f"(shredded_at_ms {tombstone['shredded_at_ms']}, by {tombstone['shredded_by']}, "
                             f"reason {tombstone['reason']!r}): its data is unreadable for good")
    if not data_key:
        raise Fail(ENVELOPE, f"the envelope's data key {parsed['dek_id']} is not in this export")
    tenant_key = unwrap_tenant_key(manifest["tenant"], keys[data_key["tenant_key_id"]], args)
    dek = unwrap_key(tenant_key, data_key["wrapped_bytes"], data_key["aad"], "data_keys.jsonl",
                     f"data key {data_key['id']} does not unwrap under its tenant key with its AAD")
    plaintext = open_envelope(parsed, dek, context)
    if args.out:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(plaintext)
    else:
        sys.stdout.buffer.write(plaintext)
        sys.stdout.buffer.flush()


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
