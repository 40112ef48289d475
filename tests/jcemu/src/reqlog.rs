//! `--request-log FILE`: one JSON line per `/api` request, written by a background task.

use std::io::Write;
use std::path::Path;

use serde_json::Value;
use tokio::sync::mpsc;

enum Msg {
    Entry(Value),
    Flush(tokio::sync::oneshot::Sender<()>),
}

pub struct RequestLog {
    tx: mpsc::UnboundedSender<Msg>,
}

impl RequestLog {
    /// Opens (appends to) the file and starts the writer task; the task ends when the log is dropped.
    pub fn open(path: &Path) -> std::io::Result<(RequestLog, tokio::task::JoinHandle<()>)> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let task = tokio::task::spawn_blocking(move || {
            let mut w = std::io::BufWriter::new(file);
            while let Some(first) = rx.blocking_recv() {
                let mut waiting = Vec::new();
                let mut next = Some(first);
                while let Some(msg) = next {
                    match msg {
                        Msg::Entry(v) => {
                            if serde_json::to_writer(&mut w, &v).is_ok() {
                                let _ = w.write_all(b"\n");
                            }
                        }
                        Msg::Flush(done) => waiting.push(done),
                    }
                    next = rx.try_recv().ok();
                }
                if let Err(e) = w.flush() {
                    tracing::warn!("request log: {e}");
                }
                for done in waiting {
                    let _ = done.send(());
                }
            }
            let _ = w.flush();
        });
        Ok((RequestLog { tx }, task))
    }

    pub fn write(&self, entry: Value) {
        let _ = self.tx.send(Msg::Entry(entry));
    }

    /// Resolves once everything written before the call is on disk.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// Replaces the value of every `password` / `connectKey` field (any depth, any case) with `"<redacted>"`.
pub fn redact(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, val)| {
                    let secret = k.eq_ignore_ascii_case("password")
                        || k.eq_ignore_ascii_case("connectKey")
                        || k.eq_ignore_ascii_case("connect_key")
                        || k.eq_ignore_ascii_case("x-api-key");
                    (
                        k.clone(),
                        if secret {
                            Value::String("<redacted>".into())
                        } else {
                            redact(val)
                        },
                    )
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_at_any_depth() {
        let v = json!({"username": "a", "Password": "x", "nested": [{"password": "y", "keep": 1}]});
        assert_eq!(
            redact(&v),
            json!({"username": "a", "Password": "<redacted>", "nested": [{"password": "<redacted>", "keep": 1}]})
        );
    }
}
