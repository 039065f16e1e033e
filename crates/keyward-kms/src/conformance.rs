//! The provider conformance kit: one suite of checks that every [`KeyProvider`] must pass.
//!
//! A provider's test suite implements [`Harness`] (how to reach a usable key, a missing key, and
//! how to disable and re-enable a key at the KMS) and calls [`run_all`], or individual
//! `check_*` functions. A failed check panics with the check's name and what went wrong.
//!
//! The checks pin the behaviour the server relies on: round trips, binding of the
//! [`WrapContext`], tamper detection, and above all the error kinds that drive revocation
//! (`Refused` for a disabled key, `NotFound` for a missing one, or `Refused` where the provider
//! declares `missing_keys_refused`).
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "test support code: a failed conformance check panics with the check's name, like an assertion"
)]

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use keyward_envelope::{KeyId, SecretKey, TenantId, WrappedKey};

use crate::{ErrorKind, KeyProvider, KeyRef, KeyState, ProviderError, Purpose, WrapContext};

/// How the conformance checks reach a provider and drive its KMS.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The provider under test.
    fn provider(&self) -> Arc<dyn KeyProvider>;

    /// An enabled key. Checks disable it temporarily and always re-enable it.
    fn usable_key(&self) -> KeyRef;

    /// A well-formed reference to a key that does not exist.
    fn missing_key(&self) -> KeyRef;

    /// Another enabled key of the same provider (same account, vault or token as
    /// [`Harness::usable_key`]), which the provider may use but which did not wrap anything the
    /// checks unwrap under [`Harness::usable_key`].
    fn other_key(&self) -> KeyRef;

    /// Makes the KMS refuse `key`, as a customer disabling it would. Must return only once the
    /// KMS refuses (wait out any propagation delay here, by polling, not by sleeping blindly).
    async fn disable(&self, key: &KeyRef);

    /// Undoes [`Harness::disable`]; must return only once the key works again.
    async fn enable(&self, key: &KeyRef);
}

/// Runs every check, in order; panics with the name of the first check that fails.
pub async fn run_all(h: &dyn Harness) {
    check_round_trip(h).await;
    check_generate_round_trip(h).await;
    check_wraps_are_randomised(h).await;
    check_context_binding(h).await;
    check_tampered_wrapped_key(h).await;
    check_wrong_key(h).await;
    check_missing_key(h).await;
    check_describe_usable_key(h).await;
    check_disabled_key_is_refused(h).await;
    check_reenabled_key_unwraps_earlier_wraps(h).await;
}

/// wrap then unwrap under the same context returns the same key bytes, for every purpose.
pub async fn check_round_trip(h: &dyn Harness) {
    const CHECK: &str = "round_trip";
    let (p, kek) = (h.provider(), h.usable_key());
    for purpose in [Purpose::TenantKey, Purpose::Canary] {
        let ctx = context(TENANT_A, purpose);
        let key = new_key();
        let wrapped = ok(CHECK, "wrap", p.wrap(&kek, &key, &ctx).await);
        ensure(
            CHECK,
            !contains(wrapped.as_bytes(), key.expose_secret()),
            format_args!("the wrapped form ({purpose}) contains the plaintext key"),
        );
        let back = ok(CHECK, "unwrap", p.unwrap(&kek, &wrapped, &ctx).await);
        ensure(
            CHECK,
            back.expose_secret() == key.expose_secret(),
            format_args!("unwrap ({purpose}) returned a different key"),
        );
    }
}

/// generate returns a key and its wrapped form, which unwraps to that key; keys differ.
pub async fn check_generate_round_trip(h: &dyn Harness) {
    const CHECK: &str = "generate_round_trip";
    let (p, kek) = (h.provider(), h.usable_key());
    let ctx = context(TENANT_A, Purpose::TenantKey);
    let (key, wrapped) = ok(CHECK, "generate", p.generate(&kek, &ctx).await);
    let back = ok(CHECK, "unwrap", p.unwrap(&kek, &wrapped, &ctx).await);
    ensure(
        CHECK,
        back.expose_secret() == key.expose_secret(),
        "unwrap of a generated key returned a different key",
    );
    let (other, _) = ok(CHECK, "second generate", p.generate(&kek, &ctx).await);
    ensure(
        CHECK,
        other.expose_secret() != key.expose_secret(),
        "two generate calls returned the same key",
    );
}

