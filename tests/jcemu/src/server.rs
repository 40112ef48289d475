//! Listener, TLS and per-connection serving (hyper-util auto HTTP/1.1 + HTTP/2 over tokio-rustls or plain TCP).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::clock::Clock;
use crate::config::{is_object_id, Config};
use crate::conn_exec::{ConnExecutor, ConnTasks};
use crate::error::Error;
use crate::reqlog::RequestLog;
use crate::shared::Shared;
use crate::spec::Contract;
use crate::store::Store;
use crate::{api, certs, coalesce};

/// Per-connection control handed to the handlers: `drop` closes the connection without a response.
#[derive(Clone)]
pub struct ConnCtl {
    pub drop: Arc<Notify>,
}

/// A running emulator. Dropping it stops accepting connections; `shutdown().await` also waits for open
/// connections (at most a few seconds) and flushes the request log.
pub struct Emulator {
    addr: SocketAddr,
    base_url: String,
    ca_pem: Option<String>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Binds, generates certificates (HTTPS), loads the spec if asked, and returns once listening.
    pub async fn start(config: Config) -> Result<Emulator, Error> {
        if !is_object_id(&config.org_id) {
            return Err(Error::Config(format!(
                "org_id must be 24 hexadecimal digits, got '{}'",
                config.org_id
            )));
        }
        let faults = config.faults();
        faults.validate().map_err(Error::Config)?;
        let settings = config.settings();
        settings.validate().map_err(Error::Config)?;

        let contract: Option<Arc<Contract>> = match (&config.contract, &config.spec_dir) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(dir)) => {
                let d = dir.clone();
                let loaded = tokio::task::spawn_blocking(move || Contract::load(&d))
                    .await
                    .map_err(|e| Error::Spec {
                        path: dir.clone(),
                        message: e.to_string(),
                    })?;
                match loaded {
                    Ok(c) => Some(Arc::new(c)),
                    Err(e) => {
                        return Err(Error::Spec {
                            path: dir.clone(),
                            message: e.to_string(),
                        })
                    }
                }
            }
            (None, None) => None,
        };

        let log = match &config.request_log {
            Some(path) => {
                let (log, _task) = RequestLog::open(path).map_err(|source| Error::RequestLog {
                    path: path.clone(),
                    source,
                })?;
                Some(log)
            }
            None => None,
        };

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let url_ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };

        let (acceptor, ca_pem) = if config.tls {
            let c = certs::generate(addr.ip())?;
            if let Some(path) = &config.ca_out {
                std::fs::write(path, &c.ca_pem).map_err(|source| Error::CaOut {
                    path: path.clone(),
                    source,
                })?;
            }
            (
                Some(TlsAcceptor::from(certs::server_config(&c)?)),
                Some(c.ca_pem),
            )
        } else {
            (None, None)
        };
        let scheme = if config.tls { "https" } else { "http" };
        let base_url = format!("{scheme}://{}", SocketAddr::new(url_ip, addr.port()));

        let shared = Arc::new(Shared::new(
            Store::new(),
            faults,
            settings,
            config.keys(),
            config.org_id.clone(),
            Clock::new(config.clock_start),
            config.seed,
            contract,
            log,
        ));
        let router = api::router(shared.clone());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, acceptor, router, stop_rx));
        tracing::info!(%base_url, spec = shared.contract.is_some(), "jcemu listening");
        Ok(Emulator {
            addr,
            base_url,
            ca_pem,
            shared,
            stop,
            task: Some(task),
        })
    }

    /// `https://127.0.0.1:PORT` (or `http://…` with `tls: false`), without a trailing slash.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) that signed the server certificate; `None` over plain HTTP.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// The state document of `GET /__emulator/state`.
    pub fn state(&self) -> Value {
        self.shared
            .store
            .read()
            .state_document(self.shared.clock.now_ms())
    }

    /// The channel credentials (agent secret, payload key) issued to every registered agent, for
    /// tests that check they never leak; never served over HTTP.
    pub fn channel_credentials(&self) -> Vec<(String, [u8; 32])> {
        self.shared
            .store
            .read()
            .agents
            .values()
            .filter_map(|a| Some((a.secret.clone()?, a.payload_key?)))
            .collect()
    }

    /// Spec violations recorded so far (as in `GET /__emulator/violations`).
    pub fn violations(&self) -> Value {
        serde_json::to_value(self.shared.violations.lock().clone()).unwrap_or(Value::Null)
    }

    /// Stops accepting, lets open connections finish (at most ~5 s), flushes the request log.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(log) = &self.shared.log {
            log.flush().await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_conn(stream, tls.clone(), router.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
}

