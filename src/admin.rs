//! The running agent's admin socket, `<state_dir>/admin.sock` (mode 0600 in the 0700 state
//! directory), and its client in the CLI.
//!
//! Protocol: the client sends one JSON request line (`{"status":{}}` or
//! `{"explain":{"user":"…"}}`) and reads one JSON response line (`{"status":{…}}`,
//! `{"explain":{…}}` or `{"error":"…"}`). A request is at most [`MAX_REQUEST_BYTES`] and must arrive
//! within [`REQUEST_TIMEOUT`]; anything else is answered with an error and the connection closed, so a
//! bad client can neither hang nor crash the agent. At most [`MAX_CONNECTIONS`] are served at once.
//!
//! The answers are built by the same code the CLI uses with the agent stopped
//! ([`crate::status::collect`], [`crate::explain::explain`]); only the agent adds live health.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use forestsync_actors::health;
use forestsync_actors::store::Store;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::config::Config;
use crate::explain::ExplainReport;
use crate::status::StatusReport;

/// The socket's file name in the state directory.
pub const SOCKET_NAME: &str = "admin.sock";
/// The largest request line accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The largest response the client reads.
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;
/// How long a client may take to send its request (and to read the answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are answered "busy".
pub const MAX_CONNECTIONS: usize = 8;
/// How long the CLI waits for the agent's answer (a report over a large store takes a while).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status {},
    Explain { user: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Status(StatusReport),
    Explain(ExplainReport),
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no agent answers on {path}: {source}")]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket; fix: move it away (forestsync only replaces a stale socket)")]
    NotASocket { path: PathBuf },
    #[error("another forestsync already answers on {path}")]
    InUse { path: PathBuf },
    #[error("the request is larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("the request is not valid: {0}")]
    BadRequest(String),
    #[error("the agent's answer cannot be read: {0}")]
    BadAnswer(String),
    #[error("the agent answered with an error: {0}")]
    Agent(String),
    #[error("{0}")]
    Status(#[from] crate::status::StatusError),
    #[error("{0}")]
    Explain(#[from] crate::explain::ExplainError),
    #[error("cannot open the state store (is an agent running that does not answer on its admin socket?): {0}")]
    Store(#[from] forestsync_actors::store::StoreError),
}

/// Answers one request (runs on a blocking thread: store reads are synchronous).
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// The agent's handler: reports from its store, with this process's live health.
pub fn agent_handler(config: Arc<Config>, store: Store) -> Handler {
    Arc::new(move |req| match req {
        Request::Status {} => {
            match crate::status::collect(
                &config,
                &store,
                Some(health::snapshot()),
                health::now_unix(),
            ) {
                Ok(r) => Response::Status(r),
                Err(e) => Response::Error(e.to_string()),
            }
        }
        Request::Explain { user } => match crate::explain::explain(&config, &store, &user) {
            Ok(r) => Response::Explain(r),
            Err(e) => Response::Error(e.to_string()),
        },
    })
}

/// Binds `path` (a stale socket is replaced, mode 0600) and serves it on the current tokio runtime
/// until the process ends.
pub fn serve(path: &Path, handler: Handler) -> Result<(), AdminError> {
    let listener = bind(path)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let shown = path.to_owned();
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(socket = %shown.display(), error = %e, "admin socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handler = handler.clone();
            match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        connection(stream, handler).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tokio::spawn(async move {
                        answer(
                            stream,
                            &Response::Error("busy: too many admin connections; retry".into()),
                        )
                        .await;
                    });
                }
            }
        }
    });
    tracing::info!(socket = %path.display(), "admin socket listening");
    Ok(())
}

/// Starts the agent's admin socket in `<state_dir>/admin.sock`.
pub fn start_agent_server(config: &Config, store: Store) -> Result<(), AdminError> {
    serve(
        &socket_path(&config.state_dir),
        agent_handler(Arc::new(config.clone()), store),
    )
}

fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let io = |source| AdminError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(AdminError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => {
            return Err(AdminError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    // The state directory (0700) already keeps others out; the socket itself is 0600 as well.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

async fn connection(stream: UnixStream, handler: Handler) {
    let (read, write) = stream.into_split();
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(read)).await {
        Err(_) => Response::Error(format!(
            "no complete request within {} s",
            REQUEST_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Response::Error(e.to_string()),
        Ok(Ok(req)) => match tokio::task::spawn_blocking(move || handler(req)).await {
            Ok(r) => r,
            Err(e) => Response::Error(format!("the request failed inside the agent: {e}")),
        },
    };
    write_response(write, &response).await;
}

async fn answer(stream: UnixStream, response: &Response) {
    let (_, write) = stream.into_split();
    write_response(write, response).await;
}

async fn write_response(mut write: tokio::net::unix::OwnedWriteHalf, response: &Response) {
    let mut line = serde_json::to_vec(response).unwrap_or_else(|e| {
        format!(
            "{{\"error\":\"cannot encode the answer: {}\"}}",
            e.to_string().replace('"', "'")
        )
        .into_bytes()
    });
    line.push(b'\n');
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        write.write_all(&line).await?;
        write.shutdown().await
    })
    .await;
}

/// One line (or everything until the client closes its side), at most [`MAX_REQUEST_BYTES`].
async fn read_request(read: tokio::net::unix::OwnedReadHalf) -> Result<Request, AdminError> {
    let mut limited = tokio::io::BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    let mut buf = Vec::new();
    limited
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
    parse_request(&buf)
}

/// A request line as received (the trailing newline optional).
pub fn parse_request(buf: &[u8]) -> Result<Request, AdminError> {
    if buf.len() > MAX_REQUEST_BYTES {
        return Err(AdminError::TooLarge);
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::BadRequest("empty request".into()));
    }
    serde_json::from_slice(buf).map_err(|e| {
        AdminError::BadRequest(format!(
            "{e}; expected {{\"status\":{{}}}} or {{\"explain\":{{\"user\":\"…\"}}}}"
        ))
    })
}

/// Sends `request` to the agent serving `state_dir` (blocking) and returns its answer.
/// [`AdminError::NotRunning`] when nobody listens there.
pub fn request(
    state_dir: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, AdminError> {
    let path = socket_path(state_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|source| {
        if matches!(
            source.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ) {
            AdminError::NotRunning {
                path: path.clone(),
                source,
            }
        } else {
            AdminError::Io {
                path: path.clone(),
                source,
            }
        }
    })?;
    let io = |source| AdminError::Io {
        path: path.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line =
        serde_json::to_vec(request).map_err(|e| AdminError::BadRequest(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reader = BufReader::new(stream.take(MAX_RESPONSE_BYTES));
    let mut answer = Vec::new();
    reader.read_until(b'\n', &mut answer).map_err(io)?;
    serde_json::from_slice(&answer).map_err(|e| AdminError::BadAnswer(e.to_string()))
}

/// Where a report came from.
pub enum Source {
    /// The running agent answered.
    Agent,
    /// The store, read by this process: no agent answered (the reason is kept for the output).
    Store { why: String },
}

/// `status`: from the running agent, else from the store (agent stopped).
pub fn fetch_status(config: &Config) -> Result<(StatusReport, Source), AdminError> {
    match request(&config.state_dir, &Request::Status {}, CLIENT_TIMEOUT) {
        Ok(Response::Status(r)) => Ok((r, Source::Agent)),
        Ok(Response::Error(e)) => Err(AdminError::Agent(e)),
        Ok(other) => Err(AdminError::BadAnswer(format!(
            "unexpected answer {other:?}"
        ))),
        Err(e) => {
            let store = open_store(config, &e)?;
            let r = crate::status::collect(config, &store, None, health::now_unix())?;
            Ok((r, Source::Store { why: e.to_string() }))
        }
    }
}

/// `explain`: from the running agent, else from the store (agent stopped).
pub fn fetch_explain(config: &Config, user: &str) -> Result<(ExplainReport, Source), AdminError> {
    let req = Request::Explain {
        user: user.to_owned(),
    };
    match request(&config.state_dir, &req, CLIENT_TIMEOUT) {
        Ok(Response::Explain(r)) => Ok((r, Source::Agent)),
        Ok(Response::Error(e)) => Err(AdminError::Agent(e)),
        Ok(other) => Err(AdminError::BadAnswer(format!(
            "unexpected answer {other:?}"
        ))),
        Err(e) => {
            let store = open_store(config, &e)?;
            let r = crate::explain::explain(config, &store, user)?;
            Ok((r, Source::Store { why: e.to_string() }))
        }
    }
}

fn open_store(config: &Config, socket_error: &AdminError) -> Result<Store, AdminError> {
    if !matches!(socket_error, AdminError::NotRunning { .. }) {
        tracing::warn!(error = %socket_error, "the agent's admin socket did not answer; trying the store");
    }
    Store::open(&config.state_dir).map_err(AdminError::Store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "forestsync-admin-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn echo_handler() -> Handler {
        Arc::new(|req| match req {
            Request::Status {} => Response::Error("status asked".into()),
            Request::Explain { user } => Response::Error(format!("explain {user}")),
        })
    }

    async fn raw(path: &Path, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(path).await.expect("connect");
        // The server may close early (oversized request): a failed write is fine, the answer is read.
        let _ = s.write_all(bytes).await;
        let mut out = String::new();
        let mut reader = tokio::io::BufReader::new(s);
        let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut out)).await;
        out
    }

    fn error_of(line: &str) -> String {
        match serde_json::from_str::<Response>(line.trim()) {
            Ok(Response::Error(e)) => e,
            other => panic!("expected an error answer, got {other:?} from {line:?}"),
        }
    }

    #[test]
    fn requests_parse_and_bad_ones_are_errors() {
        assert_eq!(
            parse_request(b"{\"status\":{}}\n").unwrap(),
            Request::Status {}
        );
        assert_eq!(
            parse_request(br#"{"explain":{"user":"ann"}}"#).unwrap(),
            Request::Explain { user: "ann".into() }
        );
        assert!(matches!(
            parse_request(b"garbage"),
            Err(AdminError::BadRequest(_))
        ));
        assert!(matches!(
            parse_request(b"\n"),
            Err(AdminError::BadRequest(_))
        ));
        assert!(matches!(
            parse_request(br#"{"explain":{"user":"a","extra":1}}"#),
            Err(AdminError::BadRequest(_))
        ));
        assert!(matches!(
            parse_request(&vec![b' '; MAX_REQUEST_BYTES + 1]),
            Err(AdminError::TooLarge)
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn garbage_oversized_and_silent_clients_get_errors_and_the_server_keeps_serving() {
        let dir = temp_dir("proto");
        let path = socket_path(&dir);
        // A stale socket file (nobody listening) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
        serve(&path, echo_handler()).expect("serves");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let e = error_of(&raw(&path, b"not json at all\n").await);
        assert!(e.contains("not valid"), "{e}");

        let mut big = vec![b'x'; MAX_REQUEST_BYTES + 10];
        big.push(b'\n');
        let e = error_of(&raw(&path, &big).await);
        assert!(e.contains("larger than"), "{e}");

        // A client that connects and says nothing is answered after the timeout, not waited on forever;
        // meanwhile others are served.
        let silent = tokio::spawn({
            let path = path.clone();
            async move {
                let s = UnixStream::connect(&path).await.expect("connect");
                let mut out = String::new();
                let mut reader = tokio::io::BufReader::new(s);
                let _ =
                    tokio::time::timeout(Duration::from_secs(15), reader.read_line(&mut out)).await;
                out
            }
        });
        let e = error_of(&raw(&path, b"{\"explain\":{\"user\":\"ann\"}}\n").await);
        assert_eq!(e, "explain ann");
        let e = error_of(&silent.await.unwrap());
        assert!(e.contains("no complete request"), "{e}");

        // The blocking client used by the CLI.
        let dir2 = dir.clone();
        let answer = tokio::task::spawn_blocking(move || {
            request(&dir2, &Request::Status {}, Duration::from_secs(5))
        })
        .await
        .unwrap()
        .expect("answer");
        assert_eq!(answer, Response::Error("status asked".into()));

        // A second server on the same live socket is refused, and nothing is removed.
        assert!(matches!(
            serve(&path, echo_handler()),
            Err(AdminError::InUse { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_agent_is_not_running_and_a_regular_file_is_never_replaced() {
        let dir = temp_dir("none");
        let err = request(&dir, &Request::Status {}, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, AdminError::NotRunning { .. }), "{err}");
        std::fs::write(socket_path(&dir), b"keep me").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(async { serve(&socket_path(&dir), echo_handler()) })
            .unwrap_err();
        assert!(matches!(err, AdminError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(socket_path(&dir)).unwrap(), b"keep me");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