/// Two wraps of the same key under the same context differ, and both unwrap to the key.
pub async fn check_wraps_are_randomised(h: &dyn Harness) {
    const CHECK: &str = "wraps_are_randomised";
    let (p, kek) = (h.provider(), h.usable_key());
    let ctx = context(TENANT_A, Purpose::TenantKey);
    let key = new_key();
    let first = ok(CHECK, "first wrap", p.wrap(&kek, &key, &ctx).await);
    let second = ok(CHECK, "second wrap", p.wrap(&kek, &key, &ctx).await);
    ensure(
        CHECK,
        first != second,
        "two wraps of the same key are identical",
    );
    for (which, wrapped) in [("first", &first), ("second", &second)] {
        let back = ok(CHECK, "unwrap", p.unwrap(&kek, wrapped, &ctx).await);
        ensure(
            CHECK,
            back.expose_secret() == key.expose_secret(),
            format_args!("unwrap of the {which} wrap returned a different key"),
        );
    }
}

/// A wrapped key does not unwrap under another tenant, tenant key id or purpose: the error is
/// `InvalidCiphertext` (or `Refused`, where the KMS reports a context mismatch so), never `Ok`.
pub async fn check_context_binding(h: &dyn Harness) {
    const CHECK: &str = "context_binding";
    let (p, kek) = (h.provider(), h.usable_key());
    let tenant_a = tenant(TENANT_A);
    let key_id = key_id();
    let ctx = WrapContext::new(&tenant_a, &key_id, Purpose::TenantKey);
    let key = new_key();
    let wrapped = ok(CHECK, "wrap", p.wrap(&kek, &key, &ctx).await);

    let others = [
        (
            "another tenant",
            WrapContext::new(&tenant(TENANT_B), &key_id, Purpose::TenantKey),
        ),
        (
            "another tenant key id",
            WrapContext::new(&tenant_a, &self::key_id(), Purpose::TenantKey),
        ),
        (
            "another purpose",
            WrapContext::new(&tenant_a, &key_id, Purpose::Canary),
        ),
    ];
    for (what, other) in others {
        let e = err(
            CHECK,
            format_args!("unwrap under {what}"),
            p.unwrap(&kek, &wrapped, &other).await,
        );
        expect_kind(
            CHECK,
            format_args!("unwrap under {what}"),
            &e,
            &[ErrorKind::InvalidCiphertext, ErrorKind::Refused],
        );
    }
    let back = ok(
        CHECK,
        "unwrap under the original context",
        p.unwrap(&kek, &wrapped, &ctx).await,
    );
    ensure(
        CHECK,
        back.expose_secret() == key.expose_secret(),
        "unwrap under the original context returned a different key",
    );
}

/// Tampered wrapped bytes (a flipped bit anywhere, truncated, extended, empty) never unwrap.
pub async fn check_tampered_wrapped_key(h: &dyn Harness) {
    const CHECK: &str = "tampered_wrapped_key";
    let (p, kek) = (h.provider(), h.usable_key());
    let ctx = context(TENANT_A, Purpose::TenantKey);
    let wrapped = ok(CHECK, "wrap", p.wrap(&kek, &new_key(), &ctx).await);
    let bytes = wrapped.as_bytes();
    ensure(
        CHECK,
        !bytes.is_empty(),
        "wrap returned an empty wrapped key",
    );

    let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
    for at in [0, bytes.len() / 2, bytes.len() - 1] {
        let mut flipped = bytes.to_vec();
        flipped[at] ^= 0x01;
        variants.push((format!("bit 0 of byte {at} flipped"), flipped));
    }
    variants.push((
        "truncated by one byte".into(),
        bytes[..bytes.len() - 1].to_vec(),
    ));
    variants.push((
        "truncated to half".into(),
        bytes[..bytes.len() / 2].to_vec(),
    ));
    let mut extended = bytes.to_vec();
    extended.push(0);
    variants.push(("extended by one byte".into(), extended));
    variants.push(("empty".into(), Vec::new()));

    for (what, tampered) in variants {
        let tampered = WrappedKey::new(tampered);
        let e = err(
            CHECK,
            format_args!("unwrap of a wrapped key {what}"),
            p.unwrap(&kek, &tampered, &ctx).await,
        );
        ensure(
            CHECK,
            !e.kind().is_transient(),
            format_args!(
                "unwrap of a wrapped key {what} failed with transient kind {}, which would be retried: {e}",
                e.kind()
            ),
        );
    }
}

