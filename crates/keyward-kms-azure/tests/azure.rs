//! The provider against the Key Vault test double: onboarding failures and their messages,
//! revocation by key attributes, rotation, classification through the real SDK client, and the
//! double's own behaviour (it rejects what Key Vault rejects).
#![allow(clippy::unwrap_used, reason = "test code fails loudly on purpose")]

use std::time::Duration;

use keyward_envelope::{KeyId, SecretKey, TenantId, WrappedKey};
use keyward_kms::{ErrorKind, KeyProvider, KeyRef, KeyState, ProviderKind, Purpose, WrapContext};
use keyward_kms_azure::{AzureCredentialConfig, AzureKeyVaultProvider, VaultKind};
use keyward_test_support::azure::{CLIENT_ID, Call, KeyVaultDouble, LOGIN_HOST, TENANT_ID};
use serde_json::Value;

fn ctx() -> WrapContext {
    WrapContext::new(
        &TenantId::try_from("acme").unwrap(),
        &KeyId::from_bytes([3; 16]),
        Purpose::TenantKey,
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn the_sdk_probes_with_the_challenge_then_uses_one_token() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    let p = double.provider();
    let kek = double.create_rsa_key("kek");
    let key = SecretKey::generate().unwrap();
    let wrapped = p.wrap(&kek, &key, &ctx()).await.unwrap();
    assert_eq!(
        double.calls(Call::Challenge),
        1,
        "one unauthenticated probe"
    );
    assert_eq!(double.calls(Call::Token), 1);
    assert_eq!(
        (double.calls(Call::GetKey), double.calls(Call::WrapKey)),
        (1, 1)
    );
    let back = p.unwrap(&kek, &wrapped, &ctx()).await.unwrap();
    assert_eq!(back.expose_secret(), key.expose_secret());
    assert_eq!(double.calls(Call::Token), 1, "the token is cached");
    assert_eq!(
        (double.calls(Call::GetKey), double.calls(Call::UnwrapKey)),
        (2, 1)
    );
    // The wrapped form records the key version that wrapped it (layout in wrapped_key_format.rs).
    let version = double.versions("kek").pop().unwrap();
    assert_eq!(&wrapped.as_bytes()[3..35], version.as_bytes());
    assert_eq!(wrapped.as_bytes().len(), 353);
}

#[tokio::test]
async fn onboarding_failures_carry_what_to_do() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    let p = double.provider();
    let kek = double.create_rsa_key("kek");

    // No role assignment: Refused, with the exact az command naming Keyward's client id.
    double.deny("kek", true);
    let e = p.canonicalize(&kek).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(
        e.message().contains("HTTP 403 Forbidden/ForbiddenByRbac"),
        "{e}"
    );
    let r = e.remediation().unwrap();
    assert!(
        r.contains(&format!(
            "az role assignment create --role \"Key Vault Crypto Service Encryption User\" --assignee {CLIENT_ID} --scope \"$(az keyvault show --name kwtest --query id -o tsv)/keys/kek\""
        )),
        "{r}"
    );
    double.deny("kek", false);
    assert_eq!(p.canonicalize(&kek).await.unwrap(), kek);

    // A missing key: NotFound, with how to create one.
    let e = p
        .canonicalize(&double.key_ref("nope"))
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.remediation()
            .unwrap()
            .contains("az keyvault key create --vault-name kwtest --name nope --kty RSA-HSM")
    );

    // A malformed id: Misconfigured, naming the expected form, before any call.
    let before = double.calls(Call::GetKey);
    let e = p
        .canonicalize(&KeyRef::new(
            ProviderKind::AzureKeyVault,
            "https://kwtest.vault.azure.net/secrets/kek",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Misconfigured);
    assert!(
        e.message()
            .contains("https://{vault}.vault.azure.net/keys/{name}[/{version}]"),
        "{e}"
    );
    assert_eq!(double.calls(Call::GetKey), before);

    // Canonical form: lower-case host.
    let upper = KeyRef::new(
        ProviderKind::AzureKeyVault,
        "https://KWTEST.vault.azure.net/keys/kek",
    );
    assert_eq!(p.canonicalize(&upper).await.unwrap(), kek);

    // Wrong client secret: Misconfigured (our side), with the credentials remediation.
    let mut config = double.config();
    let bad_secret = double.dir().join("bad-secret");
    std::fs::write(&bad_secret, "wrong").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bad_secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    config.credential = Some(AzureCredentialConfig::ClientSecret {
        tenant_id: TENANT_ID.into(),
        client_id: CLIENT_ID.into(),
        secret_file: Some(bad_secret),
        secret_env: None,
    });
    let e = AzureKeyVaultProvider::new(config)
        .unwrap()
        .describe(&kek)
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Misconfigured, "{e}");
    assert!(
        e.message().contains("Entra ID token endpoint: HTTP 401"),
        "{e}"
    );
    assert!(e.remediation().unwrap().contains("[azure.credential]"));
}

