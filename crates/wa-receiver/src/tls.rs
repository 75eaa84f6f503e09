//! Optional TLS termination, and optional client certificates (Meta's mTLS).
//!
//! With WA_TLS_CLIENT_CA the handshake verifies any certificate a client
//! presents against that CA and refuses one that does not chain to it, but
//! lets clients without a certificate in: Kubernetes probes and scrapers
//! have none. The webhook route then demands a verified certificate (and the
//! configured common name); `/healthz`, `/readyz` and `/metrics` do not.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnection, WebPkiClientVerifier};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsArgs;

/// Who the client is, as far as its TLS certificate says.
#[derive(Debug, Clone, Default)]
pub(crate) enum ClientIdentity {
    /// Plain HTTP, or TLS without a client certificate.
    #[default]
    Anonymous,
    /// A certificate that chains to WA_TLS_CLIENT_CA (the handshake checked
    /// it), with the common names of its subject.
    Verified { common_names: Vec<String> },
}

/// What the webhook route demands of the client's certificate.
#[derive(Debug, Clone)]
pub(crate) struct ClientAuth {
    pub common_name: Option<String>,
}

impl ClientAuth {
    pub(crate) fn admits(&self, identity: &ClientIdentity) -> bool {
        match (identity, &self.common_name) {
            (ClientIdentity::Anonymous, _) => false,
            (ClientIdentity::Verified { .. }, None) => true,
            (ClientIdentity::Verified { common_names }, Some(wanted)) => {
                common_names.iter().any(|name| name == wanted)
            }
        }
    }
}

/// The acceptor, and what the webhook route demands of client certificates;
/// `None` when TLS is off. Errors name the variable whose file is wrong.
pub(crate) fn load(args: &TlsArgs) -> anyhow::Result<Option<(TlsAcceptor, Option<ClientAuth>)>> {
    let (Some(cert_path), Some(key_path)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let chain = certificates(cert_path, "WA_TLS_CERT")?;
    let key = PrivateKeyDer::from_pem_file(key_path).with_context(|| {
        format!(
            "WA_TLS_KEY {}: no readable PEM private key",
            key_path.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let (builder, client_auth) = match &args.tls_client_ca {
        None => (builder.with_no_client_auth(), None),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(ca_path, "WA_TLS_CLIENT_CA")? {
                roots.add(ca).with_context(|| {
                    format!("WA_TLS_CLIENT_CA {}: not a usable CA", ca_path.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .with_context(|| format!("WA_TLS_CLIENT_CA {}", ca_path.display()))?;
            let auth = ClientAuth {
                common_name: args.tls_client_cn.clone(),
            };
            (builder.with_client_cert_verifier(verifier), Some(auth))
        }
    };
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "WA_TLS_CERT {} and WA_TLS_KEY {} do not make a usable certificate",
            cert_path.display(),
            key_path.display()
        )
    })?;
    // The receiver speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some((TlsAcceptor::from(Arc::new(config)), client_auth)))
}

fn certificates(path: &Path, variable: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "{variable} {}: cannot read PEM certificates",
                path.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!("{variable} {}: holds no certificate", path.display());
    }
    Ok(chain)
}

/// The identity a finished handshake established.
pub(crate) fn client_identity(connection: &ServerConnection) -> ClientIdentity {
    let Some(leaf) = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
    else {
        return ClientIdentity::Anonymous;
    };
    ClientIdentity::Verified {
        common_names: common_names(leaf),
    }
}

fn common_names(certificate: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate.as_ref()) else {
        return Vec::new();
    };
    parsed
        .subject()
        .iter_common_name()
        .filter_map(|name| name.as_str().ok().map(str::to_owned))
        .collect()
}
