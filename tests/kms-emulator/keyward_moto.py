#!/usr/bin/env python3
"""moto's AWS KMS emulator, with AWS's key-state and KeyId enforcement added.

Keyward's AWS KMS tests run the unmodified Rust SDK against moto in server mode. Plain moto
(5.2.x) differs from AWS KMS in ways that matter to Keyward, because revocation *is* the product:

1. It keeps encrypting and decrypting with a key that is Disabled or PendingDeletion. AWS refuses:
   "The key state of the KMS key affects its use in cryptographic operations" —
   https://docs.aws.amazon.com/kms/latest/developerguide/key-state.html — a Disabled key fails with
   DisabledException, a key in any other unusable state (PendingDeletion, PendingImport,
   Unavailable, ...) with KMSInvalidStateException.
2. Decrypt with an explicit KeyId that is not the key the ciphertext was made under answers
   AccessDeniedException. AWS answers IncorrectKeyException ("The request was rejected because
   the specified KMS key cannot decrypt the data. The KeyId in a Decrypt request ... must identify
   the same KMS key that was used to encrypt the ciphertext" — API_Decrypt.html, Errors).
3. (Below, `_accept_key_arn`.) Key state changes take only raw key ids.
4. It evaluates a key policy only for DescribeKey, and only its Deny statements. AWS evaluates the
   key policy for every operation on the key: a request is allowed only if an Allow statement
   matches its principal, action, resource and conditions and no Deny statement does
   (https://docs.aws.amazon.com/kms/latest/developerguide/determining-access-key-policy.html).
   The most common real revocation — the customer removes Keyward's statement from the key
   policy — answers AccessDeniedException on Decrypt and GenerateDataKey, which plain moto never
   does.
5. Its STS grants every AssumeRole, for any role and any ExternalId. AWS grants it only if the
   role exists and its trust policy allows the caller, with the ExternalId its condition requires
   (https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_common-scenarios_third-party.html).

This launcher patches moto to close these gaps, then serves it on 127.0.0.1. It prints exactly one line, `moto listening on http://127.0.0.1:PORT`, once the socket
is bound, and serves until killed.

    python keyward_moto.py            # a free port chosen by the OS
    python keyward_moto.py --port 4566
    python keyward_moto.py --host 0.0.0.0 --port 5000   # in a container (docker-compose.yml)
"""

import argparse
import logging
import sys

try:
    from moto.core.exceptions import JsonRESTError
    from moto.kms import models as kms_models
    from moto.kms import utils as kms_utils
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
except ImportError as e:  # pragma: no cover - the message is what the Rust harness shows
    sys.stderr.write(
        f"keyward_moto: cannot import moto ({e}); "
        "run scripts/test (it installs moto[server]) or set KEYWARD_MOTO_PYTHON\n"
    )
    sys.exit(3)


# --- AWS's error types that moto does not define (moto.kms.exceptions has none of them) --------
# JsonRESTError renders {"__type": <code>, "message": ...} with HTTP 400, exactly the shape of an
# AWS JSON-1.1 error, so the SDK's typed error code (`ProvideErrorMetadata::code`) is <code>.


class DisabledException(JsonRESTError):
    code = 400

    def __init__(self, key_arn: str):
        super().__init__("DisabledException", f"{key_arn} is disabled.")


class KMSInvalidStateException(JsonRESTError):
    code = 400

    def __init__(self, key_arn: str, state: str):
        super().__init__("KMSInvalidStateException", f"{key_arn} is {state}.")


class AccessDeniedException(JsonRESTError):
    # moto.kms.exceptions.AccessDeniedException renders an empty message.
    code = 400

    def __init__(self, message: str) -> None:
        super().__init__("AccessDeniedException", message)


class IncorrectKeyException(JsonRESTError):
    code = 400

    def __init__(self) -> None:
        super().__init__(
            "IncorrectKeyException",
            "The key ID in the request does not identify a KMS key that can perform this operation.",
        )


# --- the checks --------------------------------------------------------------------------------


