//! The token's keys as the provider sees them: the token found by its label, a key found by
//! the URI's label or id (exactly one), its attributes read, and the checks that it may wrap and
//! unwrap without ever leaving the token (docs/providers/pkcs11.md); and the failures of one
//! session, before classification.

use std::fmt;

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState};
use cryptoki::slot::Slot;
use keyward_kms::{ErrorKind, KeyState, KeyStatus, ProviderError};

use crate::Pkcs11Config;
use crate::classify::classify;
use crate::remediation;
use crate::uri::Pkcs11KeyUri;
use crate::wrapped_key_format::KEY_LEN;

/// Whether the session can see and use private objects.
pub(crate) fn logged_in(state: SessionState) -> bool {
    matches!(state, SessionState::RoUser | SessionState::RwUser)
}

/// The PIN errors of `C_Login`.
pub(crate) fn is_pin_error(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::PinIncorrect
            | RvError::PinInvalid
            | RvError::PinLenRange
            | RvError::PinLocked
            | RvError::PinExpired
            | RvError::UserPinNotInitialized
    )
}

/// What a missing key means for the operation at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Absent {
    /// Onboarding: the reference names nothing (a typo, or a key not created yet).
    NotFound,
    /// A registered key is gone: destroyed or removed from the token.
    Refused,
}

/// Why an operation on one session failed, before classification.
pub(crate) enum Fail {
    /// A cryptoki error, to classify.
    Ck(CkError),
    /// The session is not logged in (private objects are invisible to it).
    NotLoggedIn,
    /// Already a provider error (key not found, disabled, wrong attributes, bad wrapped key).
    Done(ProviderError),
}

impl From<CkError> for Fail {
    fn from(e: CkError) -> Self {
        Fail::Ck(e)
    }
}

impl From<ProviderError> for Fail {
    fn from(e: ProviderError) -> Self {
        Fail::Done(e)
    }
}

/// The attributes Keyward reads from a KEK.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyAttrs {
    pub(crate) key_type: Option<KeyType>,
    pub(crate) value_len: Option<u64>,
    pub(crate) sensitive: Option<bool>,
    pub(crate) extractable: Option<bool>,
    pub(crate) private: Option<bool>,
    pub(crate) encrypt: Option<bool>,
    pub(crate) decrypt: Option<bool>,
    pub(crate) label: Vec<u8>,
    pub(crate) id: Vec<u8>,
}

pub(crate) const ATTRS: [AttributeType; 9] = [
    AttributeType::KeyType,
    AttributeType::ValueLen,
    AttributeType::Sensitive,
    AttributeType::Extractable,
    AttributeType::Private,
    AttributeType::Encrypt,
    AttributeType::Decrypt,
    AttributeType::Label,
    AttributeType::Id,
];

/// The text of a cryptoki error (which is not `Send + Sync` once boxed with its library error).
#[derive(Debug)]
pub(crate) struct CkErrorText(pub(crate) String);

impl fmt::Display for CkErrorText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CkErrorText {}

pub(crate) fn start_error(e: &CkError, what: &str, config: &Pkcs11Config) -> ProviderError {
    let c = classify(e);
    ProviderError::new(
        c.kind,
        format!(
            "{what} failed for module {}: {}",
            config.module_path.display(),
            c.reason
        ),
    )
    .with_source(CkErrorText(e.to_string()))
}

/// The one slot whose token has the configured label.
pub(crate) fn find_token(ctx: &Pkcs11, config: &Pkcs11Config) -> Result<Slot, ProviderError> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| start_error(&e, "C_GetSlotList", config))?;
    let mut labels = Vec::new();
    let mut found = Vec::new();
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| start_error(&e, "C_GetTokenInfo", config))?;
        let label = info.label().trim_end().to_owned();
        if label == config.token_label {
            found.push(slot);
        }
        labels.push(label);
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(ProviderError::new(
            ErrorKind::Misconfigured,
            format!(
                "no token labelled '{}' in module {}; tokens present: [{}]",
                config.token_label,
                config.module_path.display(),
                labels.join(", ")
            ),
        )
        .with_remediation(format!(
            "Set pkcs11.token_label to the token's label as listed by \
             `pkcs11-tool --module {} --list-token-slots`, or create the token \
             (SoftHSM2: softhsm2-util --init-token --free --label {} --so-pin <SO PIN> --pin <user PIN>).",
            config.module_path.display(),
            config.token_label
        ))),
        _ => Err(ProviderError::new(
            ErrorKind::Misconfigured,
            format!(
                "{} tokens are labelled '{}'; token labels must be unique",
                found.len(),
                config.token_label
            ),
        )
        .with_remediation("Give each token a unique label (re-initialise one under a new label).")),
    }
}

