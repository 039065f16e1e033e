//! `keyward encrypt`, `keyward decrypt` and `keyward rewrap`: stdin to stdout through the server.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use keyward_proto::v1::{self as pb, crypto_service_client::CryptoServiceClient};
use tonic::transport::Channel;

use crate::cli::{DecryptArgs, Encoding, EncryptArgs, RewrapArgs, Target};
use crate::client::channel;
use crate::exit;

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("cannot read stdin")?;
    Ok(buf)
}

/// The envelope on stdin, in `encoding`.
fn read_envelope(encoding: Encoding) -> anyhow::Result<Vec<u8>> {
    let input = read_stdin()?;
    Ok(match encoding {
        Encoding::Raw => input,
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(input.trim_ascii())
            .context("stdin is not valid base64")?,
    })
}

/// Writes `envelope` to stdout in `encoding`.
fn write_envelope(envelope: &[u8], encoding: Encoding) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match encoding {
        Encoding::Raw => out.write_all(envelope)?,
        Encoding::Base64 => writeln!(
            out,
            "{}",
            base64::engine::general_purpose::STANDARD.encode(envelope)
        )?,
    }
    out.flush()?;
    Ok(())
}

fn context_map(pairs: Vec<(String, String)>) -> anyhow::Result<HashMap<String, String>> {
    let mut map = HashMap::new();
    for (k, v) in pairs {
        if map.insert(k.clone(), v).is_some() {
            bail!("context key {k:?} given twice");
        }
    }
    Ok(map)
}

/// A crypto client without gRPC's default 4 MiB message limit: an envelope is as large as
/// the data it holds.
async fn client(endpoint: &Target) -> anyhow::Result<CryptoServiceClient<Channel>> {
    Ok(CryptoServiceClient::new(channel(endpoint).await?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

pub(crate) async fn encrypt(endpoint: &Target, args: EncryptArgs) -> anyhow::Result<()> {
    let plaintext = read_stdin()?;
    let mut client = client(endpoint).await?;
    let response = client
        .encrypt(pb::EncryptRequest {
            tenant_id: args.tenant,
            plaintext,
            encryption_context: context_map(args.context)?,
            scope: args.scope,
        })
        .await
        .map_err(exit::refused)?
        .into_inner();
    write_envelope(&response.envelope, args.output)
}

pub(crate) async fn decrypt(endpoint: &Target, args: DecryptArgs) -> anyhow::Result<()> {
    let envelope = read_envelope(args.input)?;
    let mut client = client(endpoint).await?;
    let response = client
        .decrypt(pb::DecryptRequest {
            tenant_id: args.tenant,
            envelope,
            encryption_context: context_map(args.context)?,
        })
        .await
        .map_err(exit::refused)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    out.write_all(&response.plaintext)?;
    out.flush()?;
    Ok(())
}

/// Reads an envelope like `decrypt`, writes the new one like `encrypt`: no plaintext on either
/// side of the call.
pub(crate) async fn rewrap(endpoint: &Target, args: RewrapArgs) -> anyhow::Result<()> {
    let envelope = read_envelope(args.input)?;
    let mut client = client(endpoint).await?;
    let response = client
        .rewrap(pb::RewrapRequest {
            tenant_id: args.tenant,
            envelope,
            encryption_context: context_map(args.context)?,
            target_scope: args.to_scope.unwrap_or_default(),
        })
        .await
        .map_err(exit::refused)?
        .into_inner();
    write_envelope(&response.envelope, args.output)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn a_context_key_given_twice_is_refused() {
        let map = context_map(vec![pair("app", "chat"), pair("user", "")]).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map["user"], "");
        let twice = context_map(vec![pair("app", "chat"), pair("app", "mail")]).unwrap_err();
        assert_eq!(twice.to_string(), "context key \"app\" given twice");
    }
}
