//! `keyward encrypt`, `keyward decrypt` and `keyward rewrap`: stdin (or a file) to stdout (or
//! a file) through the server. `encrypt` and `decrypt` choose between one unary call and a
//! stream ([`super::stream`]): `encrypt` streams an input larger than the unary limit (or with
//! `--stream`), `decrypt` a framed envelope (format version 2).

use std::{collections::HashMap, io::IsTerminal as _, path::Path};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use keyward_envelope::framed;
use keyward_proto::v1::{self as pb, crypto_service_client::CryptoServiceClient};
use tonic::transport::Channel;

use super::stream::{self, Transfer};
use crate::base64_chunks::{Base64Decoder, Base64Encoder};
use crate::cli::{DecryptArgs, Encoding, EncryptArgs, RewrapArgs, Target};
use crate::client::channel;
use crate::exit;
use crate::files::{self, Input};

/// The envelope in `input`'s bytes, in `encoding`.
fn decode_envelope(input: Vec<u8>, encoding: Encoding, name: &str) -> anyhow::Result<Vec<u8>> {
    Ok(match encoding {
        Encoding::Raw => input,
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(input.trim_ascii())
            .with_context(|| format!("{name} is not valid base64"))?,
    })
}

/// Writes `envelope` in `encoding` to stdout or `out`.
fn write_envelope(out: Option<&Path>, envelope: &[u8], encoding: Encoding) -> anyhow::Result<()> {
    match encoding {
        Encoding::Raw => files::write_output(out, envelope),
        Encoding::Base64 => {
            let mut text = base64::engine::general_purpose::STANDARD.encode(envelope);
            text.push('\n');
            files::write_output(out, text.as_bytes())
        }
    }
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
    let mut input = Input::open(args.file.as_deref())?;
    let stream = args.stream || args.frame_size.is_some();
    // Up to the unary limit and one byte more: if that is all, one Encrypt call does it.
    let first = if stream {
        Vec::new()
    } else {
        let limit = usize::try_from(args.max_unary_bytes).unwrap_or(usize::MAX);
        let first = input.read_up_to(limit.saturating_add(1))?;
        if first.len() <= limit {
            return encrypt_unary(endpoint, args, first).await;
        }
        first
    };
    let client = client(endpoint).await?;
    let request = pb::EncryptStreamRequest {
        tenant_id: args.tenant,
        encryption_context: context_map(args.context)?,
        scope: args.scope,
        frame_size: args.frame_size.unwrap_or(0),
        plaintext: Vec::new(),
        justification: args.justification.to_pb(),
    };
    let transfer = Transfer {
        input,
        first,
        decoder: None,
        out: args.out.out,
        encoder: matches!(args.output, Encoding::Base64).then(Base64Encoder::default),
        chunk: stream::chunk_size(args.max_unary_bytes),
        progress: show_progress(args.progress.no_progress),
    };
    stream::encrypt(client, request, transfer).await
}

async fn encrypt_unary(
    endpoint: &Target,
    args: EncryptArgs,
    plaintext: Vec<u8>,
) -> anyhow::Result<()> {
    let mut client = client(endpoint).await?;
    let response = client
        .encrypt(pb::EncryptRequest {
            tenant_id: args.tenant,
            plaintext,
            encryption_context: context_map(args.context)?,
            scope: args.scope,
            justification: args.justification.to_pb(),
        })
        .await
        .map_err(exit::refused)?
        .into_inner();
    write_envelope(args.out.out.as_deref(), &response.envelope, args.output)
}

pub(crate) async fn decrypt(endpoint: &Target, args: DecryptArgs) -> anyhow::Result<()> {
    let mut input = Input::open(args.file.as_deref())?;
    let chunk = stream::chunk_size(args.max_unary_bytes);
    // Enough of the input to see the envelope's version (after base64): one message's worth.
    let raw = input.read_up_to(chunk)?;
    let mut decoder = Base64Decoder::default();
    let head = match args.input {
        Encoding::Raw => None,
        // Text that is not base64 is not a framed envelope: the unary path reports it.
        Encoding::Base64 => {
            let mut head = Vec::new();
            decoder.push(&raw, &mut head).is_ok().then_some(head)
        }
    };
    let version = framed::envelope_version(head.as_deref().unwrap_or(&raw));
    if version != Some(framed::FRAMED_VERSION) {
        if args.stream {
            return Err(exit::local(anyhow!(
                "{} is not a framed envelope (format version {}): it cannot be streamed; \
                 decrypt it without --stream",
                input.name(),
                framed::FRAMED_VERSION
            )));
        }
        return decrypt_unary(endpoint, args, input, raw).await;
    }
    let client = client(endpoint).await?;
    let request = pb::DecryptStreamRequest {
        tenant_id: args.tenant,
        encryption_context: context_map(args.context)?,
        envelope: Vec::new(),
        justification: args.justification.to_pb(),
    };
    let (first, decoder) = match head {
        Some(head) => (head, Some(decoder)),
        None => (raw, None),
    };
    let transfer = Transfer {
        input,
        first,
        decoder,
        out: args.out.out,
        encoder: None,
        chunk,
        progress: show_progress(args.progress.no_progress),
    };
    stream::decrypt(client, request, transfer).await
}

/// A version 1 envelope: read whole (it holds at most the server's unary limit) and decrypted
/// with one call.
async fn decrypt_unary(
    endpoint: &Target,
    args: DecryptArgs,
    mut input: Input,
    mut raw: Vec<u8>,
) -> anyhow::Result<()> {
    input.read_rest(&mut raw)?;
    let envelope = decode_envelope(raw, args.input, input.name())?;
    let mut client = client(endpoint).await?;
    let response = client
        .decrypt(pb::DecryptRequest {
            tenant_id: args.tenant,
            envelope,
            encryption_context: context_map(args.context)?,
            justification: args.justification.to_pb(),
        })
        .await
        .map_err(exit::refused)?
        .into_inner();
    files::write_output(args.out.out.as_deref(), &response.plaintext)
}

/// The progress line is drawn on a terminal only, unless `--no-progress`.
fn show_progress(no_progress: bool) -> bool {
    !no_progress && std::io::stderr().is_terminal()
}

/// Reads an envelope like `decrypt`, writes the new one like `encrypt`: no plaintext on either
/// side of the call.
pub(crate) async fn rewrap(endpoint: &Target, args: RewrapArgs) -> anyhow::Result<()> {
    let mut input = Input::open(None)?;
    let mut raw = Vec::new();
    input.read_rest(&mut raw)?;
    let envelope = decode_envelope(raw, args.input, input.name())?;
    let mut client = client(endpoint).await?;
    let response = client
        .rewrap(pb::RewrapRequest {
            tenant_id: args.tenant,
            envelope,
            encryption_context: context_map(args.context)?,
            target_scope: args.to_scope.unwrap_or_default(),
            justification: args.justification.to_pb(),
        })
        .await
        .map_err(exit::refused)?
        .into_inner();
    write_envelope(None, &response.envelope, args.output)
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