/// Finds the one secret key the URI names; `absent` says what a missing key is.
pub(crate) fn find_key(
    session: &Session,
    uri: &Pkcs11KeyUri,
    absent: Absent,
) -> Result<ObjectHandle, Fail> {
    let mut template = vec![Attribute::Class(ObjectClass::SECRET_KEY)];
    if let Some(label) = &uri.object {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    let handles = session.find_objects(&template)?;
    match handles.as_slice() {
        [h] => Ok(*h),
        [] => {
            // A session that is not logged in sees no private objects: that is not "missing".
            if !logged_in(session.get_session_info()?.session_state()) {
                return Err(Fail::NotLoggedIn);
            }
            Err(Fail::Done(match absent {
                Absent::NotFound => ProviderError::new(
                    ErrorKind::NotFound,
                    format!("no secret key matches {uri} on the token (never created, or destroyed)"),
                )
                .with_remediation(remediation::create_key(uri)),
                Absent::Refused => ProviderError::new(
                    ErrorKind::Refused,
                    format!(
                        "no secret key matches {uri} on the token any more: the key was destroyed or removed (PKCS#11 cannot tell which); nothing wrapped under it can be unwrapped"
                    ),
                )
                .with_remediation(remediation::key_gone(uri)),
            }))
        }
        many => Err(Fail::Done(
            ProviderError::new(
                ErrorKind::Misconfigured,
                format!(
                    "{} secret keys match {uri}; a KEK reference must match exactly one",
                    many.len()
                ),
            )
            .with_remediation(
                "Give the KEK a unique CKA_ID and reference it with id=%xx… \
                 (pkcs11-tool --set-id <hex> --type secrkey --label <label> changes a key's id).",
            ),
        )),
    }
}

pub(crate) fn read_attrs(session: &Session, handle: ObjectHandle) -> Result<KeyAttrs, Fail> {
    let mut a = KeyAttrs::default();
    for attr in session.get_attributes(handle, &ATTRS)? {
        match attr {
            Attribute::KeyType(t) => a.key_type = Some(t),
            Attribute::ValueLen(n) => a.value_len = Some(u64::from(n)),
            Attribute::Sensitive(b) => a.sensitive = Some(b),
            Attribute::Extractable(b) => a.extractable = Some(b),
            Attribute::Private(b) => a.private = Some(b),
            Attribute::Encrypt(b) => a.encrypt = Some(b),
            Attribute::Decrypt(b) => a.decrypt = Some(b),
            Attribute::Label(l) => a.label = l,
            Attribute::Id(i) => a.id = i,
            _ => {}
        }
    }
    Ok(a)
}

/// Checks that the key is a private, sensitive, non-extractable AES-256 key (onboarding rules).
pub(crate) fn check_protected(a: &KeyAttrs, uri: &Pkcs11KeyUri) -> Result<(), ProviderError> {
    if a.key_type != Some(KeyType::AES) || a.value_len != Some(KEY_LEN as u64) {
        return Err(ProviderError::new(
            ErrorKind::Misconfigured,
            format!(
                "{uri} is not an AES-256 secret key (key type {:?}, {} bytes)",
                a.key_type,
                a.value_len
                    .map_or_else(|| "unknown".to_owned(), |n| n.to_string())
            ),
        )
        .with_remediation(remediation::create_key(uri)));
    }
    if a.sensitive != Some(true) || a.extractable != Some(false) {
        return Err(ProviderError::new(
            ErrorKind::Misconfigured,
            format!(
                "{uri} can leave the HSM (CKA_SENSITIVE={}, CKA_EXTRACTABLE={}); a Keyward KEK must be CKA_SENSITIVE=true and CKA_EXTRACTABLE=false",
                show(a.sensitive),
                show(a.extractable)
            ),
        )
        .with_remediation(remediation::not_protected(uri)));
    }
    if a.private != Some(true) {
        return Err(ProviderError::new(
            ErrorKind::Misconfigured,
            format!(
                "{uri} is a public object (CKA_PRIVATE={}): any application that can open a session on the token can use it without the PIN; a Keyward KEK must be CKA_PRIVATE=true",
                show(a.private)
            ),
        )
        .with_remediation(remediation::create_key(uri)));
    }
    Ok(())
}

pub(crate) fn show(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "true",
        Some(false) => "false",
        None => "unknown",
    }
}

pub(crate) fn disabled(uri: &Pkcs11KeyUri, a: &KeyAttrs, what: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::Refused,
        format!(
            "{what} on {uri} refused: the key is disabled (CKA_ENCRYPT={}, CKA_DECRYPT={})",
            show(a.encrypt),
            show(a.decrypt)
        ),
    )
    .with_remediation(remediation::reenable(uri))
}

pub(crate) fn status_of(a: &KeyAttrs) -> KeyStatus {
    match (a.encrypt, a.decrypt) {
        (Some(true), Some(true)) => KeyStatus::new(KeyState::Enabled),
        (_, Some(true)) => KeyStatus::new(KeyState::Disabled)
            .with_detail("CKA_ENCRYPT is false: no new wraps; existing wrapped keys still unwrap"),
        (Some(true), _) => KeyStatus::new(KeyState::Disabled)
            .with_detail("CKA_DECRYPT is false: nothing wrapped under the key can be unwrapped"),
        _ => {
            KeyStatus::new(KeyState::Disabled).with_detail("CKA_ENCRYPT and CKA_DECRYPT are false")
        }
    }
}
