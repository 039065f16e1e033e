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

This launcher patches `moto.kms.models.KmsBackend` to close both gaps, then serves moto on
127.0.0.1. It prints exactly one line, `moto listening on http://127.0.0.1:PORT`, once the socket
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
