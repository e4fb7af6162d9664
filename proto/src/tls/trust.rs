//! What a daemon or client trusts: the cluster CA, minus what the CA's revocation list
//! (`crl.pem`) revokes, with the server identity it expects on the other end.
//!
//! The CA is read once. The CRL is re-read by [`Trust::reload`] (the daemons call it
//! when the file changes and on SIGHUP): the verifiers handed to rustls are wrappers
//! that ask the current [`Trust`] state on every handshake, so a revocation takes effect
//! for new connections without a restart. A CRL that cannot be read or is not signed
//! by the cluster CA is refused and the previous one stays in force; a CRL file that
//! disappears also leaves the previous one in force (deleting the list must not
//! un-revoke anything).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};

use super::config::{crypto_provider, load_certs};
use super::identity::Identity;
use super::{Error, Result};

/// Which server identity a client accepts (besides the name it connects to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedServer {
    /// The master's certificate (`CN=master`): a stolen agent key cannot pose as it.
    Master,
    /// An agent's certificate (`CN=agent:<node>`), for the agents' HTTP APIs.
    Agent,
}

/// A file's identity and version: changes when it is replaced or rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of `path`, `None` when it does not exist.
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
            inode: m.ino(),
        })
    }
}

struct Current {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
    crl_stamp: Option<FileStamp>,
    revoked: usize,
}

/// The CA and the current CRL; see the module documentation.
pub struct Trust {
    ca_path: PathBuf,
    crl_path: PathBuf,
    roots: Arc<RootCertStore>,
    ca_subjects: Vec<Vec<u8>>,
    provider: Arc<CryptoProvider>,
    hints: Vec<DistinguishedName>,
    current: RwLock<Arc<Current>>,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("ca", &self.ca_path)
            .field("crl", &self.crl_path)
            .finish_non_exhaustive()
    }
}

