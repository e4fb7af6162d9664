//! Mutual exclusion between pulls: an async mutex per key inside the process, and
//! `flock` on a file per key between processes sharing the store.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::ImageError;

/// A held `flock`, released when dropped.
pub struct FileLock {
    _lock: Flock<File>,
}

impl FileLock {
    fn open(path: &Path) -> Result<File, ImageError> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(ImageError::io(path, "open the lock file"))
    }

    /// Waits for the lock (on a blocking thread when another holder makes it wait: a
    /// free lock is taken at once, without starting a thread for it, which matters on
    /// every launch from a stored image).
    pub async fn acquire(path: PathBuf, exclusive: bool) -> Result<Self, ImageError> {
        let file = Self::open(&path)?;
        let arg = if exclusive {
            FlockArg::LockExclusiveNonblock
        } else {
            FlockArg::LockSharedNonblock
        };
        match Flock::lock(file, arg) {
            Ok(lock) => return Ok(Self { _lock: lock }),
            Err((_, Errno::EWOULDBLOCK | Errno::EINTR)) => {}
            Err((_, errno)) => {
                return Err(ImageError::Io {
                    path,
                    op: "lock",
                    source: errno.into(),
                });
            }
        }
        tokio::task::spawn_blocking(move || Self::acquire_blocking(&path, exclusive))
            .await
            .map_err(|e| ImageError::Task(e.to_string()))?
    }

    pub fn acquire_blocking(path: &Path, exclusive: bool) -> Result<Self, ImageError> {
        let file = Self::open(path)?;
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        loop {
            match Flock::lock(
                file.try_clone()
                    .map_err(ImageError::io(path, "dup the lock file"))?,
                arg,
            ) {
                Ok(lock) => return Ok(Self { _lock: lock }),
                Err((_, Errno::EINTR)) => continue,
                Err((_, errno)) => {
                    return Err(ImageError::Io {
                        path: path.to_owned(),
                        op: "lock",
                        source: errno.into(),
                    });
                }
            }
        }
    }

    /// Takes the lock only if nobody holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<Self>, ImageError> {
        Self::try_lock(path, FlockArg::LockExclusiveNonblock)
    }

    /// Takes the lock shared, only if nobody holds it exclusively.
    pub fn try_acquire_shared(path: &Path) -> Result<Option<Self>, ImageError> {
        Self::try_lock(path, FlockArg::LockSharedNonblock)
    }

    fn try_lock(path: &Path, arg: FlockArg) -> Result<Option<Self>, ImageError> {
        let file = Self::open(path)?;
        match Flock::lock(file, arg) {
            Ok(lock) => Ok(Some(Self { _lock: lock })),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(ImageError::Io {
                path: path.to_owned(),
                op: "lock",
                source: errno.into(),
            }),
        }
    }
}

/// One async mutex per key, dropped when nobody uses it.
#[derive(Default)]
pub struct KeyedMutex {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedMutex {
    pub fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.retain(|_, weak| weak.strong_count() > 0);
        if let Some(existing) = map.get(key).and_then(Weak::upgrade) {
            return existing;
        }
        let mutex = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key.to_owned(), Arc::downgrade(&mutex));
        mutex
    }
}

/// Both locks for one key: first the in-process mutex (so tasks of this process
/// queue without occupying blocking threads), then the file lock.
pub struct KeyLock {
    _file: FileLock,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl KeyLock {
    pub async fn acquire(keyed: &KeyedMutex, key: &str, file: PathBuf) -> Result<Self, ImageError> {
        let guard = keyed.get(key).lock_owned().await;
        let file = FileLock::acquire(file, true).await?;
        Ok(Self {
            _file: file,
            _guard: guard,
        })
    }
}
