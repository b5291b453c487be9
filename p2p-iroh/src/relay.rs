//! Relays from a node's side: the relay URLs it accepts, the certificates
//! it trusts for them, and whether its relays can be reached.
//!
//! A node with [`Connectivity::CustomRelays`](crate::Connectivity) keeps a
//! connection to one of its relays (its *home relay*): peers that cannot
//! reach it directly (it is behind NAT) dial it through that relay, and
//! the two then try to punch a direct path. While no relay is reachable
//! the node keeps working on direct paths; [`RelayHealth`] says why the
//! relays are out of reach, and the provider logs it (a warning naming the
//! relay and the reason: refused connection, certificate not trusted,
//! access denied) each time it changes.

use std::time::Duration;

use iroh::{Endpoint, RelayUrl, SecretKey, Watcher};
use iroh_relay::client::{ClientBuilder, ConnectError};
use p2p_core::{Error, Result};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// How long a provider waits for its first home relay before it reports
/// the relays unreachable: twice iroh's network report timeout.
pub(crate) const FIRST_WAIT: Duration = Duration::from_secs(10);
/// How often an unreachable relay is tried again (iroh retries on its own;
/// this only refreshes the diagnosis).
pub(crate) const RECHECK: Duration = Duration::from_secs(15);
/// Bound on one diagnostic connection to a relay.
const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a node stands with its relays.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayHealth {
    /// No relays configured (local only).
    Off,
    /// Relays configured, the first connection still being made.
    Connecting,
    /// Connected to this home relay.
    Connected(String),
    /// No relay reachable; why, relay by relay.
    Unreachable(String),
}

impl std::fmt::Display for RelayHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayHealth::Off => f.write_str("no relays (local only)"),
            RelayHealth::Connecting => f.write_str("connecting to a relay"),
            RelayHealth::Connected(url) => write!(f, "connected to relay {url}"),
            RelayHealth::Unreachable(why) => write!(f, "no relay reachable: {why}"),
        }
    }
}

/// Parses a relay URL as a node setting takes it: `http` or `https`, with
/// a host. The error names the URL and what is wrong with it.
pub fn parse_relay_url(text: &str) -> Result<RelayUrl> {
    let bad = |why: &str| Error::invalid("relay URL", format!("{text:?}: {why}"));
    let url: RelayUrl = text.parse().map_err(|e| {
        bad(&format!(
            "not a URL ({e}); expected https://relay.example.com"
        ))
    })?;
    match url.scheme() {
        "https" | "http" => {}
        other => return Err(bad(&format!("scheme {other:?}: expected https or http"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(url)
}

/// The certificates in a PEM file's text, as DER, for
/// [`IrohConfig::trust_relay_certs`](crate::IrohConfig::trust_relay_certs).
/// Fails when the text holds no certificate or a broken one.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid("relay certificate", format!("unreadable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::invalid(
            "relay certificate",
            "no certificate (-----BEGIN CERTIFICATE-----) in the file",
        ));
    }
    Ok(certs)
}

/// The TLS trust for relays: the web roots plus `extra`.
pub(crate) fn ca_config(extra: &[Vec<u8>]) -> iroh::tls::CaTlsConfig {
    iroh::tls::CaTlsConfig::embedded()
        .with_extra_roots(extra.iter().map(|c| CertificateDer::from(c.clone())))
}

/// The home relay the endpoint is connected to, if any.
pub(crate) fn home_relay(ep: &Endpoint) -> Option<String> {
    ep.home_relay_status()
        .get()
        .into_iter()
        .find(|s| s.is_connected())
        .map(|s| s.url().to_string())
}

/// Why `url` cannot serve as a relay for this node: a connection made the
/// way the endpoint makes it (its TLS trust, its key), and its error in
/// words. `None` when the connection works.
pub(crate) async fn diagnose(ep: &Endpoint, key: &SecretKey, url: &RelayUrl) -> Option<String> {
    let dns = match ep.dns_resolver() {
        Ok(d) => d.clone(),
        Err(e) => return Some(format!("relay {url}: no DNS resolver to reach it: {e}")),
    };
    let builder = ClientBuilder::new(url.clone(), key.clone(), dns)
        .tls_client_config(ep.tls_config().clone());
    let attempt = tokio::time::timeout(DIAGNOSE_TIMEOUT, builder.connect()).await;
    match attempt {
        Err(_) => Some(format!(
            "relay {url}: no answer within {DIAGNOSE_TIMEOUT:?}"
        )),
        Ok(Ok(_client)) => None,
        Ok(Err(ConnectError::Tls { source, .. })) => {
            let untrusted = std::iter::successors(
                source
                    .get_ref()
                    .map(|e| e as &(dyn std::error::Error + 'static)),
                |e| e.source(),
            )
            .any(|e| {
                matches!(
                    e.downcast_ref::<rustls::Error>(),
                    Some(rustls::Error::InvalidCertificate(_))
                )
            });
            Some(if untrusted {
                format!(
                    "relay {url} refused: its TLS certificate is not trusted ({source}); \
                     give this node the relay's certificate (relay_ca) or use one a public CA signed"
                )
            } else {
                format!("relay {url}: TLS failed: {source}")
            })
        }
        Ok(Err(e)) => {
            let text = format!("{e:#}");
            Some(if text.contains("denied") || text.contains("Denied") {
                format!("relay {url} denied this node: {text}")
            } else {
                format!("relay {url} unreachable: {text}")
            })
        }
    }
}

/// What is wrong with each of `urls` that has a problem.
pub(crate) async fn problems(ep: &Endpoint, key: &SecretKey, urls: &[RelayUrl]) -> Vec<String> {
    let mut out = Vec::new();
    for url in urls {
        if let Some(why) = diagnose(ep, key, url).await {
            out.push(why);
        }
    }
    out
}

/// Why none of `urls` is reachable, relay by relay.
pub(crate) async fn diagnose_all(ep: &Endpoint, key: &SecretKey, urls: &[RelayUrl]) -> String {
    let reasons = problems(ep, key, urls).await;
    if reasons.is_empty() {
        // Each accepts a connection, yet the endpoint has not picked one:
        // its probes (QUIC address discovery on UDP port 7842, then HTTPS)
        // fail.
        format!(
            "{} accept connections, but the node's probes to them fail (UDP 7842 and \
             HTTPS blocked?)",
            urls.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        reasons.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_are_checked() {
        parse_relay_url("https://relay.example.com").unwrap();
        parse_relay_url("http://10.0.0.1:3340").unwrap();
        for (bad, says) in [
            ("relay.example.com", "not a URL"),
            ("ftp://relay.example.com", "scheme"),
            ("https://", "not a URL"),
        ] {
            let e = parse_relay_url(bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn pem_without_a_certificate_is_refused() {
        let e = certs_from_pem(b"hello").unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
    }
}