def _require_usable(backend, key_id: str) -> None:
    """Raise what AWS raises when `key_id` (any id form) is not Enabled.

    Unknown keys are left to moto, which already answers NotFoundException.
    """
    try:
        key = backend.keys[backend.any_id_to_key_id(key_id)]
    except KeyError:
        return
    state = key.key_state
    if state == "Enabled":
        return
    if state == "Disabled":
        raise DisabledException(key.arn)
    # PendingDeletion, PendingImport, Unavailable, Creating, ...: AWS key-state table says
    # KMSInvalidStateException for every cryptographic operation.
    raise KMSInvalidStateException(key.arn, state)


def _ciphertext_key_id(ciphertext_blob: bytes):
    """The key id in moto's ciphertext header, or None if the blob does not parse (then moto's
    own decrypt answers InvalidCiphertextException, as AWS does)."""
    try:
        return kms_utils._deserialize_ciphertext_blob(ciphertext_blob).key_id
    except Exception:
        return None


_original = {
    name: getattr(kms_models.KmsBackend, name)
    for name in ("encrypt", "decrypt", "generate_data_key")
}


def encrypt(self, key_id, plaintext, encryption_context):
    _require_usable(self, key_id)
    return _original["encrypt"](self, key_id, plaintext, encryption_context)


def decrypt(self, ciphertext_blob, encryption_context, key_id=None):
    actual = _ciphertext_key_id(ciphertext_blob)
    if key_id is not None and actual is not None:
        # Gap 2: AWS checks the caller's KeyId against the ciphertext's key *before* using it.
        if self.any_id_to_key_id(key_id) != actual:
            raise IncorrectKeyException()
    if actual is not None:
        _require_usable(self, actual)
    return _original["decrypt"](self, ciphertext_blob, encryption_context, key_id)


def generate_data_key(self, key_id, encryption_context, number_of_bytes, key_spec):
    # moto's generate_data_key calls self.encrypt (patched above), but check first anyway so the
    # enforcement does not depend on that implementation detail.
    _require_usable(self, key_id)
    return _original["generate_data_key"](
        self, key_id, encryption_context, number_of_bytes, key_spec
    )


# re_encrypt and generate_data_key_without_plaintext are built on the methods above in moto 5.x
# (KmsBackend.re_encrypt calls self.decrypt/self.encrypt; the response handler of
# GenerateDataKeyWithoutPlaintext calls generate_data_key), so they inherit the enforcement.
kms_models.KmsBackend.encrypt = encrypt
kms_models.KmsBackend.decrypt = decrypt
kms_models.KmsBackend.generate_data_key = generate_data_key


# Gap 3: moto's DisableKey, EnableKey, ScheduleKeyDeletion and CancelKeyDeletion look the KeyId up
# as a raw key id only, and fail with HTTP 500 when given a key ARN. AWS accepts "the key ID or
# key ARN" for all four (API_DisableKey.html etc.), and the onboarding guide revokes with ARNs.
def _accept_key_arn(name):
    original = getattr(kms_models.KmsBackend, name)

    def patched(self, key_id, *args, **kwargs):
        return original(self, self.get_key_id(key_id), *args, **kwargs)

    setattr(kms_models.KmsBackend, name, patched)


for _name in ("disable_key", "enable_key", "schedule_key_deletion", "cancel_key_deletion"):
    _accept_key_arn(_name)


# Gaps 4 and 5: policy evaluation. -----------------------------------------------------------
#
# The subset of AWS's policy language Keyward's statements and tests use, evaluated as AWS does
# (an explicit Deny wins, else an Allow is needed): Effect, Principal ("*" or {"AWS": ARN, account
# id or list}), Action and Resource (strings or lists, `*`/`?` wildcards), and the condition
# operators StringEquals, ForAllValues:StringEquals, ForAnyValue:StringEquals and Null on the keys
# kms:EncryptionContextKeys, kms:EncryptionContext:<key> and sts:ExternalId. Anything else in a
# statement (NotPrincipal, NotAction, another operator or key) raises PolicyNotModelled, which
# fails the request with HTTP 500: the emulator says it cannot decide rather than guessing.
#
# A principal "arn:aws:iam::ACCOUNT:root" (or the bare account id) delegates to IAM in AWS; moto
# does not evaluate IAM policies (every identity may do everything), so it matches every caller of
# that account. moto's default key policy is that statement, so keys whose policy nobody changed
# behave as before.

import fnmatch
import json
import re

from moto.kms import responses as kms_responses
from moto.sts import responses as sts_responses
from moto.sts.exceptions import STSClientError
from moto.sts.models import sts_backends
from moto.iam.models import iam_backends
from moto.utilities.utils import get_partition


