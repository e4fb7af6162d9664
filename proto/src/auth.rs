//! Authentication of HTTP callers: a client certificate (see [`crate::tls`]), or, for
//! tools that cannot present one, a bearer token or HTTP basic credentials from a
//! credentials file.
//!
//! ```toml
//! [[token]]                       # Authorization: Bearer <token>
//! user = "prometheus"
//! groups = ["monitoring"]
//! sha256 = "9f86d08…"             # SHA-256 of the token, hex (`cella auth token` prints both)
//! expires = 2027-06-30T00:00:00Z  # optional: refused from then on
//!
//! [[password]]                    # Authorization: Basic base64(user:password)
//! user = "alice"
//! groups = ["ops"]
//! argon2 = "$argon2id$v=19$…"     # `cella auth password alice` prints it
//! ```
//!
//! Removing an entry (or letting it expire) revokes it: the file is re-read when it
//! changes or on SIGHUP.
//!
//! Tokens are random 256-bit strings, so a SHA-256 digest is enough to store them and
//! reveals nothing; a presented token is hashed and compared with every stored digest
//! in constant time (a comparison that stops at the first differing byte leaks it, as
//! Mesos' CVE-2018-8023 did). Passwords are stored as argon2id hashes; a name without
//! an entry is verified against a dummy hash so that the answer takes as long, and
//! verifications run at most two at a time on the blocking pool (argon2 is meant to be
//! costly). A successful basic login is remembered for a minute (by a digest of the
//! credentials) so that a script polling the API does not pay argon2 on every call.
//! Either way the caller is `user:<name>` with the file's groups.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::reload::Watched;
use crate::tls::{Identity, Peer};

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Certificate,
    Token,
    Password,
}

/// Who is calling an HTTP API, and how they proved it; the authentication middleware
/// puts one into every request it lets through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub identity: Identity,
    pub method: Method,
}

impl Caller {
    pub fn principal(&self) -> String {
        self.identity.principal()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCredentials {
    #[serde(default)]
    token: Vec<FileToken>,
    #[serde(default)]
    password: Vec<FilePassword>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    user: String,
    #[serde(default)]
    groups: Vec<String>,
    sha256: String,
    expires: Option<toml::value::Datetime>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePassword {
    user: String,
    #[serde(default)]
    groups: Vec<String>,
    argon2: String,
    expires: Option<toml::value::Datetime>,
}

/// Whose a credential is, and until when it is good.
#[derive(Clone, Debug)]
struct Holder {
    identity: Identity,
    expires: Option<SystemTime>,
}

impl Holder {
    fn valid(&self) -> Option<Identity> {
        self.expires
            .is_none_or(|e| SystemTime::now() < e)
            .then(|| self.identity.clone())
    }
}

/// A TOML date-time with an offset (`2027-06-30T00:00:00Z`) as a point in time.
fn instant(at: &str, dt: &toml::value::Datetime) -> Result<SystemTime, String> {
    let bad =
        || format!("{at}.expires: give a date and time with an offset, e.g. 2027-06-30T00:00:00Z");
    let (Some(date), Some(t), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        return Err(bad());
    };
    let month = time::Month::try_from(date.month).map_err(|_| bad())?;
    let date =
        time::Date::from_calendar_date(i32::from(date.year), month, date.day).map_err(|_| bad())?;
    let clock = time::Time::from_hms(t.hour, t.minute, t.second.unwrap_or(0)).map_err(|_| bad())?;
    let minutes = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => minutes,
    };
    let offset = time::UtcOffset::from_whole_seconds(i32::from(minutes) * 60).map_err(|_| bad())?;
    let at = time::PrimitiveDateTime::new(date, clock).assume_offset(offset);
    let secs = u64::try_from(at.unix_timestamp()).map_err(|_| bad())?;
    Ok(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The tokens and passwords of a credentials file.
#[derive(Default)]
pub struct Credentials {
    tokens: Vec<([u8; 32], Holder)>,
    passwords: HashMap<String, (String, Holder)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("tokens", &self.tokens.len())
            .field("passwords", &self.passwords.len())
            .finish()
    }
}

/// SHA-256 of `data`.
fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The SHA-256 of a token, hex, as the credentials file stores it.
pub fn token_digest(token: &str) -> String {
    crate::tls::hex_string(&sha256(token.as_bytes()))
}

/// A new random token (256 bits, URL-safe base64 behind a `cella_` prefix).
pub fn new_token() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random number generator failed".to_string())?;
    Ok(format!(
        "cella_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// An argon2id hash (PHC string, random salt, the crate's default cost) of `password`.
pub fn hash_password(password: &str) -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "the system's random number generator failed".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A hash no password matches, verified for unknown names so that they take as long.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password("").unwrap_or_default());

impl Credentials {
    /// Parses a credentials file's text; errors name the entry and what to fix.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let file: FileCredentials =
            toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        let mut out = Credentials::default();
        for (i, t) in file.token.into_iter().enumerate() {
            let at = format!("token[{i}]");
            let identity = Identity::user(&t.user, &t.groups).map_err(|e| format!("{at}: {e}"))?;
            let digest: [u8; 32] = crate::tls::unhex_bytes(&t.sha256)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    format!("{at}.sha256: give the 64 hex digits `cella auth token` printed")
                })?;
            if out.tokens.iter().any(|(d, _)| *d == digest) {
                return Err(format!("{at}: the same token is listed twice"));
            }
            let expires = t.expires.as_ref().map(|e| instant(&at, e)).transpose()?;
            out.tokens.push((digest, Holder { identity, expires }));
        }
        for (i, p) in file.password.into_iter().enumerate() {
            let at = format!("password[{i}]");
            let identity = Identity::user(&p.user, &p.groups).map_err(|e| format!("{at}: {e}"))?;
            PasswordHash::new(&p.argon2).map_err(|e| {
                format!(
                    "{at}.argon2: not an argon2 hash ({e}); make one with `cella auth password`"
                )
            })?;
            let expires = p.expires.as_ref().map(|e| instant(&at, e)).transpose()?;
            if out
                .passwords
                .insert(p.user.clone(), (p.argon2, Holder { identity, expires }))
                .is_some()
            {
                return Err(format!("{at}: user {:?} is listed twice", p.user));
            }
        }
        Ok(out)
    }

    /// The identity a token belongs to, unless it expired. Every stored digest is
    /// compared, in constant time, whatever matches.
    pub fn verify_token(&self, token: &str) -> Option<Identity> {
        let presented = sha256(token.as_bytes());
        let mut found = None;
        for (digest, holder) in &self.tokens {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(holder);
            }
        }
        found.and_then(Holder::valid)
    }

