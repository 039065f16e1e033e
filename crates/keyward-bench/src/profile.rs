//! `keyward-bench profile`: a fixed number of sequential `Encrypt` or `Decrypt` calls against
//! Keyward or the null service (both in process, one connection), for instruction counting:
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=cg.keyward.%p \
//!     target/release/keyward-bench profile --target keyward --requests 4000
//! ```
//!
//! Run it twice with different `--requests` and divide the difference in instructions by the
//! difference in requests: start-up cancels out, and what remains is the cost of one call —
//! client, transport and service together, as in the gRPC-ceiling scenario. The same for
//! `--target null` gives the floor; `callgrind_annotate` on the Keyward run shows where its
//! extra instructions go (docs/benchmarks.md, "Profiles").

use keyward_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient,
    tenant_service_client::TenantServiceClient,
};
use tonic::transport::Channel;

use crate::harness;
use crate::suite::NullCrypto;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// `keyward` or `null`.
    #[arg(long, default_value = "keyward")]
    target: String,
    /// `encrypt` or `decrypt`.
    #[arg(long, default_value = "encrypt")]
    op: String,
    /// Plaintext size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Measured calls (after 200 warm-up calls).
    #[arg(long, default_value_t = 2000)]
    requests: u64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let addr = match args.target.as_str() {
        "null" => NullCrypto::serve().await?,
        "keyward" => {
            let server = harness::Server::start_local(dir.path(), |config| {
                config.revocation.monitor_interval_seconds = 0;
            })
            .await?;
            let addr = server.addr();
            // Never stopped: it serves until the process exits.
            std::mem::forget(server);
            addr
        }
        other => anyhow::bail!("--target must be keyward or null, not {other}"),
    };
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut tenants = TenantServiceClient::new(channel.clone());
    if args.target == "keyward" {
        harness::onboard(&mut tenants, "bench", harness::local_key()).await?;
    }
    let mut client = CryptoServiceClient::new(channel);
    let plaintext = vec![0x42u8; args.size];
    let envelope = client
        .encrypt(pb::EncryptRequest {
            tenant_id: "bench".into(),
            plaintext: plaintext.clone(),
            encryption_context: Default::default(),
            scope: String::new(),
            justification: None,
        })
        .await?
        .into_inner()
        .envelope;
    for _ in 0..200 + args.requests {
        match args.op.as_str() {
            "encrypt" => {
                client
                    .encrypt(pb::EncryptRequest {
                        tenant_id: "bench".into(),
                        plaintext: plaintext.clone(),
                        encryption_context: Default::default(),
                        scope: String::new(),
                        justification: None,
                    })
                    .await?;
            }
            "decrypt" => {
                client
                    .decrypt(pb::DecryptRequest {
                        tenant_id: "bench".into(),
                        envelope: envelope.clone(),
                        encryption_context: Default::default(),
                        justification: None,
                    })
                    .await?;
            }
            other => anyhow::bail!("--op must be encrypt or decrypt, not {other}"),
        }
    }
    println!(
        "{} {} calls of {} B: done",
        args.requests, args.op, args.size
    );
    Ok(())
}