/// A key wrapped under one KEK does not unwrap under another usable KEK of the same provider,
/// in either direction: the error is `InvalidCiphertext` (a wrong or corrupted wrapped key), never
/// `Ok`, never `Refused` (a revocation signal: a wrapped key handed to the wrong KEK must not
/// revoke the tenant) and never transient (it would be retried for ever). Both keys still unwrap
/// their own wraps afterwards.
pub async fn check_wrong_key(h: &dyn Harness) {
    const CHECK: &str = "wrong_key";
    let (p, kek, other) = (h.provider(), h.usable_key(), h.other_key());
    ensure(
        CHECK,
        kek != other,
        format_args!("the harness's other key is the usable key ({kek})"),
    );
    let ctx = context(TENANT_A, Purpose::TenantKey);
    let key = new_key();
    let under_kek = ok(
        CHECK,
        "wrap under the usable key",
        p.wrap(&kek, &key, &ctx).await,
    );
    let under_other = ok(
        CHECK,
        "wrap under the other key",
        p.wrap(&other, &key, &ctx).await,
    );
    for (what, wrong, wrapped) in [
        (
            "unwrap under the other key of a key wrapped under the usable key",
            &other,
            &under_kek,
        ),
        (
            "unwrap under the usable key of a key wrapped under the other key",
            &kek,
            &under_other,
        ),
    ] {
        let e = err(CHECK, what, p.unwrap(wrong, wrapped, &ctx).await);
        expect_kind(CHECK, what, &e, &[ErrorKind::InvalidCiphertext]);
    }
    for (what, right, wrapped) in [
        ("usable", &kek, &under_kek),
        ("other", &other, &under_other),
    ] {
        let back = ok(
            CHECK,
            format_args!("unwrap under the {what} key of its own wrap"),
            p.unwrap(right, wrapped, &ctx).await,
        );
        ensure(
            CHECK,
            back.expose_secret() == key.expose_secret(),
            format_args!("unwrap under the {what} key returned a different key"),
        );
    }
}

/// A key that does not exist is `NotFound` on wrap, unwrap and describe (not `Refused`: a typo
/// in a key reference must not look like a revocation). A provider with
/// [`crate::Capabilities::missing_keys_refused`] reports it `NotFound` from `canonicalize`
/// (onboarding, where the typo is caught) and `Refused` from wrap, unwrap and describe (a
/// registered key that is gone).
pub async fn check_missing_key(h: &dyn Harness) {
    const CHECK: &str = "missing_key";
    let (p, missing) = (h.provider(), h.missing_key());
    let ctx = context(TENANT_A, Purpose::TenantKey);
    let expected = if p.capabilities().missing_keys_refused {
        let e = err(CHECK, "canonicalize", p.canonicalize(&missing).await);
        expect_kind(CHECK, "canonicalize", &e, &[ErrorKind::NotFound]);
        ErrorKind::Refused
    } else {
        ErrorKind::NotFound
    };

    let e = err(CHECK, "wrap", p.wrap(&missing, &new_key(), &ctx).await);
    expect_kind(CHECK, "wrap", &e, &[expected]);

    let wrapped = ok(
        CHECK,
        "wrap under the usable key",
        p.wrap(&h.usable_key(), &new_key(), &ctx).await,
    );
    let e = err(CHECK, "unwrap", p.unwrap(&missing, &wrapped, &ctx).await);
    expect_kind(CHECK, "unwrap", &e, &[expected]);

    let e = err(CHECK, "describe", p.describe(&missing).await);
    expect_kind(CHECK, "describe", &e, &[expected]);
}

/// describe on a usable key reports `Enabled`.
pub async fn check_describe_usable_key(h: &dyn Harness) {
    const CHECK: &str = "describe_usable_key";
    let status = ok(
        CHECK,
        "describe",
        h.provider().describe(&h.usable_key()).await,
    );
    ensure(
        CHECK,
        status.state == KeyState::Enabled,
        format_args!("describe reported {} for a usable key", status.state),
    );
}

