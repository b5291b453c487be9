//! Metrics: the Prometheus/OpenMetrics registry the SDK fills.
//!
//! The SDK counts through [`prometheus_client`] (re-exported here, so that
//! embedders use the same version). An embedder makes one registry with
//! [`new_registry`] (it carries the [`ProcessCollector`]: CPU, memory,
//! threads, file descriptors), hands a sub-registry to each part that
//! counts (this module's [`Metered`] provider wrapper, the deploy agent's
//! metrics), and exposes [`encode`]'s text its own way; `p2pd` serves it
//! over HTTP.
//!
//! [`Metered`] wraps any [`Provider`] (put it outside
//! [`Admitted`](crate::Admitted), so that refused handshakes count as
//! failed connections) and counts, under the names it is registered
//! with (`p2p_` in `p2pd`):
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `connections_established_total` | counter | `direction` (`in`, `out`) | connections set up, identity verified (and admitted) |
//! | `connection_failures_total` | counter | `reason` (`timeout`, `unreachable`, `denied`, `closed`, `protocol`, `other`) | dials that did not give a connection |
//! | `connect_duration_seconds` | histogram | | time to establish an outgoing connection |
//! | `connections_active` | gauge | `path` (`direct`, `relayed`, `unknown`) | peers connected now, by the path their connection takes |
//! | `hole_punches_tried_total`, `hole_punches_succeeded_total` | counter | | from the backend's [`TransportStats`] |
//! | `stream_bytes_total` | counter | `direction` (`sent`, `received`) | every byte of the SDK's streams (chunks and control) |
//!
//! ```
//! use std::sync::Arc;
//! use p2p_core::metrics::{Metered, encode, new_registry};
//! # async fn run(provider: Arc<dyn p2p_core::Provider>) {
//! let mut registry = new_registry();
//! let provider = Metered::wrap(provider, registry.sub_registry_with_prefix("p2p"));
//! // ... build the node on `provider` ...
//! let text = encode(&registry); // what a scrape of /metrics returns
//! assert!(text.contains("p2p_connections_active"));
//! # }
//! ```

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use tokio::time::Instant;

use async_trait::async_trait;
pub use prometheus_client;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::addr::PeerAddr;
use crate::error::{Error, Result};
use crate::id::PeerId;
use crate::sync::lock;
use crate::transport::{
    Connection, Discovered, Listener, PathKind, Provider, RecvStream, SendStream, TransportStats,
};

/// The content type of [`encode`]'s text, for an HTTP answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of [`encode_prometheus`]'s text.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label sets of the SDK's metric families.
pub type Labels = Vec<(&'static str, String)>;

/// A label set of one label.
pub fn label(key: &'static str, value: impl Into<String>) -> Labels {
    vec![(key, value.into())]
}

/// A root registry with the [`ProcessCollector`] in it.
pub fn new_registry() -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(ProcessCollector));
    r
}

/// The registry as OpenMetrics text (ending in `# EOF`).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; a collector that fails leaves
    // what it wrote so far.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding the metrics failed");
    }
    out
}

/// The registry in the Prometheus text format (version 0.0.4), for
/// clients that do not ask for OpenMetrics (`curl`, `promtool check
/// metrics`, older scrapers): the same samples, with each counter's
/// `HELP` and `TYPE` under its sample name (`x_total`), and no `UNIT` or
/// `EOF` lines.
pub fn encode_prometheus(registry: &Registry) -> String {
    to_prometheus_text(&encode(registry))
}

fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let shown = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some((h, text)) = help.take()
                && h == name
            {
                out.push_str(&format!("# HELP {shown} {text}\n"));
            }
            out.push_str(&format!("# TYPE {shown} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Histogram buckets for durations from 5 ms to 60 s.
pub fn duration_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
}

/// Histogram buckets for slow steps (a health gate), from 100 ms to 30
/// minutes.
pub fn slow_buckets() -> Vec<f64> {
    vec![
        0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    ]
}

/// The process's own figures, read from `/proc/self` at every scrape
/// (Linux; elsewhere nothing): `process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
/// `process_threads`, `process_open_fds`, `process_start_time_seconds`
/// (the names every Prometheus client library uses).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCollector;

/// What `/proc/self` says; `None` where it cannot be read.
#[derive(Debug, Default)]
struct ProcessFigures {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    virtual_bytes: Option<i64>,
    threads: Option<i64>,
    open_fds: Option<i64>,
    start_time: Option<f64>,
}

/// `/proc` counts CPU time and start times in USER_HZ ticks, 100 a second
/// on every Linux platform (the kernel's ABI, whatever its own HZ).
const USER_HZ: f64 = 100.0;

fn process_figures() -> ProcessFigures {
    let mut f = ProcessFigures::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces) in
        // brackets: field 3 of the line (the state) is index 0 here.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let v: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| v.get(i).and_then(|x| x.parse::<f64>().ok());
        if let (Some(u), Some(s)) = (num(11), num(12)) {
            f.cpu_seconds = Some((u + s) / USER_HZ);
        }
        f.threads = num(17).map(|x| x as i64);
        f.virtual_bytes = num(20).map(|x| x as i64);
        if let (Some(start), Some(boot)) = (num(19), boot_time()) {
            f.start_time = Some(boot + start / USER_HZ);
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        f.resident_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .map(|kb| kb * 1024);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        f.open_fds = Some(dir.count() as i64);
    }
    f
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let f = process_figures();
        if let Some(v) = f.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, Option<i64>); 4] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size, in bytes",
                f.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size, in bytes",
                f.virtual_bytes,
            ),
            ("process_threads", "Threads of the process", f.threads),
            ("process_open_fds", "Open file descriptors", f.open_fds),
        ];
        for (name, help, v) in gauges {
            if let Some(v) = v {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        if let Some(v) = f.start_time {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The counters of a [`Metered`] provider.
#[derive(Debug, Clone)]
struct Counters {
    established: Family<Labels, Counter>,
    failed: Family<Labels, Counter>,
    connect_seconds: Histogram,
    sent: Counter,
    received: Counter,
}

/// Connections handed out, for the `connections_active` gauge.
type Live = Arc<Mutex<LiveSet>>;

#[derive(Default)]
struct LiveSet {
    conns: Vec<Weak<MeteredConnection>>,
    /// Length after the last sweep: the next comes at twice that.
    swept: usize,
}

impl LiveSet {
    fn add(&mut self, c: &Arc<MeteredConnection>) {
        if self.conns.len() >= 64 && self.conns.len() >= 2 * self.swept {
            self.conns
                .retain(|w| w.upgrade().is_some_and(|c| c.inner.is_connected()));
            self.swept = self.conns.len();
        }
        self.conns.push(Arc::downgrade(c));
    }
}

/// Reads the live connections and the backend's stats at every scrape.
struct PathCollector {
    live: Live,
    provider: Weak<dyn Provider>,
}

impl std::fmt::Debug for PathCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PathCollector")
    }
}

impl Collector for PathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut peers: BTreeSet<(PathKind, PeerId)> = BTreeSet::new();
        {
            let mut live = lock(&self.live);
            live.conns.retain(|w| match w.upgrade() {
                Some(c) if c.inner.is_connected() => {
                    peers.insert((c.inner.path().kind, c.inner.remote_id()));
                    true
                }
                _ => false,
            });
            live.swept = live.conns.len();
        }
        let mut m = encoder.encode_descriptor(
            "connections_active",
            "Peers connected now, by the path their connection takes",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for kind in [PathKind::Direct, PathKind::Relayed, PathKind::Unknown] {
            let n = peers.iter().filter(|(k, _)| *k == kind).count() as i64;
            let labels = label("path", kind.to_string());
            ConstGauge::new(n).encode(m.encode_family(&labels)?)?;
        }
        let stats = self
            .provider
            .upgrade()
            .map(|p| p.stats())
            .unwrap_or_default();
        for (name, help, v) in [
            (
                "hole_punches_tried",
                "Hole punches tried (moves of a connection onto the relay, or DCUtR attempts)",
                stats.hole_punches_tried,
            ),
            (
                "hole_punches_succeeded",
                "Hole punches that gave a direct path",
                stats.hole_punches_succeeded,
            ),
        ] {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

/// A provider wrapper that counts connections, the time to establish
/// them, and the bytes of every stream (see the [module docs](self)).
/// Connections and streams pass through unchanged otherwise.
pub struct Metered {
    inner: Arc<dyn Provider>,
    counters: Counters,
    live: Live,
}

impl std::fmt::Debug for Metered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Metered({})", self.inner.local_id().short())
    }
}

impl Metered {
    /// Wraps `inner`, registering its metrics in `registry`.
    pub fn wrap(inner: Arc<dyn Provider>, registry: &mut Registry) -> Arc<dyn Provider> {
        let counters = Counters {
            established: Family::default(),
            failed: Family::default(),
            connect_seconds: Histogram::new(duration_buckets()),
            sent: Counter::default(),
            received: Counter::default(),
        };
        registry.register(
            "connections_established",
            "Connections set up (identity verified and admitted), by direction",
            counters.established.clone(),
        );
        for reason in [
            "timeout",
            "unreachable",
            "denied",
            "closed",
            "protocol",
            "other",
        ] {
            let _ = counters.failed.get_or_create(&label("reason", reason));
        }
        for direction in ["in", "out"] {
            let _ = counters
                .established
                .get_or_create(&label("direction", direction));
        }
        registry.register(
            "connection_failures",
            "Outgoing connections that failed, by reason",
            counters.failed.clone(),
        );
        registry.register(
            "connect_duration_seconds",
            "Time to establish an outgoing connection, in seconds",
            counters.connect_seconds.clone(),
        );
        let bytes: Family<Labels, Counter> = Family::default();
        // The family holds the two counters the streams add to.
        let sent = bytes.get_or_create(&label("direction", "sent")).clone();
        let received = bytes.get_or_create(&label("direction", "received")).clone();
        registry.register(
            "stream_bytes",
            "Bytes of the SDK's streams (release chunks and control), by direction",
            bytes,
        );
        let live: Live = Arc::default();
        registry.register_collector(Box::new(PathCollector {
            live: live.clone(),
            provider: Arc::downgrade(&inner),
        }));
        Arc::new(Metered {
            inner,
            counters: Counters {
                sent,
                received,
                ..counters
            },
            live,
        })
    }

    fn wrap_conn(&self, conn: Arc<dyn Connection>) -> Arc<dyn Connection> {
        let c = Arc::new(MeteredConnection {
            inner: conn,
            sent: self.counters.sent.clone(),
            received: self.counters.received.clone(),
        });
        lock(&self.live).add(&c);
        c
    }
}

/// The `reason` label of a failed connection.
fn failure_reason(e: &Error) -> &'static str {
    match e {
        Error::Timeout { .. } => "timeout",
        Error::Unreachable { .. } => "unreachable",
        Error::Denied { .. } => "denied",
        Error::Closed { .. } => "closed",
        Error::Protocol { .. } | Error::VersionMismatch { .. } => "protocol",
        _ => "other",
    }
}

