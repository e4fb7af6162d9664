//! rustls configurations: TLS 1.3 and 1.2 only, the `ring` provider, the cluster CA as
//! the only trust anchor, the CA's revocation list honoured, and the server's identity
//! checked by clients.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WantsClientCert;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ConfigBuilder, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::trust::{ExpectedServer, Trust};
use super::{Error, Result};

/// ALPN protocol id of HTTP/2 (gRPC).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1 (JSON API).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// TLS 1.3 first; TLS 1.2 is the lowest version offered or accepted.
static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto provider used by every configuration of this module (`ring`).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client authentication policy of a server configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients may present no certificate; a presented certificate must chain to the CA.
    /// Routes enforce a principal themselves (see [`super::require_principal`]).
    Optional,
    /// Every client must present a certificate that chains to the CA.
    Required,
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem_err = |message: String| Error::Pem {
        path: path.to_owned(),
        message,
    };
    let data = super::read(path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pem_err(format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err("no CERTIFICATE in the file".into()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, SEC1 or PKCS#1) of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let data = super::read(path)?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| Error::Pem {
        path: path.to_owned(),
        message: format!("no usable private key: {e}"),
    })
}

/// The CA in `ca_path` and the revocation list in the `crl.pem` beside it, if any.
fn trust_with_crl_beside(ca_path: &Path) -> Result<Arc<Trust>> {
    Trust::load(ca_path, &ca_path.with_file_name("crl.pem"))
}

/// A client configuration's first steps: this module's provider and protocol
/// versions, and the server verified by `trust` as one of the `expected` kind.
fn client_builder(
    trust: &Arc<Trust>,
    expected: ExpectedServer,
) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>> {
    Ok(ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(trust.server_verifier(expected)))
}

/// Server configuration for the one Cella port: certificate `cert_path` / `key_path`,
/// client certificates verified against the CA in `ca_path` (and the `crl.pem` beside
/// it, if any) but optional at the TLS layer ([`ClientAuth::Optional`], so that
/// `GET /health` works without one), TLS 1.3/1.2, ALPN `h2` and `http/1.1`.
pub fn server_config(ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<ServerConfig> {
    server_config_with(ca_path, cert_path, key_path, ClientAuth::Optional)
}

/// [`server_config`] with an explicit client authentication policy.
pub fn server_config_with(
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
    auth: ClientAuth,
) -> Result<ServerConfig> {
    let trust = trust_with_crl_beside(ca_path)?;
    server_config_trusting(&trust, cert_path, key_path, auth)
}

/// A server configuration whose client verification follows `trust` (and its reloads).
pub fn server_config_trusting(
    trust: &Arc<Trust>,
    cert_path: &Path,
    key_path: &Path,
    auth: ClientAuth,
) -> Result<ServerConfig> {
    let verifier = trust.client_verifier(auth == ClientAuth::Required);
    let certs = load_certs(cert_path)?;
    let key = load_private_key(key_path)?;
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    // No session resumption: a resumed session skips the client certificate's
    // verification, so a revoked (or expired) certificate would go on working for as
    // long as its session is remembered. Every connection gets a full handshake.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Client configuration presenting `cert_path` / `key_path`, trusting only the CA in
/// `ca_path` (minus the `crl.pem` beside it), and accepting only the master's
/// certificate on the other end; TLS 1.3/1.2. ALPN is left empty:
/// [`super::grpc_channel`] sets `h2` and the HTTPS helpers set `http/1.1` on their own
/// copies.
pub fn client_config(ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<ClientConfig> {
    client_config_for(ca_path, cert_path, key_path, ExpectedServer::Master)
}

/// [`client_config`] for a server of the `expected` kind (an agent's API, say).
pub fn client_config_for(
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
    expected: ExpectedServer,
) -> Result<ClientConfig> {
    let trust = trust_with_crl_beside(ca_path)?;
    client_config_trusting(&trust, cert_path, key_path, expected)
}

/// A client configuration whose server verification follows `trust` (and its reloads).
pub fn client_config_trusting(
    trust: &Arc<Trust>,
    cert_path: &Path,
    key_path: &Path,
    expected: ExpectedServer,
) -> Result<ClientConfig> {
    let certs = load_certs(cert_path)?;
    let key = load_private_key(key_path)?;
    Ok(client_builder(trust, expected)?.with_client_auth_cert(certs, key)?)
}

/// Client configuration without a client certificate (enough for `GET /health`, or for
/// a bearer token), accepting the master's or, with `expected`, another server kind.
pub fn client_config_anonymous(ca_path: &Path) -> Result<ClientConfig> {
    client_config_anonymous_for(ca_path, ExpectedServer::Master)
}

/// [`client_config_anonymous`] for a server of the `expected` kind.
pub fn client_config_anonymous_for(
    ca_path: &Path,
    expected: ExpectedServer,
) -> Result<ClientConfig> {
    let trust = trust_with_crl_beside(ca_path)?;
    Ok(client_builder(&trust, expected)?.with_no_client_auth())
}
