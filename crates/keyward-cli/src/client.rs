//! The gRPC client plumbing of the commands that call a server: the channel (with mutual
//! TLS), and a refused call's status rendered for people.

use std::collections::HashMap;

use anyhow::Context as _;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use crate::cli::Target;
use crate::exit;

pub(crate) async fn channel(target: &Target) -> anyhow::Result<Channel> {
    let endpoint = &target.endpoint;
    let mut channel = Channel::from_shared(endpoint.clone())
        .with_context(|| format!("invalid endpoint {endpoint:?}"))?;
    let tls = &target.tls;
    if tls.tls_ca.is_some() || tls.tls_cert.is_some() {
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &tls.tls_ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&tls.tls_cert, &tls.tls_key) {
            let cert_pem =
                std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
            let key_pem =
                std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
            config = config.identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        }
        if let Some(name) = &tls.tls_server_name {
            config = config.domain_name(name.clone());
        }
        channel = channel
            .tls_config(config)
            .context("invalid TLS client configuration")
            .map_err(exit::local)?;
    }
    channel.connect().await.with_context(|| {
        format!("cannot connect to keyward at {endpoint} (is `keyward serve` running?)")
    })
}

/// Renders a gRPC error with its machine-readable reason (`exit::refused` wraps it with its
/// exit code).
pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    let info = status.get_details_error_info();
    let reason = info
        .as_ref()
        .map(|info| format!(", reason {}", info.reason))
        .unwrap_or_default();
    // What to do about it, when the server knows (e.g. the key-policy statement to add).
    let remediation = info
        .as_ref()
        .and_then(|info| info.metadata.get("remediation"))
        .map(|r| format!("\n\nTo fix it:\n{r}"))
        .unwrap_or_default();
    // A revocation: its state, since when and what decided it, from the metadata (an older
    // server's message may not say them).
    let revoked = info
        .as_ref()
        .filter(|info| info.reason == "KEY_REVOKED")
        .map(|info| revocation_lines(&info.metadata))
        .unwrap_or_default();
    anyhow::anyhow!(
        "{} (status {:?}{reason}){revoked}{remediation}",
        status.message(),
        status.code()
    )
}

/// The `KEY_REVOKED` metadata as lines under the error.
pub(crate) fn revocation_lines(metadata: &HashMap<String, String>) -> String {
    let mut lines = String::new();
    if let Some(state) = metadata.get("state") {
        lines.push_str(&format!("\n  key state: {state}"));
    }
    if let Some(since) = metadata
        .get("since_ms")
        .and_then(|ms| ms.parse::<i64>().ok())
    {
        lines.push_str(&format!(
            "\n  since:     {} (UTC)",
            keyward_server::time::rfc3339_utc_ms(since)
        ));
    }
    if let Some(source) = metadata.get("source") {
        lines.push_str(&format!("\n  source:    {}", source_words(source)));
    }
    lines
}

/// A revocation source (`KekBinding.state_cause`, `KEY_REVOKED`'s `source`) in words.
pub(crate) fn source_words(source: &str) -> String {
    match source {
        "explicit" => "explicit: RevokeKey / RestoreKey".to_owned(),
        "monitor" => "the key-state monitor's check".to_owned(),
        "kms_refusal" => "the customer's KMS refused a call".to_owned(),
        "event" => "a key-state event, confirmed with the KMS".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::ErrorDetails;

    use super::*;

    fn metadata(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_refused_call_names_its_reason_its_revocation_and_the_fix() {
        let status = tonic::Status::with_error_details(
            Code::FailedPrecondition,
            "the tenant's key is revoked",
            ErrorDetails::with_error_info(
                "KEY_REVOKED",
                "keyward.v1",
                metadata(&[
                    ("state", "revoked"),
                    ("since_ms", "1796570581310"),
                    ("source", "kms_refusal"),
                    ("remediation", "enable the key"),
                ]),
            ),
        );
        assert_eq!(
            status_error(status).to_string(),
            "the tenant's key is revoked (status FailedPrecondition, reason KEY_REVOKED)\n  \
             key state: revoked\n  \
             since:     2026-12-06T15:23:01.310Z (UTC)\n  \
             source:    the customer's KMS refused a call\n\nTo fix it:\nenable the key"
        );
        // Without details (a transport error, an older server): the message and the code.
        let bare = tonic::Status::new(Code::Unavailable, "tcp connect error");
        assert_eq!(
            status_error(bare).to_string(),
            "tcp connect error (status Unavailable)"
        );
    }

    #[test]
    fn revocation_metadata_shows_what_it_has_and_skips_a_time_that_does_not_parse() {
        assert_eq!(revocation_lines(&HashMap::new()), "");
        assert_eq!(
            revocation_lines(&metadata(&[("since_ms", "soon"), ("source", "explicit")])),
            "\n  source:    explicit: RevokeKey / RestoreKey"
        );
    }

    #[test]
    fn sources_are_said_in_words_and_an_unknown_one_as_it_is() {
        assert_eq!(source_words("monitor"), "the key-state monitor's check");
        assert_eq!(
            source_words("event"),
            "a key-state event, confirmed with the KMS"
        );
        assert_eq!(
            source_words("kms_refusal"),
            "the customer's KMS refused a call"
        );
        assert_eq!(source_words("from_a_newer_server"), "from_a_newer_server");
    }
}
