//! The one place where PKCS#11 return values become [`ErrorKind`]s.
//!
//! Classification reads only the typed `CKR_*` return value and the PKCS#11 function that
//! returned it, never message text. The table is reproduced in `docs/providers/pkcs11.md`; keep
//! both in sync.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use keyward_kms::ErrorKind;

/// What the pool must do with the session that returned the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionFate {
    /// The session is fine: return it to the pool.
    Keep,
    /// The session (or the device behind it) is broken: forget it and every idle session, and
    /// open new ones on demand.
    Reset,
}

/// The outcome of classifying one cryptoki error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Classified {
    pub(crate) kind: ErrorKind,
    /// A short explanation (ours, not the module's).
    pub(crate) reason: &'static str,
    pub(crate) fate: SessionFate,
}

const fn c(kind: ErrorKind, reason: &'static str, fate: SessionFate) -> Classified {
    Classified { kind, reason, fate }
}

/// The table.
///
/// `CKR_USER_NOT_LOGGED_IN` is a logout: the provider reports the call that meets it as
/// `Refused` itself and logs in on the next call (`provider.rs`, `LoginState`); it reaches this
/// function only when a fresh login did not cure it, and is `Refused` then too.
pub(crate) fn classify_rv(rv: RvError, function: Function) -> Classified {
    use ErrorKind::*;
    use RvError as R;
    use SessionFate::*;
    match rv {
        // --- the customer said no: the key exists but may not be used -------------------------
        R::KeyFunctionNotPermitted => c(
            Refused,
            "the key's CKA_ENCRYPT/CKA_DECRYPT attribute does not permit this operation (the key is disabled)",
            Keep,
        ),
        R::KeyHandleInvalid | R::ObjectHandleInvalid => c(
            Refused,
            "the key object was destroyed or became invalid while in use",
            Keep,
        ),
        R::UserNotLoggedIn => c(
            Refused,
            "the token refused the operation as not logged in (logged out)",
            Keep,
        ),
        R::PinIncorrect | R::PinLocked | R::PinExpired | R::PinInvalid | R::PinLenRange => c(
            Refused,
            "the token rejected Keyward's user PIN (changed, locked or expired)",
            Keep,
        ),
        R::UserPinNotInitialized => c(Refused, "the token's user PIN is not initialised", Keep),
        R::KeyUnextractable | R::KeyNotWrappable => {
            c(Refused, "the token refused to use the key this way", Keep)
        }
        // --- the wrapped key is not for this key / context -----------------------------------
        R::EncryptedDataInvalid | R::EncryptedDataLenRange => c(
            InvalidCiphertext,
            "the wrapped key is corrupted, or was made under another key or wrap context",
            Keep,
        ),
        // SoftHSM2 (and some HSMs) report a failed AES-GCM tag check on C_Decrypt as
        // CKR_GENERAL_ERROR / CKR_FUNCTION_FAILED rather than CKR_ENCRYPTED_DATA_INVALID.
        // The session is still sound (the module resets the operation).
        R::GeneralError | R::FunctionFailed if matches!(function, Function::Decrypt) => c(
            InvalidCiphertext,
            "the token could not authenticate the wrapped key (AES-GCM tag mismatch: corrupted, or made under another key or wrap context)",
            Keep,
        ),
        // --- the device or session is broken: not a revocation --------------------------------
        R::SessionHandleInvalid | R::SessionClosed => c(
            Unavailable,
            "the PKCS#11 session was closed or became invalid (token reset or restarted)",
            Reset,
        ),
        R::DeviceError
        | R::DeviceMemory
        | R::DeviceRemoved
        | R::TokenNotPresent
        | R::TokenNotRecognized
        | R::GeneralError
        | R::FunctionFailed
        | R::CryptokiNotInitialized => {
            c(Unavailable, "the token or its device is unavailable", Reset)
        }
        R::HostMemory | R::CantLock | R::FunctionCanceled | R::SessionCount => c(
            Unavailable,
            "the PKCS#11 module could not serve the call now",
            Keep,
        ),
        R::OperationActive | R::OperationNotInitialized => c(
            Unavailable,
            "the session was left in an unexpected operation state",
            Reset,
        ),
        // --- our side is wrong ----------------------------------------------------------------
        R::MechanismInvalid | R::MechanismParamInvalid | R::FunctionNotSupported => c(
            Misconfigured,
            "the token does not support AES-GCM (CKM_AES_GCM) with these parameters",
            Keep,
        ),
        R::KeyTypeInconsistent | R::KeySizeRange => {
            c(Misconfigured, "the key is not an AES-256 key", Keep)
        }
        R::SlotIdInvalid => c(Misconfigured, "the slot does not exist", Reset),
        _ => c(
            Unavailable,
            "the PKCS#11 module returned an unexpected error",
            Keep,
        ),
    }
}

