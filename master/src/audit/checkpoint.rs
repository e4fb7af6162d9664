//! Signed checkpoints of the log's head: how many records there are and the hash
//! of the newest. A record changed is caught by the chain; records deleted from the
//! end are caught by a checkpoint that covers more of them. The master signs with
//! its TLS key; the checkpoint carries the master's certificate, which a verifier
//! checks against the cluster CA.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::{Deserialize, Serialize};

use super::segment::Head;

/// The newest checkpoint's file in the audit directory.
pub const FILE: &str = "checkpoint.json";

/// A checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Records in the log when it was written (the newest one's `seq`).
    pub records: u64,
    /// The hash of record `records`.
    pub head: String,
    pub time_ns: u64,
    /// `ECDSA_P256_SHA256` or `ECDSA_P384_SHA384`; empty when unsigned.
    pub algorithm: String,
    /// The master's certificate (PEM) whose key made `signature`.
    pub certificate: String,
    /// Base64 of the ASN.1 signature over [`Checkpoint::signed_bytes`].
    pub signature: String,
}

impl Checkpoint {
    /// What the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        format!(
            "cella-audit-checkpoint/1 records={} head={} time_ns={}",
            self.records, self.head, self.time_ns
        )
        .into_bytes()
    }

    /// Reads a checkpoint file.
    pub fn read(path: &Path) -> Result<Checkpoint, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&text)
            .map_err(|e| format!("{}: not a checkpoint: {e}", path.display()))
    }

    /// Writes it to `dir/name` atomically (temporary file, fsync, rename, fsync of
    /// the directory).
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        cella_proto::atomic_file::replace(&path, &tmp, &text)?;
        Ok(path)
    }

    /// Checks the signature, and that the certificate chains to the CA in `ca_pem`
    /// and was valid when the checkpoint was written.
    pub fn verify_signature(&self, ca_pem: &[u8]) -> Result<(), String> {
        if self.signature.is_empty() {
            return Err("the checkpoint is not signed (the master had no TLS key)".into());
        }
        let cert = CertificateDer::pem_slice_iter(self.certificate.as_bytes())
            .next()
            .ok_or("the checkpoint holds no certificate")?
            .map_err(|e| format!("the checkpoint's certificate: {e}"))?;
        let ca = CertificateDer::pem_slice_iter(ca_pem)
            .next()
            .ok_or("the CA file holds no certificate")?
            .map_err(|e| format!("the CA file: {e}"))?;
        let anchor = webpki::anchor_from_trusted_cert(&ca)
            .map_err(|e| format!("the CA certificate: {e}"))?;
        let ee = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| format!("the checkpoint's certificate: {e}"))?;
        let when = UnixTime::since_unix_epoch(std::time::Duration::from_nanos(self.time_ns));
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            when,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            format!("the checkpoint's certificate is not a master certificate of this CA: {e}")
        })?;
        let alg: &dyn rustls_pki_types::SignatureVerificationAlgorithm =
            match self.algorithm.as_str() {
                "ECDSA_P256_SHA256" => webpki::ring::ECDSA_P256_SHA256,
                "ECDSA_P384_SHA384" => webpki::ring::ECDSA_P384_SHA384,
                other => return Err(format!("unknown signature algorithm {other:?}")),
            };
        let sig = BASE64
            .decode(&self.signature)
            .map_err(|e| format!("the signature is not base64: {e}"))?;
        ee.verify_signature(alg, &self.signed_bytes(), &sig)
            .map_err(|e| format!("the signature does not verify: {e}"))
    }
}

/// Signs checkpoints with the master's TLS key.
pub struct Signer {
    key: EcdsaKeyPair,
    algorithm: &'static str,
    certificate: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads the certificate (PEM) and its private key (PKCS#8 PEM, ECDSA P-256 or
    /// P-384, as `cella certs` makes them).
    pub fn load(cert: &Path, key: &Path) -> Result<Signer, String> {
        let certificate =
            std::fs::read_to_string(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
        let der = cella_proto::tls::load_private_key(key).map_err(|e| e.to_string())?;
        let PrivateKeyDer::Pkcs8(pkcs8) = der else {
            return Err(format!(
                "{}: the audit log signs with a PKCS#8 ECDSA key (as `cella certs` issues); \
                 convert it with `openssl pkcs8 -topk8 -nocrypt`",
                key.display()
            ));
        };
        let rng = SystemRandom::new();
        let (key, algorithm) = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &rng,
        )
        .map(|k| (k, "ECDSA_P256_SHA256"))
        .or_else(|_| {
            EcdsaKeyPair::from_pkcs8(
                &ECDSA_P384_SHA384_ASN1_SIGNING,
                pkcs8.secret_pkcs8_der(),
                &rng,
            )
            .map(|k| (k, "ECDSA_P384_SHA384"))
        })
        .map_err(|_| {
            format!(
                "{}: not an ECDSA P-256 or P-384 key: the audit log's checkpoints are signed \
                 with the master's ECDSA key (`cella certs init` makes one)",
                key.display()
            )
        })?;
        Ok(Signer {
            key,
            algorithm,
            certificate,
            rng,
        })
    }

    /// A checkpoint of `head`, signed.
    pub fn checkpoint(&self, head: &Head, time_ns: u64) -> Result<Checkpoint, String> {
        let mut c = unsigned(head, time_ns);
        let sig = self
            .key
            .sign(&self.rng, &c.signed_bytes())
            .map_err(|_| "signing the checkpoint failed".to_string())?;
        c.algorithm = self.algorithm.into();
        c.certificate.clone_from(&self.certificate);
        c.signature = BASE64.encode(sig.as_ref());
        Ok(c)
    }
}

/// A checkpoint of `head` without a signature (a master without a TLS key: tests).
pub fn unsigned(head: &Head, time_ns: u64) -> Checkpoint {
    Checkpoint {
        records: head.seq,
        head: head.hash.clone(),
        time_ns,
        algorithm: String::new(),
        certificate: String::new(),
        signature: String::new(),
    }
}