#[tokio::test]
async fn disabled_expired_and_not_yet_valid_keys_are_revoked() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    let p = double.provider();
    let kek = double.create_rsa_key("kek");
    let key = SecretKey::generate().unwrap();
    let wrapped = p.wrap(&kek, &key, &ctx()).await.unwrap();

    type Change = fn(&KeyVaultDouble, bool);
    let changes: [(&str, Change); 3] = [
        ("disabled", |d, on| d.set_enabled("kek", !on)),
        ("expired", |d, on| {
            d.set_expires("kek", on.then(|| now() - 60))
        }),
        ("not valid before", |d, on| {
            d.set_not_before("kek", on.then(|| now() + 3600))
        }),
    ];
    for (what, change) in changes {
        change(&double, true);
        let status = p.describe(&kek).await.unwrap();
        assert_eq!(status.state, KeyState::Disabled, "{what}");
        assert!(
            status.detail.as_deref().unwrap().contains(what),
            "{status:?}"
        );
        let e = p.wrap(&kek, &key, &ctx()).await.map(drop).unwrap_err();
        assert!(e.is_revocation_signal(), "{what}: wrap {e}");
        // Key Vault itself still unwraps with an expired or not-yet-valid key; Keyward refuses.
        let e = p
            .unwrap(&kek, &wrapped, &ctx())
            .await
            .map(drop)
            .unwrap_err();
        assert!(e.is_revocation_signal(), "{what}: unwrap {e}");
        assert!(e.message().contains(what), "{e}");
        assert!(
            e.remediation()
                .unwrap()
                .contains("set-attributes --vault-name kwtest --name kek")
        );
        change(&double, false);
        assert_eq!(p.describe(&kek).await.unwrap().state, KeyState::Enabled);
        p.unwrap(&kek, &wrapped, &ctx()).await.unwrap();
    }

    // Deleted (soft-delete): a revocation the customer can undo; recovered: works again.
    double.delete("kek");
    let e = p.describe(&kek).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.message().contains("can be recovered until"), "{e}");
    assert!(
        e.remediation()
            .unwrap()
            .contains("az keyvault key recover --vault-name kwtest --name kek"),
        "{e:?}"
    );
    let e = p
        .unwrap(&kek, &wrapped, &ctx())
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    let e = p.wrap(&kek, &key, &ctx()).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    double.recover("kek");
    p.unwrap(&kek, &wrapped, &ctx()).await.unwrap();

    // An identity that may not read deleted keys cannot tell deleted from purged: revoked, not
    // destroyed.
    double.delete("kek");
    double.forbid_deleted_key_reads(true);
    let e = p.describe(&kek).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.message().contains("is unknown"), "{e}");
    double.forbid_deleted_key_reads(false);

    // Purged: gone for good, NotFound (the server's terminal `destroyed`).
    double.purge("kek");
    for e in [
        p.describe(&kek).await.map(drop).unwrap_err(),
        p.unwrap(&kek, &wrapped, &ctx())
            .await
            .map(drop)
            .unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.message().contains("purged"), "{e}");
    }
}

