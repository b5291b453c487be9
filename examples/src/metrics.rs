//! `p2pd`'s metrics endpoint: the SDK's registry (see
//! [`p2p_core::metrics`] and [`p2p_deploy::metrics`]) as OpenMetrics text
//! at `GET /metrics`, over plain HTTP/1.1 on the address `metrics_addr`
//! names (the classic Prometheus text to clients that do not ask for
//! OpenMetrics). Off by default; bind it to localhost, or to an address only the
//! monitoring network reaches: the text names the node's apps and
//! versions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use p2p_core::metrics::{
    CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE, Registry, encode, encode_prometheus,
};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Scrapes served at once; more wait for a turn.
const MAX_SCRAPES: usize = 16;

/// A client has this long to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a connection is served, whatever the client does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The running endpoint; dropping it stops serving.
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// The endpoint's address, bound, not yet serving: `p2pd` binds it before
/// it starts the node, so that a bad address stops it before any app
/// starts.
pub struct MetricsListener {
    listener: TcpListener,
}

impl MetricsListener {
    /// Binds `addr`.
    ///
    /// # Errors
    /// The address cannot be bound (in use, not this host's); the error
    /// names it.
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics_addr {addr}: cannot listen there"))?;
        Ok(MetricsListener { listener })
    }

    /// Serves `registry`.
    pub fn serve(self, registry: Arc<Registry>) -> Result<MetricsServer> {
        let addr = self.listener.local_addr()?;
        let task = tokio::spawn(serve(self.listener, registry));
        Ok(MetricsServer { addr, task })
    }
}

impl MetricsServer {
    /// Binds `addr` and serves `registry` there.
    ///
    /// # Errors
    /// The address cannot be bound (in use, not this host's); the error
    /// names it.
    pub async fn start(addr: SocketAddr, registry: Arc<Registry>) -> Result<Self> {
        MetricsListener::bind(addr).await?.serve(registry)
    }

    /// The address it listens on (the port chosen, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let turns = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Full: the connection is dropped at once (a scraper retries at
        // its next interval), never queued behind clients that stall.
        let Ok(turn) = turns.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: too many connections; dropped one");
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _turn = turn;
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&req, &registry)) }
            });
            // One request per connection: a client cannot hold a slot by
            // pipelining requests whose answers it never reads.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics: connection ended"),
                Err(_) => tracing::debug!(%peer, "metrics: connection timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(kind),
        );
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            // Prometheus asks for OpenMetrics; curl and promtool get the
            // classic text format.
            let openmetrics = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .any(|v| {
                    v.to_str()
                        .is_ok_and(|v| v.contains("application/openmetrics-text"))
                });
            if openmetrics {
                reply(StatusCode::OK, CONTENT_TYPE, encode(registry))
            } else {
                reply(
                    StatusCode::OK,
                    PROMETHEUS_CONTENT_TYPE,
                    encode_prometheus(registry),
                )
            }
        }
        (&Method::GET | &Method::HEAD, "/") => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "p2pd: metrics at /metrics\n".into(),
        ),
        (&Method::GET | &Method::HEAD, _) => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".into(),
        ),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET /metrics\n".into(),
        ),
    }
}