#[async_trait]
impl Provider for Metered {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn local_id(&self) -> PeerId {
        self.inner.local_id()
    }

    fn local_addr(&self) -> PeerAddr {
        self.inner.local_addr()
    }

    async fn connect(&self, peer: &PeerAddr) -> Result<Arc<dyn Connection>> {
        let started = Instant::now();
        match self.inner.connect(peer).await {
            Ok(conn) => {
                self.counters
                    .connect_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.counters
                    .established
                    .get_or_create(&label("direction", "out"))
                    .inc();
                Ok(self.wrap_conn(conn))
            }
            Err(e) => {
                self.counters
                    .failed
                    .get_or_create(&label("reason", failure_reason(&e)))
                    .inc();
                Err(e)
            }
        }
    }

    async fn listen(&self) -> Result<Box<dyn Listener>> {
        let inner = self.inner.listen().await?;
        Ok(Box::new(MeteredListener {
            inner,
            established: self
                .counters
                .established
                .get_or_create(&label("direction", "in"))
                .clone(),
            counters: self.counters.clone(),
            live: self.live.clone(),
        }))
    }

    fn discovered(&self) -> Discovered {
        self.inner.discovered()
    }

    async fn close(&self, reason: &str) {
        self.inner.close(reason).await
    }

    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }
}