    /// The identity of `user` if `password` is theirs (argon2; a dummy hash for unknown
    /// names). Blocking and costly: call it off the async threads.
    pub fn verify_password(&self, user: &str, password: &str) -> Option<Identity> {
        let (phc, holder) = match self.passwords.get(user) {
            Some((phc, holder)) => (phc.as_str(), Some(holder)),
            None => (DUMMY_HASH.as_str(), None),
        };
        let hash = PasswordHash::new(phc).ok()?;
        let ok = argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok();
        if ok {
            holder.and_then(Holder::valid)
        } else {
            None
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.passwords.is_empty()
    }
}

/// Why a request was not authenticated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "authentication required: present a client certificate signed by the cluster CA, a \
         bearer token or HTTP basic credentials"
    )]
    Missing,
    #[error("invalid bearer token")]
    BadToken,
    #[error("invalid user name or password")]
    BadPassword,
    #[error("malformed Authorization header: use `Bearer TOKEN` or `Basic BASE64(user:password)`")]
    Malformed,
}

/// Counters of failed authentications (for `/metrics`).
#[derive(Debug, Default)]
pub struct AuthStats {
    pub token_failures: AtomicU64,
    pub password_failures: AtomicU64,
}

/// Checks HTTP callers against the certificate of their connection or a credentials
/// file (reloaded by [`Authenticator::reload`]).
pub struct Authenticator {
    /// `None`: certificates only.
    file: Option<Watched<Credentials>>,
    /// Digest of `user:password` → identity and when it was verified.
    recent: Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
    argon_permits: tokio::sync::Semaphore,
    pub stats: AuthStats,
}