/// A disabled key refuses wrap and unwrap with `Refused`, a revocation signal, and describe
/// reports it `Disabled` (or fails with `Refused`). The key is re-enabled before asserting.
pub async fn check_disabled_key_is_refused(h: &dyn Harness) {
    const CHECK: &str = "disabled_key_is_refused";
    let (p, kek) = (h.provider(), h.usable_key());
    let ctx = context(TENANT_A, Purpose::TenantKey);
    let wrapped = ok(
        CHECK,
        "wrap before disabling",
        p.wrap(&kek, &new_key(), &ctx).await,
    );

    h.disable(&kek).await;
    let wrap_result = p.wrap(&kek, &new_key(), &ctx).await;
    let unwrap_result = p.unwrap(&kek, &wrapped, &ctx).await.map(drop);
    let describe_result = p.describe(&kek).await;
    h.enable(&kek).await;

    for (what, result) in [("wrap", wrap_result.map(drop)), ("unwrap", unwrap_result)] {
        let e = err(CHECK, format_args!("{what} with a disabled key"), result);
        expect_kind(
            CHECK,
            format_args!("{what} with a disabled key"),
            &e,
            &[ErrorKind::Refused],
        );
        ensure(
            CHECK,
            e.kind().is_revocation_signal(),
            format_args!(
                "{what} with a disabled key: {} is not a revocation signal",
                e.kind()
            ),
        );
    }
    match describe_result {
        Ok(status) => ensure(
            CHECK,
            status.state == KeyState::Disabled,
            format_args!("describe reported {} for a disabled key", status.state),
        ),
        Err(e) => expect_kind(
            CHECK,
            "describe of a disabled key",
            &e,
            &[ErrorKind::Refused],
        ),
    }
}

/// A key wrapped before the KEK was disabled unwraps again once it is re-enabled.
pub async fn check_reenabled_key_unwraps_earlier_wraps(h: &dyn Harness) {
    const CHECK: &str = "reenabled_key_unwraps_earlier_wraps";
    let (p, kek) = (h.provider(), h.usable_key());
    let ctx = context(TENANT_A, Purpose::TenantKey);
    let key = new_key();
    let wrapped = ok(
        CHECK,
        "wrap before disabling",
        p.wrap(&kek, &key, &ctx).await,
    );

    h.disable(&kek).await;
    h.enable(&kek).await;

    let back = ok(
        CHECK,
        "unwrap after re-enabling",
        p.unwrap(&kek, &wrapped, &ctx).await,
    );
    ensure(
        CHECK,
        back.expose_secret() == key.expose_secret(),
        "unwrap after re-enabling returned a different key",
    );
    ok(
        CHECK,
        "wrap after re-enabling",
        p.wrap(&kek, &key, &ctx).await,
    );
}

const TENANT_A: &str = "acme";
const TENANT_B: &str = "globex";

fn tenant(name: &str) -> TenantId {
    TenantId::try_from(name).expect("conformance kit: the fixed tenant ids are valid")
}

fn key_id() -> KeyId {
    KeyId::generate().expect("conformance kit: the system RNG works")
}

fn context(tenant_name: &str, purpose: Purpose) -> WrapContext {
    WrapContext::new(&tenant(tenant_name), &key_id(), purpose)
}

fn new_key() -> SecretKey {
    SecretKey::generate().expect("conformance kit: the system RNG works")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[track_caller]
fn fail(check: &str, msg: impl fmt::Display) -> ! {
    panic!("provider conformance check `{check}` failed: {msg}")
}

#[track_caller]
fn ensure(check: &str, cond: bool, msg: impl fmt::Display) {
    if !cond {
        fail(check, msg);
    }
}

#[track_caller]
fn ok<T>(check: &str, what: impl fmt::Display, result: Result<T, ProviderError>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => fail(check, format_args!("{what} failed: {}", chain(&e))),
    }
}

#[track_caller]
fn err<T>(check: &str, what: impl fmt::Display, result: Result<T, ProviderError>) -> ProviderError {
    match result {
        Ok(_) => fail(check, format_args!("{what} succeeded but must fail")),
        Err(e) => e,
    }
}

#[track_caller]
fn expect_kind(check: &str, what: impl fmt::Display, e: &ProviderError, allowed: &[ErrorKind]) {
    if !allowed.contains(&e.kind()) {
        let allowed: Vec<_> = allowed.iter().map(|k| k.as_str()).collect();
        fail(
            check,
            format_args!(
                "{what} failed with kind {}, expected {}: {}",
                e.kind(),
                allowed.join(" or "),
                chain(e)
            ),
        );
    }
}

/// The error and its sources, for failure messages.
fn chain(e: &ProviderError) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