class PolicyNotModelled(Exception):
    pass


class StsAccessDenied(STSClientError):
    code = "AccessDenied"


def _as_list(v):
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _wildcard(pattern: str, value: str) -> bool:
    return fnmatch.fnmatchcase(value.lower(), pattern.lower())


def _principal_forms(caller_arn: str):
    """The ARNs a policy may name `caller_arn` by: itself, and for an assumed-role session
    (arn:aws:sts::A:assumed-role/ROLE/SESSION) the role arn:aws:iam::A:role/ROLE."""
    forms = {caller_arn}
    m = re.match(r"^arn:([^:]+):sts::(\d{12}):assumed-role/([^/]+)/.+$", caller_arn)
    if m:
        forms.add(f"arn:{m.group(1)}:iam::{m.group(2)}:role/{m.group(3)}")
    return forms


def _account_of(arn: str):
    m = re.match(r"^arn:[^:]+:(?:iam|sts)::(\d{12}):", arn)
    return m.group(1) if m else None


def _principal_matches(principal, caller_arn: str) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, dict) or set(principal) - {"AWS"}:
        raise PolicyNotModelled(f"Principal {principal!r}")
    forms = _principal_forms(caller_arn)
    account = _account_of(caller_arn)
    for p in _as_list(principal.get("AWS")):
        if p == "*" or p in forms:
            return True
        if account and p in (account, f"arn:aws:iam::{account}:root"):
            return True
    return False


def _condition_holds(operator: str, key: str, expected, request: dict) -> bool:
    if key == "kms:EncryptionContextKeys":
        actual = sorted((request.get("encryption_context") or {}).keys())
    elif key.startswith("kms:EncryptionContext:"):
        ctx = request.get("encryption_context") or {}
        name = key[len("kms:EncryptionContext:"):]
        actual = [ctx[name]] if name in ctx else []
    elif key == "sts:ExternalId":
        actual = [request["external_id"]] if request.get("external_id") is not None else []
    else:
        raise PolicyNotModelled(f"condition key {key}")
    expected = [str(e) for e in _as_list(expected)]
    if operator == "Null":
        # "true": the key is absent; "false": it is present.
        want_absent = expected == ["true"]
        return (not actual) == want_absent
    if operator == "StringEquals":
        return len(actual) == 1 and actual[0] in expected
    if operator == "ForAllValues:StringEquals":
        return all(a in expected for a in actual)
    if operator == "ForAnyValue:StringEquals":
        return any(a in expected for a in actual)
    raise PolicyNotModelled(f"condition operator {operator}")


def _statement_applies(st: dict, caller_arn: str, action: str, resource: str, request: dict) -> bool:
    for unsupported in ("NotPrincipal", "NotAction", "NotResource"):
        if unsupported in st:
            raise PolicyNotModelled(unsupported)
    if not _principal_matches(st.get("Principal"), caller_arn):
        return False
    if not any(_wildcard(a, action) for a in _as_list(st.get("Action"))):
        return False
    resources = _as_list(st.get("Resource", "*"))
    if not any(_wildcard(r, resource) for r in resources):
        return False
    for operator, keys in (st.get("Condition") or {}).items():
        for key, expected in keys.items():
            if not _condition_holds(operator, key, expected, request):
                return False
    return True


def policy_decision(policy_json: str, caller_arn: str, action: str, resource: str, request: dict):
    """"allow", "explicit-deny" or "implicit-deny"."""
    try:
        policy = json.loads(policy_json)
    except (TypeError, ValueError):
        raise PolicyNotModelled("a policy that is not JSON")
    allowed = False
    for st in _as_list(policy.get("Statement")):
        if _statement_applies(st, caller_arn, action, resource, request):
            if st.get("Effect") == "Deny":
                return "explicit-deny"
            if st.get("Effect") == "Allow":
                allowed = True
    return "allow" if allowed else "implicit-deny"


def _caller_arn(response) -> str:
    account = response.current_account
    partition = get_partition(response.region)
    backend = sts_backends[account][partition]
    _, arn, _ = backend.get_caller_identity(response.get_access_key(), response.region)
    return arn


