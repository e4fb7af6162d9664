//! The cluster PKI: a CA (ECDSA P-256), the certificates it signs for each
//! [`Identity`], and the certificate revocation list (CRL) it signs.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::identity::Identity;
use super::{Error, Result};
use crate::path_io::PathIoError;

/// How long the CA certificate is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long leaf certificates are valid unless the issuer says otherwise.
pub const DEFAULT_LEAF_DAYS: i64 = 825;
/// Backdating of `notBefore`, for clocks that are a little behind.
const BACKDATE: Duration = Duration::hours(1);
/// How long a CRL is declared valid. Verifiers do not enforce it (a node that misses a
/// new CRL keeps the last one); it only has to be later than `thisUpdate`.
const CRL_VALIDITY: Duration = Duration::days(3650);

/// What a leaf certificate is for (its extended key usage), from its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// `serverAuth`: the master's port.
    Server,
    /// `clientAuth`: users and schedulers.
    Client,
    /// Both: an agent connects to the master and serves its own HTTP API.
    ServerAndClient,
}

impl CertKind {
    /// The usage an identity's certificate gets: only the master serves the cluster
    /// port; agents serve their own API under their node's names.
    pub fn of(identity: &Identity) -> CertKind {
        match identity {
            Identity::Master => CertKind::Server,
            Identity::Agent { .. } => CertKind::ServerAndClient,
            Identity::User { .. } => CertKind::Client,
        }
    }
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago until `days` days from now.
    pub fn days(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - BACKDATE,
            not_after: now + Duration::days(days),
        }
    }
}

impl Default for Validity {
    fn default() -> Self {
        Validity::days(DEFAULT_LEAF_DAYS)
    }
}

/// A certificate and its private key, PEM-encoded, with its serial number (hex).
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("serial", &self.serial)
            .finish()
    }
}

impl IssuedCert {
    /// Writes `<dir>/<name>.pem` (0644) and `<dir>/<name>-key.pem` (0600); refuses to
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

/// A revoked certificate: its serial (hex) and when it was revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub serial: String,
    pub at: OffsetDateTime,
}

/// A certificate authority that can sign leaf certificates and CRLs.
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

/// A fresh random serial number: 16 bytes, positive, with a non-zero first byte (so
/// its DER encoding keeps all 16 bytes).
fn random_serial() -> Result<Vec<u8>> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x10;
    Ok(bytes.to_vec())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string (`None` if it is not one).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().replace(':', "");
    if s.is_empty() || s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Pki {
    /// Creates a new CA with a fresh ECDSA P-256 key. Its subject CN is `common_name`
    /// followed by a short id derived from the key, so that two clusters' CAs never
    /// share a name (a certificate from another cluster is then reported as signed by an
    /// unknown issuer rather than as having a bad signature).
    pub fn new_ca(common_name: &str) -> Result<Pki> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let id = hex(&key
            .public_key_raw()
            .iter()
            .skip(1)
            .take(4)
            .copied()
            .collect::<Vec<_>>());
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
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
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

    /// Issues the certificate of `identity` with a fresh ECDSA P-256 key: subject CN the
    /// identity's principal, groups as URI SANs, `names` (DNS names or IP address
    /// literals) as SANs for the identities that serve (the master and agents), the
    /// extended key usage of [`CertKind::of`], and a random serial number.
    pub fn issue_identity(
        &self,
        identity: &Identity,
        names: &[String],
        validity: Validity,
    ) -> Result<IssuedCert> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let kind = CertKind::of(identity);
        let mut params = CertificateParams::new(match kind {
            CertKind::Client => Vec::new(),
            _ => names.to_vec(),
        })?;
        for uri in identity.group_uris() {
            let uri = uri.try_into().map_err(|_| Error::Pem {
                path: PathBuf::new(),
                message: "a group name is not a valid URI".into(),
            })?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Cella");
        dn.push(DnType::CommonName, identity.principal());
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
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: hex(&serial),
        })
    }

    /// Signs a CRL listing `revoked`, numbered `number` (higher than the last one).
    pub fn sign_crl(&self, revoked: &[Revoked], number: u64) -> Result<String> {
        let mut revoked_certs = Vec::new();
        for r in revoked {
            let serial = unhex(&r.serial).ok_or_else(|| Error::Pem {
                path: PathBuf::new(),
                message: format!("{:?} is not a hex serial number", r.serial),
            })?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: r.at,
                reason_code: Some(RevocationReason::Unspecified),
                invalidity_date: None,
            });
        }
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update: now + CRL_VALIDITY,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// The names a master certificate always carries: `localhost`, `127.0.0.1`, `::1`.
pub fn default_master_sans() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

pub(super) fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(PathIoError::on(path))
}

pub(super) fn refuse_existing(paths: &[&Path]) -> Result<()> {
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
pub(super) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let io = |source| {
        Error::from(PathIoError {
            path: path.to_owned(),
            source,
        })
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

/// Replaces `path` atomically (temp file, fsync, rename, fsync of the directory) with
/// `contents` and `mode`.
pub(super) fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let io = |source| {
        Error::from(PathIoError {
            path: path.to_owned(),
            source,
        })
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