#[tokio::test]
async fn rotation_keeps_old_wraps_and_a_disabled_old_version_refuses() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    let p = double.provider();
    let kek = double.create_rsa_key("kek");
    let key = SecretKey::generate().unwrap();
    let old = p.wrap(&kek, &key, &ctx()).await.unwrap();
    double.create_rsa_key("kek"); // a new version, as `az keyvault key rotate` makes
    let [v1, v2] = <[String; 2]>::try_from(double.versions("kek")).unwrap();
    let new = p.wrap(&kek, &key, &ctx()).await.unwrap();
    assert_eq!(&old.as_bytes()[3..35], v1.as_bytes());
    assert_eq!(&new.as_bytes()[3..35], v2.as_bytes());
    for w in [&old, &new] {
        assert_eq!(
            p.unwrap(&kek, w, &ctx()).await.unwrap().expose_secret(),
            key.expose_secret()
        );
    }
    // Disabling only the old version stops the wraps made with it (Key Vault: 403 KeyDisabled).
    double.set_version_enabled("kek", &v1, false);
    let e = p.unwrap(&kek, &old, &ctx()).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.message().contains("KeyDisabled"), "{e}");
    p.unwrap(&kek, &new, &ctx()).await.unwrap();
    // A wrapped key naming a version the key does not have is a bad wrapped key, not a missing key.
    let mut forged = new.as_bytes().to_vec();
    forged[3..35].copy_from_slice(b"00000000000000000000000000000000");
    let e = p
        .unwrap(&kek, &WrappedKey::new(forged), &ctx())
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCiphertext, "{e}");
}

#[tokio::test]
async fn transient_failures_are_classified_through_the_sdk() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    let p = double.provider();
    let kek = double.create_rsa_key("kek");
    p.describe(&kek).await.unwrap(); // token acquired

    for (status, code, kind) in [
        (429, "Throttled", ErrorKind::Throttled),
        (503, "ServiceUnavailable", ErrorKind::Unavailable),
        (500, "InternalServerError", ErrorKind::Unavailable),
        (403, "Forbidden", ErrorKind::Refused),
        (404, "KeyNotFound", ErrorKind::NotFound),
    ] {
        double.inject_failure(status, code);
        let e = p.describe(&kek).await.map(drop).unwrap_err();
        assert_eq!(e.kind(), kind, "{status} {code}: {e}");
        assert!(
            e.message().contains(&format!("HTTP {status} {code}")),
            "{e}"
        );
    }

    // Slower than the call timeout: Timeout.
    let mut config = double.config();
    config.call_timeout_ms = 300;
    let slow = AzureKeyVaultProvider::new(config).unwrap();
    double.set_latency(Duration::from_millis(1500));
    let e = slow.describe(&kek).await.map(drop).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    double.set_latency(Duration::ZERO);

    // Nothing listening: Unavailable.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap();
    drop(closed);
    let mut config = double.config();
    for addr in config.resolve.values_mut() {
        *addr = port;
    }
    let e = AzureKeyVaultProvider::new(config)
        .unwrap()
        .describe(&kek)
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}

#[tokio::test]
async fn tampered_blobs_are_rejected_before_or_by_the_vault() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    let p = double.provider();
    let kek = double.create_rsa_key("kek");
    let wrapped = p
        .wrap(&kek, &SecretKey::generate().unwrap(), &ctx())
        .await
        .unwrap();
    let unwraps = double.calls(Call::UnwrapKey);
    let e = p
        .unwrap(
            &kek,
            &WrappedKey::new(wrapped.as_bytes()[..100].to_vec()),
            &ctx(),
        )
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCiphertext);
    assert_eq!(
        double.calls(Call::UnwrapKey),
        unwraps,
        "rejected before calling the vault"
    );
    // A flipped bit in the RSA ciphertext: the vault's OAEP check fails (400 BadParameter).
    let mut bad = wrapped.as_bytes().to_vec();
    bad[100] ^= 1;
    let e = p
        .unwrap(&kek, &WrappedKey::new(bad), &ctx())
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCiphertext, "{e}");
    assert!(e.message().contains("HTTP 400 BadParameter"), "{e}");
}

// ---- the double on its own, through a plain HTTPS client ---------------------------------

async fn raw(double: &KeyVaultDouble) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(double.ca_file()).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve(double.vault_host(), double.addr())
        .resolve(LOGIN_HOST, double.addr())
        .build()
        .unwrap()
}

async fn token(double: &KeyVaultDouble, http: &reqwest::Client, secret: &str) -> reqwest::Response {
    let body = url_encode(&[
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("client_secret", secret),
        ("scope", "https://vault.azure.net/.default"),
    ]);
    let _ = double;
    http.post(format!(
        "https://{LOGIN_HOST}/{TENANT_ID}/oauth2/v2.0/token"
    ))
    .header("content-type", "application/x-www-form-urlencoded")
    .body(body)
    .send()
    .await
    .unwrap()
}

fn url_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
    )
}