def _enforce_key_policy(response, action: str, key_id, encryption_context=None) -> None:
    """Raise AccessDeniedException as KMS does when the key policy does not allow `action`.
    Unknown keys are left to moto (NotFoundException)."""
    if not key_id:
        return
    backend = response.kms_backend
    try:
        key = backend.keys[backend.any_id_to_key_id(key_id)]
    except Exception:  # unknown key or alias: moto answers NotFoundException
        return
    caller = _caller_arn(response)
    decision = policy_decision(
        key.policy, caller, action, key.arn, {"encryption_context": encryption_context or {}}
    )
    if decision == "allow":
        return
    why = (
        "with an explicit deny in a resource-based policy"
        if decision == "explicit-deny"
        else f"because no resource-based policy allows the {action} action"
    )
    raise AccessDeniedException(
        f"User: {caller} is not authorized to perform: {action} on resource: {key.arn} {why}"
    )


def _guard(name: str, action: str, key_of):
    """Wrap KmsResponse.<name> so the key policy is checked before moto handles the request."""
    original = getattr(kms_responses.KmsResponse, name)

    def guarded(self):
        for act, key_id, ctx in key_of(self, action):
            _enforce_key_policy(self, act, key_id, ctx)
        return original(self)

    setattr(kms_responses.KmsResponse, name, guarded)


def _key_param(self, action):
    return [(action, self._get_param("KeyId"), self._get_param("EncryptionContext", {}))]


def _decrypt_keys(self, action):
    # KmsResponse._get_param has already base64-decoded CiphertextBlob.
    key_id = self._get_param("KeyId") or _ciphertext_key_id(self._get_param("CiphertextBlob") or b"")
    return [(action, key_id, self._get_param("EncryptionContext", {}))]


def _re_encrypt_keys(self, _action):
    source = self._get_param("SourceKeyId") or _ciphertext_key_id(
        self._get_param("CiphertextBlob") or b""
    )
    return [
        ("kms:ReEncryptFrom", source, self._get_param("SourceEncryptionContext", {})),
        (
            "kms:ReEncryptTo",
            self._get_param("DestinationKeyId"),
            self._get_param("DestinationEncryptionContext", {}),
        ),
    ]


_guard("encrypt", "kms:Encrypt", _key_param)
_guard("decrypt", "kms:Decrypt", _decrypt_keys)
_guard("generate_data_key", "kms:GenerateDataKey", _key_param)
_guard("generate_data_key_without_plaintext", "kms:GenerateDataKeyWithoutPlaintext", _key_param)
_guard("re_encrypt", "kms:ReEncrypt*", _re_encrypt_keys)
_guard("describe_key", "kms:DescribeKey", _key_param)
# moto's own DescribeKey check (Deny statements only) is replaced by the full evaluation above.
kms_responses.KmsResponse._validate_key_policy = lambda self, key_id, action: None


_original_assume_role = sts_responses.TokenResponse.assume_role


def assume_role(self):
    """AssumeRole as AWS grants it: the role must exist and its trust policy allow the caller
    with the ExternalId its condition requires. AWS gives one answer for every refusal (it does
    not tell a caller whether the role exists)."""
    role_arn = self._get_param("RoleArn")
    external_id = self._get_param("ExternalId")
    caller = _caller_arn(self)
    denied = StsAccessDenied(
        f"User: {caller} is not authorized to perform: sts:AssumeRole on resource: {role_arn}"
    )
    account = _account_of(role_arn or "")
    if account is None:
        raise denied
    role = None
    for partition_backends in iam_backends.get(account, {}).values():
        try:
            role = partition_backends.get_role_by_arn(role_arn)
            break
        except Exception:
            continue
    if role is None:
        raise denied
    decision = policy_decision(
        role.assume_role_policy_document,
        caller,
        "sts:AssumeRole",
        role_arn,
        {"external_id": external_id},
    )
    if decision != "allow":
        raise denied
    return _original_assume_role(self)


sts_responses.TokenResponse.assume_role = assume_role


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 (default): any free port")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 in a container, see docker-compose.yml)",
    )
    args = parser.parse_args()
    # One access-log line per request would drown the test output; errors still show.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()  # returns once the socket is bound
    host, port = server.get_host_and_port()
    print(f"moto listening on http://{host}:{port}", flush=True)
    try:
        server._thread.join()  # serve until killed
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
