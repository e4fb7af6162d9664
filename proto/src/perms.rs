//! The modes of the files and directories that hold keys, credentials and state, as
//! ssh checks them: a private key or credentials file that others can read is refused
//! (the fix is in the message); a state directory or file the daemon owns is
//! tightened, with a warning to log.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::path_io::PathIoError;

/// A file or directory whose mode or owner is unsafe.
#[derive(Debug, thiserror::Error)]
pub enum PermError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(
        "{path}: mode {mode:04o} lets other users read it; it must be private: \
         `chmod 600 {path}`",
        path = path.display()
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error(
        "{path}: it belongs to uid {uid}, not to this process's user (uid {me}) or root: \
         `chown {me} {path}`",
        path = path.display()
    )]
    Owner { path: PathBuf, uid: u32, me: u32 },
}

fn metadata(path: &Path) -> Result<fs::Metadata, PermError> {
    fs::metadata(path).map_err(PathIoError::on(path))
}

/// A private key or credentials file: refused when group or others may read or write
/// it, or when it belongs to another user than this process's (or root).
pub fn check_private_file(path: &Path) -> Result<(), PermError> {
    let m = metadata(path)?;
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me && m.uid() != 0 {
        return Err(PermError::Owner {
            path: path.to_owned(),
            uid: m.uid(),
            me,
        });
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PermError::Readable {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Creates the directory `path` (and its parents) if needed and makes its mode
/// exactly `mode`. Returns a warning when an existing directory was looser.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<Option<String>, PermError> {
    let existed = path.exists();
    fs::create_dir_all(path).map_err(PathIoError::on::<PermError>(path))?;
    let warning = set_mode(path, mode)?;
    Ok(warning.filter(|_| existed))
}

/// Makes the mode of the existing file or directory `path` exactly `mode`. Returns a
/// warning when it granted more than that before.
pub fn set_mode(path: &Path, mode: u32) -> Result<Option<String>, PermError> {
    let m = metadata(path)?;
    let before = m.mode() & 0o7777;
    if before == mode {
        return Ok(None);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(PathIoError::on::<PermError>(path))?;
    Ok((before & !mode != 0).then(|| {
        format!(
            "{}: mode was {before:04o}, which let other users in; set to {mode:04o}",
            path.display()
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        fs::write(&key, "k").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_private_file(&key).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("0644"), "{e}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        check_private_file(&key).unwrap();

        let state = dir.path().join("state");
        assert_eq!(ensure_dir(&state, 0o700).unwrap(), None);
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        let warning = ensure_dir(&state, 0o700).unwrap().unwrap();
        assert!(warning.contains("0755"), "{warning}");
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        // A mode that lets nobody new in is set silently.
        assert_eq!(set_mode(&state, 0o711).unwrap(), None);
    }
}
