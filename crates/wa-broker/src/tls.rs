//! TLS to RabbitMQ (`amqps://`): the CA that signs the brokers' certificates
//! and an optional client certificate, read once at start so that a missing
//! or unreadable file stops the role with the variable's name.

use std::path::PathBuf;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use wa_core::config::{read_client_pem_pair, read_pem_file};

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
        let identity = read_client_pem_pair(
            ("WA_AMQP_CLIENT_CERT", self.client_cert.as_deref()),
            ("WA_AMQP_CLIENT_KEY", self.client_key.as_deref()),
        )
        .map_err(anyhow::Error::msg)?
        .map(|(pem, key)| OwnedIdentity::PKCS8 {
            pem: pem.into_bytes(),
            key: key.into_bytes(),
        });
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

/// A PEM file named by `variable`, read now; the error names both.
fn read_text(variable: &str, path: &std::path::Path) -> anyhow::Result<String> {
    read_pem_file(variable, path).map_err(anyhow::Error::msg)
}