/// Classifies any cryptoki error; non-`CKR_*` errors are ours or the module's.
pub(crate) fn classify(e: &CkError) -> Classified {
    use ErrorKind::*;
    match e {
        CkError::Pkcs11(rv, function) => classify_rv(*rv, *function),
        CkError::LibraryLoading(_) | CkError::MissingSymbol(_) | CkError::NullFunctionPointer => c(
            Misconfigured,
            "the PKCS#11 module cannot be loaded or lacks a required function",
            SessionFate::Keep,
        ),
        _ => c(
            Unavailable,
            "the PKCS#11 module returned data Keyward could not convert",
            SessionFate::Keep,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use ErrorKind::*;
        let cases = [
            (
                RvError::KeyFunctionNotPermitted,
                Function::Encrypt,
                Refused,
                SessionFate::Keep,
            ),
            (
                RvError::KeyHandleInvalid,
                Function::Decrypt,
                Refused,
                SessionFate::Keep,
            ),
            (
                RvError::UserNotLoggedIn,
                Function::Decrypt,
                Refused,
                SessionFate::Keep,
            ),
            (
                RvError::EncryptedDataInvalid,
                Function::Decrypt,
                InvalidCiphertext,
                SessionFate::Keep,
            ),
            (
                RvError::EncryptedDataLenRange,
                Function::Decrypt,
                InvalidCiphertext,
                SessionFate::Keep,
            ),
            (
                RvError::GeneralError,
                Function::Decrypt,
                InvalidCiphertext,
                SessionFate::Keep,
            ),
            (
                RvError::GeneralError,
                Function::Encrypt,
                Unavailable,
                SessionFate::Reset,
            ),
            (
                RvError::SessionHandleInvalid,
                Function::Encrypt,
                Unavailable,
                SessionFate::Reset,
            ),
            (
                RvError::SessionClosed,
                Function::FindObjects,
                Unavailable,
                SessionFate::Reset,
            ),
            (
                RvError::DeviceError,
                Function::Decrypt,
                Unavailable,
                SessionFate::Reset,
            ),
            (
                RvError::DeviceRemoved,
                Function::Decrypt,
                Unavailable,
                SessionFate::Reset,
            ),
            (
                RvError::TokenNotPresent,
                Function::OpenSession,
                Unavailable,
                SessionFate::Reset,
            ),
            (
                RvError::MechanismInvalid,
                Function::EncryptInit,
                Misconfigured,
                SessionFate::Keep,
            ),
            (
                RvError::PinIncorrect,
                Function::Login,
                Refused,
                SessionFate::Keep,
            ),
        ];
        for (rv, f, kind, fate) in cases {
            let got = classify_rv(rv, f);
            assert_eq!((got.kind, got.fate), (kind, fate), "{rv:?} from {f:?}");
        }
    }

    #[test]
    fn no_transient_kind_is_a_revocation() {
        for rv in [
            RvError::SessionClosed,
            RvError::DeviceError,
            RvError::HostMemory,
        ] {
            assert!(
                !classify_rv(rv, Function::Encrypt)
                    .kind
                    .is_revocation_signal()
            );
        }
    }
}