struct MeteredListener {
    inner: Box<dyn Listener>,
    established: Counter,
    counters: Counters,
    live: Live,
}

#[async_trait]
impl Listener for MeteredListener {
    async fn accept(&mut self) -> Result<Arc<dyn Connection>> {
        let conn = self.inner.accept().await?;
        self.established.inc();
        let c = Arc::new(MeteredConnection {
            inner: conn,
            sent: self.counters.sent.clone(),
            received: self.counters.received.clone(),
        });
        lock(&self.live).add(&c);
        Ok(c)
    }
}

/// A connection whose streams count their bytes.
struct MeteredConnection {
    inner: Arc<dyn Connection>,
    sent: Counter,
    received: Counter,
}

impl MeteredConnection {
    fn wrap(&self, (send, recv): (SendStream, RecvStream)) -> (SendStream, RecvStream) {
        (
            Box::new(CountingSend {
                inner: send,
                n: self.sent.clone(),
            }),
            Box::new(CountingRecv {
                inner: recv,
                n: self.received.clone(),
            }),
        )
    }
}

#[async_trait]
impl Connection for MeteredConnection {
    fn remote_id(&self) -> PeerId {
        self.inner.remote_id()
    }

    async fn open_bi(&self) -> Result<(SendStream, RecvStream)> {
        Ok(self.wrap(self.inner.open_bi().await?))
    }

    async fn accept_bi(&self) -> Result<(SendStream, RecvStream)> {
        Ok(self.wrap(self.inner.accept_bi().await?))
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    async fn close(&self, reason: &str) {
        self.inner.close(reason).await
    }

    fn path(&self) -> crate::PathInfo {
        self.inner.path()
    }
}

struct CountingSend {
    inner: SendStream,
    n: Counter,
}

impl AsyncWrite for CountingSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(k)) = &r {
            self.n.inc_by(*k as u64);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(k)) = &r {
            self.n.inc_by(*k as u64);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct CountingRecv {
    inner: RecvStream,
    n: Counter,
}

impl AsyncRead for CountingRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            self.n.inc_by((buf.filled().len() - before) as u64);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_process_collector_reads_this_process() {
        let mut r = new_registry();
        let text = encode(&r);
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_threads ",
                "process_open_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(text.contains(name), "{name} missing from:\n{text}");
            }
            let rss: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
                .unwrap()
                .parse()
                .unwrap();
            assert!(rss > 1e6, "a test process holds more than 1 MB: {rss}");
        }
        assert!(text.ends_with("# EOF\n"));
        // A sub-registry's names carry its prefix.
        let c: Counter = Counter::default();
        r.sub_registry_with_prefix("p2p")
            .register("things", "Things", c.clone());
        c.inc();
        assert!(encode(&r).contains("p2p_things_total 1"));
    }

    #[test]
    fn the_prometheus_text_names_counters_by_their_samples() {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        r.register("deploys", "Deploys", c.clone());
        let g: prometheus_client::metrics::gauge::Gauge = Default::default();
        r.register("store_bytes", "Bytes", g.clone());
        c.inc();
        g.set(5);
        let text = encode_prometheus(&r);
        assert!(text.contains("# HELP deploys_total Deploys"), "{text}");
        assert!(
            text.contains("# TYPE deploys_total counter\ndeploys_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE store_bytes gauge\nstore_bytes 5\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn failures_are_labelled_by_meaning() {
        assert_eq!(
            failure_reason(&Error::timeout("x", std::time::Duration::ZERO)),
            "timeout"
        );
        assert_eq!(failure_reason(&Error::denied("no")), "denied");
        assert_eq!(failure_reason(&Error::unreachable("gone")), "unreachable");
    }
}