pub(super) fn root_store(ca_path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_path)? {
        roots.add(cert).map_err(|e| Error::Pem {
            path: ca_path.to_owned(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Reads a PEM CRL and checks that the cluster CA issued it (by name: its signature
/// is checked by the verifiers, which would otherwise refuse every peer).
fn load_crl(
    path: &Path,
    ca_subjects: &[Vec<u8>],
) -> Result<(CertificateRevocationListDer<'static>, usize)> {
    let bad = |message: String| Error::Pem {
        path: path.to_owned(),
        message,
    };
    let data = super::read(path)?;
    let der = CertificateRevocationListDer::from_pem_slice(&data)
        .map_err(|e| bad(format!("not a PEM certificate revocation list: {e}")))?;
    let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
        .map_err(|e| bad(format!("not a certificate revocation list: {e}")))?;
    if !ca_subjects
        .iter()
        .any(|s| s.as_slice() == crl.issuer().as_raw())
    {
        return Err(bad(
            "not issued by the cluster CA of ca.pem (copy the crl.pem of this cluster's CA \
             directory)"
                .into(),
        ));
    }
    let revoked = crl.iter_revoked_certificates().count();
    Ok((der, revoked))
}

impl Trust {
    /// Loads the CA of `ca_path` and, if `crl_path` exists, the CRL.
    pub fn load(ca_path: &Path, crl_path: &Path) -> Result<Arc<Trust>> {
        let roots = Arc::new(root_store(ca_path)?);
        let ca_subjects: Vec<Vec<u8>> = load_certs(ca_path)?
            .iter()
            .filter_map(|der| {
                let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
                Some(cert.subject().as_raw().to_vec())
            })
            .collect();
        let provider = crypto_provider();
        let hints = roots.subjects();
        let current = Self::build(&roots, &ca_subjects, &provider, crl_path, None)?;
        Ok(Arc::new(Trust {
            ca_path: ca_path.to_owned(),
            crl_path: crl_path.to_owned(),
            roots,
            ca_subjects,
            provider,
            hints,
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// Loads `<dir>/ca.pem` and `<dir>/crl.pem`.
    pub fn load_dir(dir: &Path) -> Result<Arc<Trust>> {
        Self::load(&dir.join("ca.pem"), &dir.join("crl.pem"))
    }

    fn build(
        roots: &Arc<RootCertStore>,
        ca_subjects: &[Vec<u8>],
        provider: &Arc<CryptoProvider>,
        crl_path: &Path,
        previous: Option<&Current>,
    ) -> Result<Current> {
        let stamp = FileStamp::of(crl_path);
        let mut crls = Vec::new();
        let mut revoked = 0;
        if stamp.is_some() {
            let (crl, n) = load_crl(crl_path, ca_subjects)?;
            crls.push(crl);
            revoked = n;
        } else if let Some(previous) = previous {
            // The file is gone: what it revoked stays revoked.
            return Ok(Current {
                client: previous.client.clone(),
                server: previous.server.clone(),
                crl_stamp: None,
                revoked: previous.revoked,
            });
        }
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(crls.clone())
            .only_check_end_entity_revocation()
            .allow_unauthenticated()
            .build()?;
        let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .build()
            .map_err(|e| Error::Pem {
                path: crl_path.to_owned(),
                message: format!("server certificate verifier: {e}"),
            })?;
        Ok(Current {
            client,
            server,
            crl_stamp: stamp,
            revoked,
        })
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the CRL if its file changed (or always, with `force`). `Ok(Some(n))`: a
    /// new list with `n` revoked certificates is in force; `Ok(None)`: nothing changed;
    /// `Err`: the file is unusable and the previous list stays in force.
    pub fn reload(&self, force: bool) -> Result<Option<usize>> {
        let previous = self.current();
        if !force && FileStamp::of(&self.crl_path) == previous.crl_stamp {
            return Ok(None);
        }
        let next = Self::build(
            &self.roots,
            &self.ca_subjects,
            &self.provider,
            &self.crl_path,
            Some(&previous),
        )?;
        let revoked = next.revoked;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        Ok(Some(revoked))
    }

    /// How many certificates the CRL in force revokes.
    pub fn revoked(&self) -> usize {
        self.current().revoked
    }

    /// The CRL file this trust reloads.
    pub fn crl_path(&self) -> &Path {
        &self.crl_path
    }

    /// A client certificate verifier for servers; with `mandatory`, connections
    /// without a certificate are refused during the handshake.
    pub fn client_verifier(self: &Arc<Self>, mandatory: bool) -> Arc<dyn ClientCertVerifier> {
        Arc::new(ReloadingClientVerifier {
            trust: self.clone(),
            mandatory,
        })
    }

    /// A server certificate verifier for clients that also checks the server's identity.
    pub fn server_verifier(
        self: &Arc<Self>,
        expected: ExpectedServer,
    ) -> Arc<dyn ServerCertVerifier> {
        Arc::new(ReloadingServerVerifier {
            trust: self.clone(),
            expected,
        })
    }
}

/// The signature checks of a reloading verifier: those of the current trust state's
/// `client` or `server` verifier (TLS 1.2 and 1.3 alike; they depend on the crypto
/// provider only).
macro_rules! signature_checks_of_current {
    ($side:ident) => {
        signature_checks_of_current!($side: verify_tls12_signature, verify_tls13_signature);

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.trust.current().$side.supported_verify_schemes()
        }
    };
    ($side:ident: $($check:ident),+) => {
        $(
            fn $check(
                &self,
                message: &[u8],
                cert: &CertificateDer<'_>,
                dss: &DigitallySignedStruct,
            ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
                self.trust.current().$side.$check(message, cert, dss)
            }
        )+
    };
}

#[derive(Debug)]
struct ReloadingClientVerifier {
    trust: Arc<Trust>,
    mandatory: bool,
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.trust.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.trust
            .current()
            .client
            .verify_client_cert(end_entity, intermediates, now)
    }

    signature_checks_of_current!(client);
}

#[derive(Debug)]
struct ReloadingServerVerifier {
    trust: Arc<Trust>,
    expected: ExpectedServer,
}

impl ServerCertVerifier for ReloadingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verified = self.trust.current().server.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let identity = Identity::from_cert_der(end_entity.as_ref());
        let ok = matches!(
            (self.expected, &identity),
            (ExpectedServer::Master, Some(Identity::Master))
                | (ExpectedServer::Agent, Some(Identity::Agent { .. }))
        );
        if !ok {
            let is = identity.map_or_else(|| "no Cella identity".to_string(), |i| i.principal());
            return Err(rustls::Error::General(format!(
                "the server's certificate is {is}, not the {} certificate expected there",
                match self.expected {
                    ExpectedServer::Master => "master's",
                    ExpectedServer::Agent => "agent",
                }
            )));
        }
        Ok(verified)
    }

    signature_checks_of_current!(server);
}