/// How long a verified basic login is remembered.
const REMEMBER: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Reads a credentials file, which must be private.
fn read_credentials(path: &Path) -> Result<Credentials, String> {
    crate::perms::check_private_file(path).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Credentials::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Authenticator {
    fn with(file: Option<Watched<Credentials>>) -> Arc<Self> {
        Arc::new(Authenticator {
            file,
            recent: Mutex::new(HashMap::new()),
            argon_permits: tokio::sync::Semaphore::new(2),
            stats: AuthStats::default(),
        })
    }

    /// Only client certificates authenticate.
    pub fn certificates_only() -> Arc<Authenticator> {
        Self::with(None)
    }

    /// With `path`, tokens and passwords come from that file (which must exist and be
    /// private, mode 0600); without, only client certificates authenticate.
    pub fn new(path: Option<&Path>) -> Result<Arc<Authenticator>, String> {
        match path {
            Some(p) => Ok(Self::with(Some(Watched::load(p, read_credentials)?))),
            None => Ok(Self::certificates_only()),
        }
    }

    /// The credentials file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(Watched::path)
    }

    /// Re-reads the credentials file if it changed (or always, with `force`):
    /// `Ok(true)` when new credentials are in force; `Err` leaves the previous ones in
    /// force.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let changed = file.reload(force)?;
        if changed {
            self.recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
        Ok(changed)
    }

    fn current(&self) -> Arc<Credentials> {
        self.file
            .as_ref()
            .map_or_else(|| Arc::new(Credentials::default()), Watched::current)
    }

    /// Who is calling: the connection's certificate, else the `Authorization` header.
    pub async fn authenticate(
        &self,
        peer: Option<&Peer>,
        headers: &HeaderMap,
    ) -> Result<Caller, AuthError> {
        if let Some(identity) = peer.and_then(|p| p.identity.clone()) {
            return Ok(Caller {
                identity,
                method: Method::Certificate,
            });
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(AuthError::Missing);
        };
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, rest) = value.split_once(' ').ok_or(AuthError::Malformed)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            let identity = self.current().verify_token(rest);
            let failures = &self.stats.token_failures;
            return checked(identity, Method::Token, failures, AuthError::BadToken);
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(AuthError::Malformed);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(AuthError::Malformed)?;
        let (user, password) = decoded.split_once(':').ok_or(AuthError::Malformed)?;
        let identity = self.verify_password(user, password).await;
        let failures = &self.stats.password_failures;
        checked(identity, Method::Password, failures, AuthError::BadPassword)
    }

    async fn verify_password(&self, user: &str, password: &str) -> Option<Identity> {
        let key = sha256(format!("{user}\0{password}").as_bytes());
        {
            let recent = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((identity, at)) = recent.get(&key) {
                if at.elapsed() < REMEMBER {
                    return Some(identity.clone());
                }
            }
        }
        let _permit = self.argon_permits.acquire().await.ok()?;
        let credentials = self.current();
        let (user, password) = (user.to_string(), password.to_string());
        let identity =
            tokio::task::spawn_blocking(move || credentials.verify_password(&user, &password))
                .await
                .ok()??;
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.retain(|_, (_, at)| at.elapsed() < REMEMBER);
        recent.insert(key, (identity.clone(), Instant::now()));
        Some(identity)
    }
}

/// The caller that a token or password check found by `method`, or `failure` (counted
/// in `failures`).
fn checked(
    identity: Option<Identity>,
    method: Method,
    failures: &AtomicU64,
    failure: AuthError,
) -> Result<Caller, AuthError> {
    let Some(identity) = identity else {
        failures.fetch_add(1, Ordering::Relaxed);
        return Err(failure);
    };
    Ok(Caller { identity, method })
}

/// The answer to a request that is not authenticated: `401` with a JSON error and the
/// schemes accepted.
pub fn unauthorized(err: &AuthError) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer, Basic realm=\"cella\"")],
        axum::Json(serde_json::json!({ "error": err.to_string() })),
    )
        .into_response()
}

/// axum middleware (`from_fn_with_state(authenticator, require_caller)`): lets
/// authenticated requests through with a [`Caller`] in their extensions and answers
/// the others with `401`.
pub async fn require_caller(
    State(auth): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req.extensions().get::<Peer>().cloned();
    match auth.authenticate(peer.as_ref(), req.headers()).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => unauthorized(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_passwords() {
        let token = new_token().unwrap();
        let hash = hash_password("s3cret").unwrap();
        let text = format!(
            "[[token]]\nuser = \"prom\"\ngroups = [\"monitoring\"]\nsha256 = \"{}\"\n\n\
             [[password]]\nuser = \"alice\"\nargon2 = '{hash}'\n",
            token_digest(&token)
        );
        let c = Credentials::parse(&text).unwrap();
        let prom = c.verify_token(&token).unwrap();
        assert_eq!(prom.principal(), "user:prom");
        assert_eq!(prom.groups(), ["monitoring".to_string()]);
        assert_eq!(c.verify_token("cella_wrong"), None);
        assert_eq!(c.verify_token(""), None);
        assert_eq!(
            c.verify_password("alice", "s3cret").map(|i| i.principal()),
            Some("user:alice".into())
        );
        assert_eq!(c.verify_password("alice", "wrong"), None);
        assert_eq!(c.verify_password("nobody", "s3cret"), None);

        let expired = format!(
            "[[token]]\nuser = \"old\"\nsha256 = \"{}\"\nexpires = 2001-01-01T00:00:00Z\n\
             [[token]]\nuser = \"new\"\nsha256 = \"{}\"\nexpires = 2999-01-01T00:00:00+02:00\n",
            token_digest("old-token"),
            token_digest("new-token")
        );
        let c = Credentials::parse(&expired).unwrap();
        assert_eq!(c.verify_token("old-token"), None, "expired");
        assert!(c.verify_token("new-token").is_some());
        let e = Credentials::parse("[[token]]\nuser = \"x\"\nsha256 = \"abc\"\n").unwrap_err();
        assert!(e.contains("token[0].sha256"), "{e}");
        let e = Credentials::parse("[[password]]\nuser = \"x\"\nargon2 = \"plain\"\n").unwrap_err();
        assert!(e.contains("password[0].argon2"), "{e}");
    }
}
