//! A real registry (Debian's `docker-registry`, the reference implementation of the
//! distribution API) on a loopback port, with a generated configuration: TLS with a
//! CA made for the test and bcrypt htpasswd authentication, or plain HTTP.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cella_image::{Credentials, Digest, RegistrySettings};
use cella_proto::tls::{Identity, Pki, Validity};

use super::token::TokenServer;

pub const USER: &str = "alice";
pub const PASSWORD: &str = "wonderland-7";

/// How the registry authenticates clients.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    /// htpasswd (bcrypt) checked by the registry itself.
    Basic,
    /// Bearer tokens from a token service ([`TokenServer`]) that checks the password.
    Token,
}

pub struct Registry {
    /// `127.0.0.1:PORT`
    pub host: String,
    pub dir: tempfile::TempDir,
    /// PEM of the CA that signed the registry's certificate (TLS registries).
    pub ca_file: Option<PathBuf>,
    pub auth: Auth,
    child: Child,
    /// Dropped after the registry (fields drop in order).
    _token: Option<TokenServer>,
}

/// One line of the registry's access log.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub uri: String,
    pub status: u16,
    pub written: u64,
}

impl Registry {
    /// A registry with TLS and basic authentication (`USER`/`PASSWORD`).
    pub fn secure() -> Self {
        Self::start(true, Auth::Basic)
    }

    /// A plain-HTTP registry without authentication.
    pub fn insecure() -> Self {
        Self::start(false, Auth::None)
    }

    pub fn start(tls: bool, auth: Auth) -> Self {
        require_tool("docker-registry");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let host = format!("127.0.0.1:{port}");
            let mut config = format!(
                "version: 0.1\nlog:\n  level: info\n  formatter: json\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  secret: cella-test-secret\n",
                dir.path().join("data").display()
            );
            let mut ca_file = None;
            if tls {
                let pki = Pki::new_ca("cella image test CA").expect("CA");
                // A serving-only certificate for the registry's names.
                let leaf = pki
                    .issue_identity(
                        &Identity::Master,
                        &["127.0.0.1".to_owned(), "localhost".to_owned()],
                        Validity::days(30),
                    )
                    .expect("certificate");
                let ca = dir.path().join("ca.pem");
                std::fs::write(&ca, pki.ca_cert_pem()).unwrap();
                std::fs::write(dir.path().join("cert.pem"), &leaf.cert_pem).unwrap();
                std::fs::write(dir.path().join("key.pem"), &leaf.key_pem).unwrap();
                // skopeo reads a directory with ca.crt.
                std::fs::create_dir_all(dir.path().join("certs.d")).unwrap();
                std::fs::write(dir.path().join("certs.d/ca.crt"), pki.ca_cert_pem()).unwrap();
                config.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    dir.path().join("cert.pem").display(),
                    dir.path().join("key.pem").display()
                ));
                ca_file = Some(ca);
            }
            let mut token = None;
            if auth == Auth::Token {
                let bundle = dir.path().join("token-issuer.pem");
                let server = TokenServer::start(&bundle);
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    server.realm,
                    super::token::SERVICE,
                    super::token::ISSUER,
                    bundle.display()
                ));
                token = Some(server);
            }
            if auth == Auth::Basic {
                let hash = bcrypt::hash(PASSWORD, 5).expect("bcrypt");
                std::fs::write(dir.path().join("htpasswd"), format!("{USER}:{hash}\n")).unwrap();
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: cella-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                ));
            }
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let deadline = Instant::now() + Duration::from_secs(15);
            let addr: SocketAddr = host.parse().unwrap();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "docker-registry exited ({status}): {}",
                        std::fs::read_to_string(dir.path().join("registry.log"))
                            .unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return Self {
                        host,
                        dir,
                        ca_file,
                        auth,
                        child,
                        _token: token,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = "docker-registry did not listen within 15 s".to_owned();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("cannot start the test registry: {last_error}");
    }

    /// Settings that reach this registry: its CA, plain HTTP when it has no TLS, and
    /// its host as the default registry.
    pub fn settings(&self) -> RegistrySettings {
        let mut settings = RegistrySettings {
            default_registry: self.host.clone(),
            ca_file: self.ca_file.clone(),
            ..RegistrySettings::default()
        };
        if self.ca_file.is_none() {
            settings.insecure_registries.push(self.host.clone());
        }
        if self.auth != Auth::None {
            settings.credentials.insert(
                self.host.clone(),
                Credentials::Basic {
                    username: USER.to_owned(),
                    password: PASSWORD.to_owned(),
                },
            );
        }
        settings
    }

    /// Pushes `oci:LAYOUT:TAG` (all platforms of an index) to `REPO:TAG` here.
    pub fn push(&self, layout: &Path, layout_tag: &str, target: &str) {
        self.push_with(layout, layout_tag, target, &["--preserve-digests"]);
    }

    /// Pushes converted to Docker schema 2 (manifest, and manifest list for an index).
    pub fn push_docker_schema2(&self, layout: &Path, layout_tag: &str, target: &str) {
        self.push_with(layout, layout_tag, target, &["--format=v2s2"]);
    }

    fn push_with(&self, layout: &Path, layout_tag: &str, target: &str, extra: &[&str]) {
        require_tool("skopeo");
        let mut command = Command::new("skopeo");
        command.args(["--insecure-policy", "copy", "--quiet", "--all"]);
        command.args(extra);
        if self.ca_file.is_some() {
            command.arg(format!(
                "--dest-cert-dir={}",
                self.dir.path().join("certs.d").display()
            ));
        } else {
            command.arg("--dest-tls-verify=false");
        }
        if self.auth != Auth::None {
            command.arg(format!("--dest-creds={USER}:{PASSWORD}"));
        }
        command
            .arg(format!("oci:{}:{layout_tag}", layout.display()))
            .arg(format!("docker://{}/{target}", self.host));
        run(&mut command);
    }

    /// Scopes the token service was asked for (token authentication only).
    pub fn token_scopes(&self) -> Vec<String> {
        self._token
            .as_ref()
            .map(|t| t.scopes.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Every request the registry served so far.
    pub fn requests(&self) -> Vec<Request> {
        let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        log.lines().filter_map(parse_access_line).collect()
    }

    /// GET requests for the blob `digest`.
    pub fn blob_gets(&self, digest: &Digest) -> Vec<Request> {
        let needle = format!("/blobs/{digest}");
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.uri.ends_with(&needle))
            .collect()
    }

    /// Where the registry keeps the blob's bytes.
    pub fn blob_data(&self, digest: &Digest) -> PathBuf {
        self.dir.path().join(format!(
            "data/docker/registry/v2/blobs/sha256/{}/{}/data",
            &digest.hex()[..2],
            digest.hex()
        ))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 1234 "" "agent"`
fn parse_access_line(line: &str) -> Option<Request> {
    if line.starts_with('{') {
        return None;
    }
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_owned();
    let uri = parts.next()?.to_owned();
    let mut numbers = rest.split(' ');
    let status = numbers.next()?.parse().ok()?;
    let written = numbers.next()?.parse().unwrap_or(0);
    Some(Request {
        method,
        uri,
        status,
        written,
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Fails (never skips) when a tool the test needs is missing.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: run scripts/install-test-deps.sh (as root)"
    );
}

/// Runs a command, failing the test with its output if it fails.
pub fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    if !output.status.success() {
        let mut err = std::io::stderr();
        let _ = writeln!(err, "{}", String::from_utf8_lossy(&output.stdout));
        panic!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}
