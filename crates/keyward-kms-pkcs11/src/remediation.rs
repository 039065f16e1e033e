//! What to tell the customer's HSM administrator when a KEK is wrong, missing or disabled.

use cryptoki::error::{Error as CkError, RvError};

use crate::Pkcs11Config;
use crate::uri::Pkcs11KeyUri;

fn id_hex(uri: &Pkcs11KeyUri) -> String {
    uri.id.as_ref().map_or_else(
        || "<hex id, e.g. 4b570001>".to_owned(),
        |id| id.iter().map(|b| format!("{b:02x}")).collect(),
    )
}

fn label(uri: &Pkcs11KeyUri) -> String {
    uri.object
        .clone()
        .unwrap_or_else(|| "<key label>".to_owned())
}

fn token(uri: &Pkcs11KeyUri) -> String {
    uri.token
        .clone()
        .unwrap_or_else(|| "<token label>".to_owned())
}

/// The command that creates a correct KEK: a token (not session) AES-256 secret key, private,
/// sensitive, not extractable, usable for encrypt and decrypt only.
pub(crate) fn create_key(uri: &Pkcs11KeyUri) -> String {
    format!(
        "Create the KEK as a sensitive, non-extractable AES-256 key on the token, e.g. with OpenSC: \
         pkcs11-tool --module <PKCS#11 module> --token-label '{token}' --login \
         --keygen --key-type AES:32 --label '{label}' --id {id} --private --sensitive --usage-decrypt \
         (--usage-decrypt sets CKA_ENCRYPT and CKA_DECRYPT; do not pass --extractable). \
         On a SoftHSM2 token created with `softhsm2-util --init-token --free --label '{token}' ...` the same \
         command works with --module /usr/lib/softhsm/libsofthsm2.so. Then register \
         pkcs11:token={token};id=%{pct}",
        token = token(uri),
        label = label(uri),
        id = id_hex(uri),
        pct = uri.id.as_ref().map_or_else(
            || "xx…".to_owned(),
            |id| id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join("%")
        ),
    )
}

/// For a key that is extractable or not sensitive.
pub(crate) fn not_protected(uri: &Pkcs11KeyUri) -> String {
    format!(
        "This key may already have left the HSM, so Keyward will not use it. Create a new KEK \
         that never can: {create} If you are certain the key was never exported, you may \
         instead lock the existing key down with C_SetAttributeValue (CKA_SENSITIVE=true, \
         CKA_EXTRACTABLE=false; PKCS#11 allows only this direction), e.g. with your HSM \
         vendor's admin tool; pkcs11-tool and softhsm2-util cannot change these attributes.",
        create = create_key(uri)
    )
}

/// For a disabled key.
pub(crate) fn reenable(uri: &Pkcs11KeyUri) -> String {
    format!(
        "The key {uri} has CKA_ENCRYPT and/or CKA_DECRYPT set to false, which Keyward treats as a \
         revocation. If that was not meant as a revocation, set both back to true \
         (C_SetAttributeValue, with your HSM vendor's admin tool)."
    )
}

/// For a registered key that is no longer on the token.
pub(crate) fn key_gone(uri: &Pkcs11KeyUri) -> String {
    format!(
        "Keyward treats a missing KEK as a revocation. If {uri} was destroyed on purpose, this is \
         crypto-shredding and nothing is needed. If not, restore the key object (same CKA_ID and \
         CKA_LABEL) from the token's backup: the revocation monitor restores the tenants once the \
         key unwraps again."
    )
}

/// For a logout by the token.
pub(crate) fn logged_out(config: &Pkcs11Config) -> String {
    format!(
        "A logout of token '{}' is registered as a revocation of the tenants whose calls met it, \
         and Keyward logs in again on its next call (the revocation monitor then restores them). \
         To withdraw Keyward's access for good, change the token's user PIN, or disable \
         (CKA_DECRYPT=false) or destroy the KEK.",
        config.token_label
    )
}

/// For a user PIN the token rejected.
pub(crate) fn pin_rejected(config: &Pkcs11Config) -> String {
    format!(
        "The token '{}' no longer accepts Keyward's user PIN. If the PIN was changed on purpose, \
         this is a revocation. Otherwise put the current user PIN in pkcs11.pin_file: Keyward \
         reads it again on its next call and tries a changed PIN once (no restart needed; with \
         pkcs11.pin_env, restart Keyward with the new value). It never retries a PIN the token \
         rejected.",
        config.token_label
    )
}

/// For a failed call, when there is something specific to say.
pub(crate) fn for_error(e: &CkError, config: &Pkcs11Config, key: &str) -> Option<String> {
    let CkError::Pkcs11(rv, _) = e else {
        return None;
    };
    Some(match rv {
        RvError::KeyFunctionNotPermitted => format!(
            "The token does not permit this use of {key} (CKA_ENCRYPT/CKA_DECRYPT false). If that \
             was not meant as a revocation, set both attributes back to true."
        ),
        RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired => pin_rejected(config),
        RvError::MechanismInvalid | RvError::MechanismParamInvalid => format!(
            "Keyward needs CKM_AES_GCM for C_Encrypt/C_Decrypt with a 12-byte IV and a 128-bit \
             tag; check `pkcs11-tool --module {} --token-label '{}' --list-mechanisms` lists \
             AES-GCM with encrypt and decrypt.",
            config.module_path.display(),
            config.token_label
        ),
        _ => return None,
    })
}
