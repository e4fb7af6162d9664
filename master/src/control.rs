//! The master's local control socket, `<work-dir>/control.sock` (mode 0600 in the
//! 0700 work dir, so only the master's user can connect): how `cella-master backup`
//! asks a running master for a consistent copy of its registry, which no other process
//! can open while the master holds it.
//!
//! The protocol is one line each way: `backup <absolute path>` → `ok` or
//! `error: <message>`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::master::MasterHandle;

/// The socket's file name in the work dir.
pub const SOCKET: &str = "control.sock";

/// The longest request line.
const MAX_LINE: usize = 4096;

/// Listens on `<work_dir>/control.sock` until the task is aborted.
pub fn listen(
    work_dir: &Path,
    master: MasterHandle,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = work_dir.join(SOCKET);
    // A socket left by a master that died: nobody listens on it any more.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    cella_proto::perms::set_mode(&path, 0o600).map_err(std::io::Error::other)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let master = master.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(stream, &master).await {
                    tracing::warn!("control socket: {e}");
                }
            });
        }
    }))
}

async fn serve_one(stream: UnixStream, master: &MasterHandle) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read)
        .take(u64::try_from(MAX_LINE).unwrap_or(u64::MAX))
        .read_line(&mut line)
        .await?;
    let answer = match line.trim_end().split_once(' ') {
        Some(("backup", path)) if Path::new(path).is_absolute() => {
            let path = PathBuf::from(path);
            tracing::info!(path = %path.display(), "backing the registry up (control socket)");
            match master.backup(path).await {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("error: {e}"),
            }
        }
        _ => "error: unknown request; send `backup /absolute/path`".to_string(),
    };
    write.write_all(format!("{answer}\n").as_bytes()).await?;
    write.shutdown().await
}

/// Asks the master running on `work_dir` to back its registry up to `dest`. `Ok(None)`:
/// no master listens there.
pub async fn request_backup(work_dir: &Path, dest: &Path) -> Result<Option<()>, String> {
    let socket = work_dir.join(SOCKET);
    let Ok(mut stream) = UnixStream::connect(&socket).await else {
        return Ok(None);
    };
    stream
        .write_all(format!("backup {}\n", dest.display()).as_bytes())
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut answer = String::new();
    tokio::time::timeout(
        Duration::from_secs(600),
        BufReader::new(stream).read_line(&mut answer),
    )
    .await
    .map_err(|_| format!("{}: no answer within 10 minutes", socket.display()))?
    .map_err(|e| format!("{}: {e}", socket.display()))?;
    match answer.trim_end() {
        "ok" => Ok(Some(())),
        other => Err(other.strip_prefix("error: ").unwrap_or(other).to_string()),
    }
}
