//! The CA directory an operator keeps (`cella certs`): the CA, the master's
//! certificate, the CRL, a copy of every certificate issued, and the bundles handed to
//! nodes and users.
//!
//! ```text
//! <dir>/                          0700
//!   ca.pem  ca-key.pem            the cluster CA (the key never leaves this directory)
//!   master.pem  master-key.pem    the master's certificate (serverAuth, the master's names)
//!   crl.pem                       the revocation list, signed by the CA
//!   issued/<serial>.pem           every certificate issued (for `list` and `revoke`)
//!   agents/<node>/                a node's bundle: ca.pem crl.pem agent.pem agent-key.pem
//!   users/<name>/                 a user's bundle: ca.pem crl.pem client.pem client-key.pem
//! ```
//!
//! A bundle is exactly what the node's (or user's) `--tls-dir` needs. For one machine
//! (`cella dev`, tests) [`init_dir`] puts an agent and a user certificate next to the
//! master's in the CA directory itself.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::identity::Identity;
use super::pki::{
    IssuedCert, Pki, Revoked, Validity, default_master_sans, hex, refuse_existing, replace_file,
    write_new,
};
use super::{Error, Result};
use crate::path_io::PathIoError;

/// The file names of a TLS directory, for every kind of peer.
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
    /// `crl.pem`: optional for daemons and clients (no file: nothing is revoked).
    pub crl: PathBuf,
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
            crl: p("crl.pem"),
        }
    }

    /// Every file of a one-machine directory ([`init_dir`]).
    pub fn files(&self) -> [&Path; 9] {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.master_cert,
            &self.master_key,
            &self.agent_cert,
            &self.agent_key,
            &self.client_cert,
            &self.client_key,
            &self.crl,
        ]
    }

    /// The files of [`Layout::files`] that do not exist.
    pub fn missing(&self) -> Vec<PathBuf> {
        self.files()
            .into_iter()
            .filter(|p| !p.exists())
            .map(Path::to_path_buf)
            .collect()
    }

    /// `issued/`: a copy of every certificate the CA issued.
    pub fn issued_dir(&self) -> PathBuf {
        self.dir.join("issued")
    }

    /// Where the bundle of `identity` goes: `agents/<node>` or `users/<name>`.
    pub fn bundle_dir(&self, identity: &Identity) -> PathBuf {
        match identity {
            Identity::Agent { node } => self.dir.join("agents").join(node),
            Identity::User { name, .. } => self.dir.join("users").join(name),
            Identity::Master => self.dir.clone(),
        }
    }
}

/// The node name and user name of a one-machine directory ([`init_dir`]).
pub const LOCAL_NODE: &str = "localhost";
pub const LOCAL_USER: &str = "local";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    PathIoError::on(path)
}

/// Creates `dir` with mode 0700 if it does not exist.
fn create_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    }
    Ok(())
}

/// `cella certs init`: creates `dir` (0700), a CA, the master's certificate (SANs:
/// `master_sans` plus [`default_master_sans`]), an empty CRL and `issued/`. Refuses to
/// overwrite any existing file: the error names it.
pub fn init_cluster_dir(dir: &Path, master_sans: &[String]) -> Result<Layout> {
    let layout = Layout::new(dir);
    create_private_dir(dir)?;
    refuse_existing(&[
        &layout.ca_cert,
        &layout.ca_key,
        &layout.master_cert,
        &layout.master_key,
        &layout.crl,
    ])?;
    let mut sans: Vec<String> = Vec::new();
    for s in master_sans.iter().cloned().chain(default_master_sans()) {
        if !sans.contains(&s) {
            sans.push(s);
        }
    }
    let pki = Pki::new_ca("Cella cluster CA")?;
    pki.write_ca(dir)?;
    write_new(&layout.crl, pki.sign_crl(&[], 1)?.as_bytes(), 0o644)?;
    let ca = CaDir { layout, pki };
    let master = ca.issue(&Identity::Master, &sans, Validity::default())?;
    master.write(dir, "master")?;
    Ok(ca.layout)
}

/// For one machine (`cella dev`, tests): [`init_cluster_dir`] plus, in the same
/// directory, the agent certificate of node [`LOCAL_NODE`] (`agent.pem`, with the
/// loopback names) and the user certificate of [`LOCAL_USER`] (`client.pem`).
pub fn init_dir(dir: &Path, master_sans: &[String]) -> Result<Layout> {
    let layout = Layout::new(dir);
    if dir.exists() {
        refuse_existing(&layout.files())?;
    }
    init_cluster_dir(dir, master_sans)?;
    let ca = CaDir::open(dir)?;
    let agent = Identity::agent(LOCAL_NODE).map_err(|e| name_err(dir, e))?;
    ca.issue(&agent, &default_master_sans(), Validity::default())?
        .write(dir, "agent")?;
    let user = Identity::user(LOCAL_USER, &[]).map_err(|e| name_err(dir, e))?;
    ca.issue(&user, &[], Validity::default())?
        .write(dir, "client")?;
    Ok(layout)
}

fn name_err(dir: &Path, e: super::identity::InvalidName) -> Error {
    Error::Pem {
        path: dir.to_owned(),
        message: e.to_string(),
    }
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

/// One certificate the CA issued, as `cella certs list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub serial: String,
    /// `master`, `agent:<node>`, `user:<name>`.
    pub principal: String,
    pub groups: Vec<String>,
    pub not_after: OffsetDateTime,
    pub revoked: bool,
}