#[tokio::test]
async fn the_double_rejects_what_key_vault_rejects() {
    let double = KeyVaultDouble::start(VaultKind::KeyVault).await;
    double.create_rsa_key("kek");
    let http = raw(&double).await;
    let url = |path: &str| {
        format!(
            "https://{}{path}?api-version=2025-07-01",
            double.vault_host()
        )
    };

    // No token: 401 with Key Vault's bearer challenge.
    let r = http.get(url("/keys/kek")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with("Bearer authorization=\""),
        "{challenge}"
    );
    assert!(
        challenge.ends_with("resource=\"https://vault.azure.net\""),
        "{challenge}"
    );
    // A made-up token is no better.
    let r = http
        .get(url("/keys/kek"))
        .bearer_auth("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Wrong secret: Entra ID's invalid_client.
    let (status, body) = json(token(&double, &http, "wrong").await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let secret = std::fs::read_to_string(double.dir().join("client-secret")).unwrap();
    let (status, body) = json(token(&double, &http, secret.trim()).await).await;
    assert_eq!(status, 200, "{body}");
    let t = body["access_token"].as_str().unwrap().to_owned();
    let get = |path: &str| {
        let request = http.get(url(path)).bearer_auth(&t);
        async move { json(request.send().await.unwrap()).await }
    };

    // Authenticated: the key is there, without api-version it is a bad request.
    let (status, key) = get("/keys/kek").await;
    assert_eq!(status, 200);
    assert_eq!(key["key"]["kty"], "RSA");
    assert_eq!(key["attributes"]["enabled"], true);
    let r = http
        .get(format!("https://{}/keys/kek", double.vault_host()))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // Unknown key: 404 KeyNotFound.
    let (status, body) = get("/keys/nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("KeyNotFound"))
    );

    // Deleted keys: 404 for a key that is not deleted, the DeletedKeyBundle once it is, 404
    // again once purged.
    let (status, body) = get("/deletedkeys/kek").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("KeyNotFound"))
    );
    double.create_rsa_key("doomed");
    double.delete("doomed");
    let (status, _) = get("/keys/doomed").await;
    assert_eq!(status, 404);
    let (status, body) = get("/deletedkeys/doomed").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["recoveryId"]
            .as_str()
            .unwrap()
            .ends_with("/deletedkeys/doomed")
    );
    assert!(body["scheduledPurgeDate"].as_i64().unwrap() > body["deletedDate"].as_i64().unwrap());
    double.purge("doomed");
    assert_eq!(get("/deletedkeys/doomed").await.0, 404);

    // Real RSA-OAEP-256: wrap then unwrap, and a wrong ciphertext fails with 400 BadParameter.
    let version = double.versions("kek").pop().unwrap();
    let post = |op: &str, value: &str| {
        http.post(url(&format!("/keys/kek/{version}/{op}")))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "alg": "RSA-OAEP-256", "value": value }).to_string())
            .send()
    };
    let (status, wrapped) = json(post("wrapkey", "AAECAwQFBgcICQoLDA0ODw").await.unwrap()).await;
    assert_eq!(status, 200);
    let w = wrapped["value"].as_str().unwrap().to_owned();
    assert_eq!(w.len(), 342, "2048-bit RSA ciphertext, base64url");
    let (status, plain) = json(post("unwrapkey", &w).await.unwrap()).await;
    assert_eq!(
        (status, plain["value"].as_str()),
        (200, Some("AAECAwQFBgcICQoLDA0ODw"))
    );
    let mut bad = w.clone().into_bytes();
    bad[10] = if bad[10] == b'A' { b'B' } else { b'A' };
    let (status, body) = json(
        post("unwrapkey", std::str::from_utf8(&bad).unwrap())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("BadParameter"))
    );

    // Disabled key: 403 Forbidden / KeyDisabled.
    double.set_enabled("kek", false);
    let (status, body) = json(post("unwrapkey", &w).await.unwrap()).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["innererror"]["code"], "KeyDisabled");
    double.set_enabled("kek", true);

    // Denied: 403 Forbidden / ForbiddenByRbac, even for GET.
    double.deny("kek", true);
    let (status, body) = get("/keys/kek").await;
    assert_eq!(
        (status, body["error"]["innererror"]["code"].as_str()),
        (403, Some("ForbiddenByRbac"))
    );
}
