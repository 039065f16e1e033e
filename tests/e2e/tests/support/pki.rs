//! Test certificates minted per run with rcgen: a CA, the server's certificate (localhost,
//! 127.0.0.1) and client certificates with chosen SANs and validity, as PEM files in a
//! private directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A certificate authority and the directory its files are written to.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub(crate) cert_file: PathBuf,
    dir: PathBuf,
    name: String,
}

/// A PEM certificate and key on disk.
#[derive(Clone)]
pub(crate) struct Leaf {
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
}

/// A client certificate's subject alternative name.
pub(crate) enum San<'a> {
    Uri(&'a str),
    Dns(&'a str),
}

impl Ca {
    pub(crate) fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        let cert_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_file, issuer.pem()).expect("write CA");
        Ca {
            issuer,
            cert_file,
            dir: dir.to_owned(),
            name: name.to_owned(),
        }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The server's certificate: DNS `localhost` and IP 127.0.0.1.
    pub(crate) fn server(&self) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign("server", params)
    }

    /// A client certificate with the given SANs, valid now (or expired in 2021).
    pub(crate) fn client(&self, file: &str, sans: &[San<'_>], expired: bool) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, file.to_owned());
        for san in sans {
            params.subject_alt_names.push(match san {
                San::Uri(uri) => SanType::URI((*uri).try_into().expect("uri")),
                San::Dns(dns) => SanType::DnsName((*dns).try_into().expect("dns")),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.sign(file, params)
    }

    fn sign(&self, file: &str, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let cert_file = self.dir.join(format!("{}-{file}.pem", self.name));
        let key_file = self.dir.join(format!("{}-{file}.key", self.name));
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        Leaf {
            cert_file,
            key_file,
        }
    }
}

/// An mTLS channel to `addr` trusting `server_ca`, presenting `client` (if any).
pub(crate) async fn connect(
    addr: &str,
    server_ca: &Ca,
    client: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca.pem()))
        .domain_name("localhost");
    if let Some(leaf) = client {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&leaf.cert_file).expect("cert"),
            std::fs::read(&leaf.key_file).expect("key"),
        ));
    }
    Channel::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)?
        .connect()
        .await
}
