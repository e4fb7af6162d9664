//! The interface files a task's usage is read from, either opened by path at every
//! read or held open for the task's life and re-read from offset 0.
//!
//! An open + read + close of a cgroup file costs several times what a `pread` of an
//! open one does (the path walk, kernfs's and seq_file's allocations), and the agent
//! reads a dozen files of every running task each second. The kernel regenerates a
//! cgroup file's text whenever it is read from offset 0 (seq_file resets its
//! iterator), so a held descriptor always gives current figures.
//!
//! Held descriptors never keep a removed cgroup: rmdir succeeds while they are open
//! and their reads then fail (`ENODEV`). The owner drops them when the task's cgroup
//! goes. Each held file costs one descriptor and a page or so of kernel memory (the
//! seq_file buffer), so all held files of the process together stay within a budget
//! of the open files limit; past it, files are read by path again.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Descriptors held by every [`StatFiles`] of this process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// How many descriptors all held files may take: three quarters of the soft open
/// files limit, so the process's own files (and tasks' pidfds) still fit.
fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(0, |(soft, _)| {
                usize::try_from(soft / 4 * 3).unwrap_or(usize::MAX)
            })
    })
}

/// The number of descriptors held open for usage sampling in this process.
pub fn held_descriptors() -> usize {
    HELD.load(Ordering::Relaxed)
}

thread_local! {
    /// One read buffer per thread, reused by every read.
    static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 8192]);
}

/// A file of a task cgroup, by name (interface file names are unique across
/// controllers, so the name alone identifies it among the task's files).
struct Entry {
    name: &'static str,
    /// `None`: the kernel does not offer this file (it is not looked for again).
    file: Option<File>,
}

/// How a task cgroup's interface files are read (see the module's comment).
#[derive(Default)]
pub struct StatFiles {
    /// `None`: every read opens the file by path.
    held: Option<Vec<Entry>>,
}

impl std::fmt::Debug for StatFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.held {
            None => f.write_str("StatFiles(by path)"),
            Some(h) => write!(f, "StatFiles({} held)", h.len()),
        }
    }
}

impl StatFiles {
    /// Every read opens the file by path (one-off reads: recovery, tests).
    pub fn by_path() -> Self {
        Self { held: None }
    }

    /// Files are opened at their first read and held until this is dropped.
    pub fn held() -> Self {
        Self {
            held: Some(Vec::new()),
        }
    }

    /// How many descriptors this holds.
    pub fn descriptors(&self) -> usize {
        self.held
            .as_ref()
            .map_or(0, |h| h.iter().filter(|e| e.file.is_some()).count())
    }

    /// Reads `dir/name` and hands its text to `f`; `None` when it cannot be read (the
    /// kernel does not offer it, or the cgroup is gone).
    pub fn text<T>(
        &mut self,
        dir: &Path,
        name: &'static str,
        f: impl FnOnce(&str) -> T,
    ) -> Option<T> {
        let Some(held) = self.held.as_mut() else {
            let file = File::open(dir.join(name)).ok()?;
            return with_contents(&file, f);
        };
        if let Some(entry) = held.iter().find(|e| e.name == name) {
            return with_contents(entry.file.as_ref()?, f);
        }
        let file = match File::open(dir.join(name)) {
            Ok(file) => file,
            // Missing in an existing cgroup: this kernel does not offer the file. A
            // cgroup not created yet (the shim makes a systemd scope's) is looked
            // at again next time.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if dir.is_dir() {
                    held.push(Entry { name, file: None });
                }
                return None;
            }
            Err(_) => return None,
        };
        let value = with_contents(&file, f);
        if HELD.fetch_add(1, Ordering::Relaxed) < budget() {
            held.push(Entry {
                name,
                file: Some(file),
            });
        } else {
            // Over the budget: this file is read by path again next time.
            HELD.fetch_sub(1, Ordering::Relaxed);
        }
        value
    }

    /// A file holding one number.
    pub fn number(&mut self, dir: &Path, name: &'static str) -> Option<u64> {
        self.text(dir, name, |t| t.trim().parse().ok()).flatten()
    }

    /// The value of `key` in a flat keyed file (`key value` per line).
    pub fn keyed(&mut self, dir: &Path, name: &'static str, key: &str) -> Option<u64> {
        self.text(dir, name, |t| super::fsx::keyed(t, key))
            .flatten()
    }
}

impl Drop for StatFiles {
    fn drop(&mut self) {
        HELD.fetch_sub(self.descriptors(), Ordering::Relaxed);
    }
}

/// Reads the whole of `file` from offset 0 into the thread's buffer and hands its
/// text to `f`.
fn with_contents<T>(file: &File, f: impl FnOnce(&str) -> T) -> Option<T> {
    BUFFER.with(|buffer| {
        let mut buffer = buffer.try_borrow_mut().ok()?;
        let mut len = 0;
        loop {
            let n = file.read_at(&mut buffer[len..], len as u64).ok()?;
            len += n;
            // The statistics files are single seq_file records: a read that does not
            // fill the buffer returned all of it, so no read is spent on the end.
            if n == 0 || len < buffer.len() {
                break;
            }
            let grown = buffer.len() * 2;
            buffer.resize(grown, 0);
        }
        Some(f(std::str::from_utf8(&buffer[..len]).ok()?))
    })
}
