//! The cluster PKI: a CA (ECDSA P-256) and the leaf certificates it signs.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use super::{Error, Result};

/// How long the CA certificate is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long leaf certificates are valid.
const LEAF_VALIDITY: Duration = Duration::days(825);
/// Backdating of `notBefore`, for clocks that are a little behind.
const BACKDATE: Duration = Duration::hours(1);

/// What a leaf certificate is for (its extended key usage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// `serverAuth` (the master's HTTPS/gRPC port).
    Server,
    /// `clientAuth` (agents, schedulers, operators connecting to the master).
    Client,
    /// Both: an agent connects to the master and serves its own HTTP API.
    ServerAndClient,
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl IssuedCert {
    /// Writes `<dir>/<name>.pem` and `<dir>/<name>-key.pem` (mode 0600); refuses to
    /// overwrite either. Returns (certificate path, key path).
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        refuse_existing(&[&cert, &key])?;
        write_new(&cert, self.cert_pem.as_bytes(), 0o644)?;
        write_new(&key, self.key_pem.as_bytes(), 0o600)?;
        Ok((cert, key))
    }
}

/// A certificate authority that can sign leaf certificates.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_cert_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Creates a new CA with a fresh ECDSA P-256 key. Its subject CN is `common_name`
    /// followed by a short id derived from the key, so that two clusters' CAs never
    /// share a name (a certificate from another cluster is then reported as signed by an
    /// unknown issuer rather than as having a bad signature).
    pub fn new_ca(common_name: &str) -> Result<Pki> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let id: String = key
            .public_key_raw()
            .iter()
            .skip(1) // the uncompressed-point tag 0x04
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Cella");
        dn.push(DnType::CommonName, format!("{common_name} {id}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        Ok(Pki {
            ca_cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its PEM certificate and PEM private key.
    pub fn from_pem(ca_cert_pem: &str, ca_key_pem: &str) -> Result<Pki> {
        let key = KeyPair::from_pem(ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, key)?;
        Ok(Pki {
            issuer,
            ca_cert_pem: ca_cert_pem.to_owned(),
        })
    }

    /// Loads a CA from `ca.pem`-style and `ca-key.pem`-style files.
    pub fn load(ca_cert_path: &Path, ca_key_path: &Path) -> Result<Pki> {
        let cert = read_string(ca_cert_path)?;
        let key = read_string(ca_key_path)?;
        let key_pair = KeyPair::from_pem(&key).map_err(|e| Error::Pem {
            path: ca_key_path.to_owned(),
            message: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key_pair).map_err(|e| Error::Pem {
            path: ca_cert_path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Pki {
            issuer,
            ca_cert_pem: cert,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The CA private key, PEM.
    pub fn ca_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Writes `<dir>/ca.pem` and `<dir>/ca-key.pem` (mode 0600); refuses to overwrite.
    pub fn write_ca(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join("ca.pem");
        let key = dir.join("ca-key.pem");
        refuse_existing(&[&cert, &key])?;
        write_new(&cert, self.ca_cert_pem.as_bytes(), 0o644)?;
        write_new(&key, self.ca_key_pem().as_bytes(), 0o600)?;
        Ok((cert, key))
    }

    /// Issues a leaf certificate with a fresh ECDSA P-256 key. The subject CN is
    /// `principal`; `sans` are DNS names or IP address literals (needed for server
    /// certificates: clients check the server's name against them).
    pub fn issue(&self, principal: &str, kind: CertKind, sans: &[String]) -> Result<IssuedCert> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(sans.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Cella");
        dn.push(DnType::CommonName, principal);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match kind {
            CertKind::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            CertKind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            CertKind::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate (`serverAuth`) for the given names and addresses.
    pub fn issue_server(&self, principal: &str, sans: &[String]) -> Result<IssuedCert> {
        self.issue(principal, CertKind::Server, sans)
    }

    /// A client certificate (`clientAuth`) naming `principal`.
    pub fn issue_client(&self, principal: &str) -> Result<IssuedCert> {
        self.issue(principal, CertKind::Client, &[])
    }
}

/// The names a master certificate always carries: `localhost`, `127.0.0.1`, `::1`.
pub fn default_master_sans() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

/// Paths of a certificate directory made by [`init_dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub master_cert: PathBuf,
    pub master_key: PathBuf,
    pub agent_cert: PathBuf,
    pub agent_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Layout {
    /// The paths under `dir` (nothing is read or written).
    pub fn new(dir: &Path) -> Layout {
        let p = |name: &str| dir.join(name);
        Layout {
            dir: dir.to_owned(),
            ca_cert: p("ca.pem"),
            ca_key: p("ca-key.pem"),
            master_cert: p("master.pem"),
            master_key: p("master-key.pem"),
            agent_cert: p("agent.pem"),
            agent_key: p("agent-key.pem"),
            client_cert: p("client.pem"),
            client_key: p("client-key.pem"),
        }
    }

    /// Every file of the layout.
    pub fn files(&self) -> [&Path; 8] {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.master_cert,
            &self.master_key,
            &self.agent_cert,
            &self.agent_key,
            &self.client_cert,
            &self.client_key,
        ]
    }

    /// The files of the layout that do not exist.
    pub fn missing(&self) -> Vec<PathBuf> {
        self.files()
            .into_iter()
            .filter(|p| !p.exists())
            .map(Path::to_path_buf)
            .collect()
    }
}

/// Creates a CA and the `master` (server; SANs: `master_sans` plus
/// [`default_master_sans`]), `agent` (server and client; same SANs, since an agent serves
/// HTTP too) and `client` (client) certificates in `dir`, which is created (mode 0700) if
/// needed. Refuses to overwrite any existing file: the error names it.
pub fn init_dir(dir: &Path, master_sans: &[String]) -> Result<Layout> {
    let layout = Layout::new(dir);
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
            Error::Io {
                path: dir.to_owned(),
                source,
            }
        })?;
    }
    refuse_existing(&layout.files())?;

    let mut sans: Vec<String> = Vec::new();
    for s in master_sans.iter().cloned().chain(default_master_sans()) {
        if !sans.contains(&s) {
            sans.push(s);
        }
    }
    let pki = Pki::new_ca("Cella cluster CA")?;
    let master = pki.issue("master", CertKind::Server, &sans)?;
    let agent = pki.issue("agent", CertKind::ServerAndClient, &sans)?;
    let client = pki.issue("client", CertKind::Client, &[])?;

    pki.write_ca(dir)?;
    master.write(dir, "master")?;
    agent.write(dir, "agent")?;
    client.write(dir, "client")?;
    Ok(layout)
}

/// For `cella dev`: returns the layout of `dir` if all its files exist, creates them with
/// [`init_dir`] if none does, and fails (naming the missing files) if only some do.
pub fn init_or_load_dir(dir: &Path, master_sans: &[String]) -> Result<Layout> {
    let layout = Layout::new(dir);
    let missing = layout.missing();
    if missing.is_empty() {
        return Ok(layout);
    }
    if missing.len() == layout.files().len() {
        return init_dir(dir, master_sans);
    }
    let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
    Err(Error::Pem {
        path: dir.to_owned(),
        message: format!(
            "incomplete certificate directory, missing {}; delete the directory to start over",
            names.join(", ")
        ),
    })
}

fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn refuse_existing(paths: &[&Path]) -> Result<()> {
    for p in paths {
        // symlink_metadata: a dangling symlink counts as existing too.
        if fs::symlink_metadata(p).is_ok() {
            return Err(Error::Exists {
                path: p.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Creates `path` (never overwriting, never following a symlink there) with `mode`.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists {
                    path: path.to_owned(),
                }
            } else {
                io(e)
            }
        })?;
    // The umask may have removed bits but never adds any; make the mode exact.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}
