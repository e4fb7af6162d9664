//! A token service for the registry's bearer authentication (the Docker token
//! protocol): it checks basic credentials and answers a JWT, signed with ES256 by a
//! key the registry trusts (its `rootcertbundle`), granting the scope asked for.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;

use super::registry::{PASSWORD, USER};

pub const SERVICE: &str = "cella-test-registry";
pub const ISSUER: &str = "cella-test-token-issuer";

pub struct TokenServer {
    pub realm: String,
    /// Every `scope` asked for, in order.
    pub scopes: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    port: u16,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Starts the service and writes the certificate the registry must trust to `bundle`.
    pub fn start(bundle: &Path) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["token-issuer".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(bundle, cert.pem()).unwrap();
        let kid = libtrust_key_id(&rcgen::PublicKeyData::subject_public_key_info(&key));
        let signer = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, scopes) = (stop.clone(), scopes.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve(stream, &signer, &kid, &scopes);
                    }
                }
            })
        };
        Self {
            realm: format!("http://127.0.0.1:{port}/token"),
            scopes,
            stop,
            port,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, signer: &EcdsaKeyPair, kid: &str, scopes: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    let _ = reader.read_line(&mut request_line);
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_owned());
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    let expected = format!("Basic {}", STANDARD.encode(format!("{USER}:{PASSWORD}")));
    let (status, body) = if authorization.as_deref() == Some(expected.as_str()) {
        let mut access = Vec::new();
        for (_, scope) in params.iter().filter(|(k, _)| k == "scope") {
            scopes.lock().unwrap().push(scope.clone());
            let parts: Vec<&str> = scope.split(':').collect();
            if let [kind, name, actions] = parts.as_slice() {
                access.push(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}));
            }
        }
        let token = sign_token(signer, kid, access);
        (
            "200 OK",
            json!({"token": token, "access_token": token, "expires_in": 300}).to_string(),
        )
    } else {
        (
            "401 Unauthorized",
            json!({"details": "wrong or missing credentials"}).to_string(),
        )
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn sign_token(signer: &EcdsaKeyPair, kid: &str, access: Vec<serde_json::Value>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"typ": "JWT", "alg": "ES256", "kid": kid});
    let claims = json!({
        "iss": ISSUER, "sub": USER, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("cella-{now}-{}", access.len()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = signer
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .unwrap();
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    )
}

/// The key id the registry (libtrust) computes for a public key: the first 240 bits
/// of the SHA-256 of its DER SubjectPublicKeyInfo, base32, in groups of four.
fn libtrust_key_id(spki_der: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let encoded = base32(&hash.as_ref()[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
