//! Content digests (`sha256:<64 hex>`) and the hashing that verifies them.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A digest that is not `sha256:` followed by 64 lowercase hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid digest {value:?}: expected sha256: followed by 64 lowercase hex digits")]
pub struct DigestError {
    pub value: String,
}

/// A sha256 content digest. Only sha256 is accepted: it is what every registry and
/// image tool writes, and one algorithm keeps the store's layout simple.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The 64 hex digits, used as file names in the store.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Parses the 64 hex digits of a sha256 digest (a file name in the store).
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        Self::from_str(&format!("sha256:{hex}"))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let mut hasher = Hasher::new();
        hasher.update(data);
        hasher.finish()
    }

    /// A short form for messages and progress lines (`sha256:0123456789ab`).
    pub fn short(&self) -> String {
        format!("sha256:{}", &self.hex[..12])
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(value: &str) -> Result<Self, DigestError> {
        let invalid = || DigestError {
            value: value.to_owned(),
        };
        let hex = value.strip_prefix("sha256:").ok_or_else(invalid)?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid());
        }
        Ok(Self {
            hex: hex.to_owned(),
        })
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(value: String) -> Result<Self, DigestError> {
        value.parse()
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Incremental sha256 (ring's assembly implementation: the pull's hashing is on the
/// hot path of every byte).
pub struct Hasher {
    context: ring::digest::Context,
    bytes: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self {
            context: ring::digest::Context::new(&ring::digest::SHA256),
            bytes: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.context.update(data);
        self.bytes += data.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub fn finish(self) -> Digest {
        Digest {
            hex: hex::encode(self.context.finish().as_ref()),
        }
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// Reads the rest of the stream (a tar's trailing padding belongs to the digest
    /// too) and returns the digest and byte count of everything read.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let bytes = self.hasher.len();
        Ok((self.hasher.finish(), bytes))
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.hasher.len()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that hashes what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }

    pub fn into_parts(self) -> (W, Digest, u64) {
        let bytes = self.hasher.len();
        (self.inner, self.hasher.finish(), bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_has_the_well_known_digest() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn rejects_other_algorithms_and_bad_hex() {
        for bad in [
            "sha512:00",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
        }
    }
}