async fn serve_conn(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    router: Router,
    stop: watch::Receiver<bool>,
) {
    match tls {
        Some(acceptor) => {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(s)) => serve_io(s, router, stop).await,
                Ok(Err(e)) => tracing::debug!("TLS handshake: {e}"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
        None => serve_io(stream, router, stop).await,
    }
}

async fn serve_io<I>(io: I, router: Router, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ctl = ConnCtl {
        drop: Arc::new(Notify::new()),
    };
    let handler_ctl = ctl.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(handler_ctl.clone());
        let h2 = req.version() == hyper::Version::HTTP_2;
        let handler = router.clone().oneshot(req);
        async move {
            if !h2 {
                // HTTP/1.1 answers one request at a time anyway: run the handler in the connection task.
                return handler.await;
            }
            // HTTP/2: the stream task runs inside the connection task (see conn_exec), so the handler runs
            // as its own task to keep the requests of one connection in parallel. Dropping the stream task
            // (connection closed, e.g. the `drop_rate` fault) aborts the handler.
            let mut task = AbortOnDrop(tokio::spawn(handler));
            match (&mut task.0).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("request handler failed: {e}");
                    let mut r = axum::response::Response::new(axum::body::Body::empty());
                    *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    Ok(r)
                }
            }
        }
    });
    let exec = ConnExecutor::default();
    let mut tasks = ConnTasks::new(&exec);
    let (io, mut flusher) = coalesce::wrap(io);
    let builder = hyper_util::server::conn::auto::Builder::new(exec);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    if *stop.borrow() {
        return;
    }
    // One future drives the connection, its stream tasks and the write-out, in this order within a poll:
    // the connection reads frames, starts stream tasks and writes the frames queued so far; each stream task
    // that runs (queueing a whole response: HEADERS and body) is followed by the connection writing those
    // frames, so a response's frames are adjacent; the flusher then writes everything out in one go
    // (see conn_exec and coalesce for why).
    let shutdown = AtomicBool::new(false);
    let mut shutdown_applied = false;
    let drive = std::future::poll_fn(|cx| {
        if !shutdown_applied && shutdown.load(Ordering::Relaxed) {
            conn.as_mut().graceful_shutdown();
            shutdown_applied = true;
        }
        let mut finished = None;
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            finished = Some(r);
        } else {
            tasks.run(cx, |cx| {
                if finished.is_none() {
                    if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                        finished = Some(r);
                    }
                }
            });
        }
        // (also when the connection has finished: best effort for anything it wrote without shutting down)
        let written = flusher.poll_write_out(cx);
        if let Some(r) = finished {
            return Poll::Ready(r.map_err(|e| e.to_string()));
        }
        match written {
            Poll::Ready(e) => Poll::Ready(Err(format!("write: {e}"))),
            Poll::Pending => Poll::Pending,
        }
    });
    tokio::pin!(drive);
    let dropped = ctl.drop.notified();
    tokio::pin!(dropped);
    let grace = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(grace);
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            r = drive.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection: {e}");
                }
                break;
            }
            () = dropped.as_mut() => {
                // dropping the connection (and its stream tasks) closes the socket without a response
                break;
            }
            _ = stop.changed(), if !draining => {
                shutdown.store(true, Ordering::Relaxed);
                draining = true;
                grace.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(3));
            }
            () = grace.as_mut(), if draining => break,
        }
    }
}

/// A spawned task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