impl CertInfo {
    /// `valid`, `expired` or `revoked`.
    pub fn status(&self) -> &'static str {
        if self.revoked {
            "revoked"
        } else if self.not_after < OffsetDateTime::now_utc() {
            "expired"
        } else {
            "valid"
        }
    }
}

/// An operator's CA directory, opened to issue, list and revoke.
pub struct CaDir {
    pub layout: Layout,
    pki: Pki,
}

impl CaDir {
    /// Opens a directory made by [`init_cluster_dir`] (or [`init_dir`]).
    pub fn open(dir: &Path) -> Result<CaDir> {
        let layout = Layout::new(dir);
        let pki = Pki::load(&layout.ca_cert, &layout.ca_key)?;
        Ok(CaDir { layout, pki })
    }

    /// Issues a certificate for `identity` and keeps a copy in `issued/<serial>.pem`.
    pub fn issue(
        &self,
        identity: &Identity,
        names: &[String],
        validity: Validity,
    ) -> Result<IssuedCert> {
        let issued = self.pki.issue_identity(identity, names, validity)?;
        let dir = self.layout.issued_dir();
        create_private_dir(&dir)?;
        write_new(
            &dir.join(format!("{}.pem", issued.serial)),
            issued.cert_pem.as_bytes(),
            0o644,
        )?;
        Ok(issued)
    }

    /// Writes the bundle of `identity` (see the module documentation): the CA
    /// certificate, the current CRL and the certificate with its key (0600), in a 0700
    /// directory. Refuses to overwrite an existing bundle.
    pub fn write_bundle(&self, identity: &Identity, issued: &IssuedCert) -> Result<PathBuf> {
        let dir = self.layout.bundle_dir(identity);
        let name = match identity {
            Identity::Agent { .. } => "agent",
            Identity::User { .. } => "client",
            Identity::Master => "master",
        };
        if identity != &Identity::Master {
            refuse_existing(&[&dir])?;
            create_private_dir(&dir)?;
            write_new(
                &dir.join("ca.pem"),
                self.pki.ca_cert_pem().as_bytes(),
                0o644,
            )?;
            if let Ok(crl) = fs::read(&self.layout.crl) {
                write_new(&dir.join("crl.pem"), &crl, 0o644)?;
            }
        }
        issued.write(&dir, name)?;
        Ok(dir)
    }

    /// The serials the CRL lists, and its number.
    pub fn revoked(&self) -> Result<(Vec<Revoked>, u64)> {
        read_crl(&self.layout.crl)
    }

    /// Every certificate in `issued/`, oldest expiry first.
    pub fn list(&self) -> Result<Vec<CertInfo>> {
        let (revoked, _) = self.revoked()?;
        let dir = self.layout.issued_dir();
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().is_none_or(|e| e != "pem") {
                continue;
            }
            let pem = fs::read(&path).map_err(io_err(&path))?;
            let Some(info) = cert_info(&pem, &revoked) else {
                continue;
            };
            out.push(info);
        }
        out.sort_by(|a, b| a.not_after.cmp(&b.not_after).then(a.serial.cmp(&b.serial)));
        Ok(out)
    }

    /// Revokes the certificates `what` names (a serial, or a principal such as
    /// `agent:node1`, which revokes every certificate of it) and re-signs `crl.pem`.
    /// Returns what was newly revoked; an unknown name is an error.
    pub fn revoke(&self, what: &str) -> Result<Vec<CertInfo>> {
        let all = self.list()?;
        let wanted = what.trim().to_ascii_lowercase().replace(':', "");
        let matching: Vec<CertInfo> = all
            .into_iter()
            .filter(|c| c.serial == wanted || c.principal == what.trim())
            .collect();
        if matching.is_empty() {
            return Err(Error::Pem {
                path: self.layout.issued_dir(),
                message: format!(
                    "no certificate with serial or principal {what:?} (see `cella certs list`)"
                ),
            });
        }
        let (mut revoked, number) = self.revoked()?;
        let now = OffsetDateTime::now_utc();
        let mut newly = Vec::new();
        for c in matching {
            if !revoked.iter().any(|r| r.serial == c.serial) {
                revoked.push(Revoked {
                    serial: c.serial.clone(),
                    at: now,
                });
                newly.push(CertInfo { revoked: true, ..c });
            }
        }
        let pem = self.pki.sign_crl(&revoked, number.saturating_add(1))?;
        replace_file(&self.layout.crl, pem.as_bytes(), 0o644)?;
        Ok(newly)
    }
}

fn cert_info(pem: &[u8], revoked: &[Revoked]) -> Option<CertInfo> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
    let identity = Identity::from_cert_der(&pem.contents)?;
    let serial = hex(cert.raw_serial());
    Some(CertInfo {
        revoked: revoked.iter().any(|r| r.serial == serial),
        serial,
        principal: identity.principal(),
        groups: identity.groups().to_vec(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// The revoked serials of a PEM CRL file and its CRL number (none, 0 for a missing file).
pub fn read_crl(path: &Path) -> Result<(Vec<Revoked>, u64)> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_err(path)(e)),
    };
    let bad = |message: String| Error::Pem {
        path: path.to_owned(),
        message,
    };
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(&text).map_err(|e| bad(format!("not a PEM CRL: {e}")))?;
    let (_, crl) =
        x509_parser::parse_x509_crl(&pem.contents).map_err(|e| bad(format!("not a CRL: {e}")))?;
    let number = crl
        .crl_number()
        .and_then(|n| n.to_string().parse().ok())
        .unwrap_or(0);
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| Revoked {
            serial: hex(r.raw_serial()),
            at: r.revocation_date.to_datetime(),
        })
        .collect();
    Ok((revoked, number))
}
