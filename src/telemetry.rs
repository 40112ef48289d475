//! Logging and tracing set-up. Logs go to stderr; `FORESTSYNC_LOG` (or `RUST_LOG`) sets the filter.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = std::env::var("FORESTSYNC_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
