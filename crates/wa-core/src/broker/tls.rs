//! TLS to RabbitMQ (`amqps://`): the CA that signs the brokers' certificates
//! and an optional client certificate, read once at start so that a missing
//! or unreadable file stops the role with the variable's name.

use std::path::{Path, PathBuf};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

/// Where the TLS material lives; every field optional (`amqps://` alone
/// verifies against the system's roots).
#[derive(Debug, Clone, Default)]
pub struct AmqpTlsFiles {
    /// PEM CA certificate(s) the brokers' certificates must chain to.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) presented to the brokers.
    pub client_cert: Option<PathBuf>,
    /// PEM PKCS#8 key of the client certificate.
    pub client_key: Option<PathBuf>,
}

impl AmqpTlsFiles {
    /// Reads the files into lapin's TLS settings.
    pub fn load(&self) -> anyhow::Result<OwnedTLSConfig> {
        let cert_chain = self
            .ca_file
            .as_deref()
            .map(|path| read_text("WA_AMQP_CA_FILE", path))
            .transpose()?;
        let identity = match (&self.client_cert, &self.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read_text("WA_AMQP_CLIENT_CERT", cert)?.into_bytes(),
                key: read_text("WA_AMQP_CLIENT_KEY", key)?.into_bytes(),
            }),
            (Some(_), None) => {
                anyhow::bail!("WA_AMQP_CLIENT_CERT is set without WA_AMQP_CLIENT_KEY")
            }
            (None, Some(_)) => {
                anyhow::bail!("WA_AMQP_CLIENT_KEY is set without WA_AMQP_CLIENT_CERT")
            }
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

/// A PEM file's text; the error names the variable and the path.
pub fn read_text(variable: &str, path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{variable} {}: cannot read it: {e}", path.display()))?;
    if !text.contains("-----BEGIN ") {
        anyhow::bail!("{variable} {}: not a PEM file", path.display());
    }
    Ok(text)
}
