//! The hook's side of the socket: hand one capture to the running agent, or fail fast.
//!
//! The socket is only used when it is a socket owned by root (or by the hook's own user) with no
//! group/other permission bits, in a directory nobody else can write to; otherwise the hook must not
//! talk to it (a look-alike socket would receive clear passwords) and falls back to the spool.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::spool::effective_uid;
use super::{encode_frame, io_error, CapturedPassword, PasswordError, ACK};

/// Checks that `socket` may receive passwords: see the module doc.
pub fn check_socket(socket: &Path) -> Result<(), PasswordError> {
    let insecure = |path: &Path, reason: String| {
        Err(PasswordError::Insecure {
            path: path.into(),
            reason,
        })
    };
    let me = effective_uid();
    let meta = std::fs::symlink_metadata(socket).map_err(io_error(socket, "stat the socket"))?;
    if !meta.file_type().is_socket() {
        return insecure(socket, "not a unix socket".into());
    }
    if meta.uid() != 0 && meta.uid() != me {
        return insecure(socket, format!("owned by uid {}, not root", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return insecure(
            socket,
            format!("mode {:o} gives group/other access", meta.mode() & 0o777),
        );
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        let d = std::fs::metadata(dir).map_err(io_error(dir, "stat the socket's directory"))?;
        if d.uid() != 0 && d.uid() != me {
            return insecure(dir, format!("owned by uid {}, not root", d.uid()));
        }
        if d.mode() & 0o022 != 0 {
            return insecure(dir, "writable by group/other".into());
        }
    }
    Ok(())
}

/// Sends `msg` to the agent listening on `socket` and waits for its acknowledgement, all within
/// `timeout`. Any failure (no socket, refused, insecure, slow, no ACK) is an error: the caller spools.
pub async fn deliver(
    socket: &Path,
    msg: &CapturedPassword,
    timeout: Duration,
) -> Result<(), PasswordError> {
    check_socket(socket)?;
    let frame = encode_frame(msg);
    let exchange = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(io_error(socket, "connect to the agent"))?;
        stream
            .write_all(&frame)
            .await
            .map_err(io_error(socket, "send to the agent"))?;
        let mut answer = [0u8; 1];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(io_error(socket, "read the agent's answer"))?;
        if answer[0] != ACK {
            return Err(PasswordError::Malformed {
                detail: format!("the agent answered {:#04x}, not ACK", answer[0]),
            });
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(PasswordError::Timeout {
            path: socket.into(),
            millis: timeout.as_millis(),
        }),
    }
}
