//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process is alive) and
//! `/readyz` (the bridge can take work), HTTP/1.1 on tokio through hyper.
//!
//! What "ready" means is the caller's: this crate sits below the bridge, so readiness comes in
//! through the [`Readiness`] trait (the `gpubridge` facade implements it over
//! `GpuBridge::readiness`).
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | 200, [`crate::exporter::render`]'s text, `text/plain; version=0.0.4` (404 when metrics are off) |
//! | `GET /healthz` | 200 `ok` while the server runs |
//! | `GET /readyz` | 200 `ready`, or 503 with a one-line reason |
//! | anything else | 404, or 405 for another method on a known path |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::exporter::{render, PrometheusHandle};
use crate::Error;

/// A client that has not sent its request head by then is disconnected, so idle or stalled
/// connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The content type of the Prometheus text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the service behind the endpoint can take work, as `/readyz` reports it.
pub trait Readiness: Send + Sync + 'static {
    /// `Ok` when ready; otherwise a short, one-line reason (it becomes the 503's body).
    ///
    /// # Errors
    /// The reason the service is not ready.
    fn check(&self) -> Result<(), String>;

    /// Called before each `/metrics` render, to publish gauges that are states rather than
    /// events (a circuit that opened, then timed out to half-open, with no request since).
    fn before_scrape(&self) {}
}

/// Always ready: for a process that serves metrics without a bridge.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysReady;

impl Readiness for AlwaysReady {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

struct State {
    handle: Option<PrometheusHandle>,
    readiness: Arc<dyn Readiness>,
}

/// A running endpoint. Dropping it stops the server (as [`MetricsServer::shutdown`] does,
/// without waiting).
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port) and serves on the current tokio runtime.
    /// Without a `handle` (metrics turned off) `/metrics` answers 404 and the probes still work.
    ///
    /// # Errors
    /// [`Error::Io`] when the address cannot be bound, or when called outside a tokio runtime
    /// (the accept loop is spawned on the current one).
    pub async fn bind(
        addr: SocketAddr,
        handle: Option<PrometheusHandle>,
        readiness: Arc<dyn Readiness>,
    ) -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(format!("no tokio runtime to serve on: {e}")))?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State { handle, readiness });
        let (stop, stopped) = oneshot::channel();
        let task = runtime.spawn(accept_loop(listener, state, stopped));
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        Ok(Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The address it listens on (with the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes open connections and waits for the server task to end.
    pub async fn shutdown(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!("the metrics endpoint task ended abnormally: {e}");
            }
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        // Dropping the sender wakes the accept loop, which then ends.
        self.stop.take();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stopped: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let state = state.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| respond(req, state.clone()));
                        if let Err(e) = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_READ_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!(%peer, "metrics connection ended with an error: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("metrics endpoint accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    tracing::info!("metrics endpoint stopped");
}

async fn respond(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if known && req.method() != Method::GET {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET is allowed\n".to_owned(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return Ok(r);
    }
    Ok(match path {
        "/metrics" => match &state.handle {
            Some(handle) => {
                state.readiness.before_scrape();
                reply(StatusCode::OK, METRICS_CONTENT_TYPE, render(handle))
            }
            None => reply(
                StatusCode::NOT_FOUND,
                TEXT,
                "metrics are turned off (telemetry.enable_metrics = false)\n".to_owned(),
            ),
        },
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".to_owned()),
        "/readyz" => match state.readiness.check() {
            Ok(()) => reply(StatusCode::OK, TEXT, "ready\n".to_owned()),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    })
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
