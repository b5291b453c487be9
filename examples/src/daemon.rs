//! `p2pd`'s configuration: a TOML file in the data directory, written
//! with comments by `p2pd init`, every setting overridable by an
//! environment variable (`P2PD_<NAME>`) or a flag.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use bytesize::ByteSize;
use p2p_core::{PeerAddr, PeerId, PreSharedKey};
use p2p_deploy::membership::{AddressPolicy, IpNet, MembershipConfig};
use serde::{Deserialize, Serialize};

use crate::net::{Backend, NetOptions, Reach, Relays};

/// The config file's name in the data directory.
pub const CONFIG_FILE: &str = "p2pd.toml";
/// The node key's file name in the data directory.
pub const KEY_FILE: &str = "node.key";
/// Where a running `p2pd` writes its full peer address.
pub const ADDR_FILE: &str = "p2pd.addr";

/// What happens to the apps when `p2pd` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OnShutdown {
    /// Stop the apps' processes; the next `p2pd` starts again every app
    /// that was running (the recorded state is unchanged).
    #[default]
    Restart,
    /// Stop the apps and record them as stopped: they stay down under the
    /// next `p2pd` until `p2pctl start`.
    Stop,
}

/// How `p2pd` writes its own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The settings of one node, as in `p2pd.toml`. Relative paths are
/// relative to the data directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// A name for people (`p2pctl nodes`).
    pub name: String,
    /// The transport.
    pub backend: Backend,
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// Labels controllers select on.
    pub labels: BTreeMap<String, String>,
    /// A pre-shared key file (`p2pctl psk`): only holders can connect.
    pub psk_file: Option<PathBuf>,
    /// Only these peers may connect (peer ids); empty: any peer (that has
    /// the pre-shared key, if one is set).
    pub allowed_peers: Vec<String>,
    /// Only these peers may change the node (deploy, start, stop...);
    /// empty: any peer that may connect.
    pub operators: Vec<String>,
    /// Directory of trusted publisher keys (`*.pub`, and `revoked/`).
    pub trusted_keys: PathBuf,
    /// Valid signatures from distinct trusted keys a release needs.
    pub signatures_required: usize,
    /// Peers dialled at start (`<peer id>@<addr>`).
    pub bootstrap: Vec<String>,
    /// Local-network discovery.
    pub mdns: bool,
    /// Most installed versions kept per app (the smaller of this and the
    /// app's own `keep_versions`); unset: the app's.
    pub keep_versions: Option<u32>,
    /// What happens to the apps when `p2pd` stops.
    pub on_shutdown: OnShutdown,
    /// `p2pd`'s own log format.
    pub log_format: LogFormat,
    /// Size at which an app's log file is rotated.
    pub app_log_max_size: ByteSize,
    /// Log files kept per app and stream, the current one included.
    pub app_log_files: usize,
    /// Most bytes per second of release chunks served to peers.
    pub upload_limit: Option<ByteSize>,
    /// Most bytes per second of release chunks fetched.
    pub download_limit: Option<ByteSize>,
    /// How far the node reaches: `local`, `relays` or `public` (iroh);
    /// unset: `relays` when `relays` lists any, else `local`.
    pub connectivity: Option<Reach>,
    /// Relays: URLs of iroh relays, addresses of libp2p relay nodes.
    pub relays: Vec<String>,
    /// iroh: a PEM file of certificates trusted for the relays (a
    /// self-signed relay's `relay-cert.pem`).
    pub relay_ca: Option<PathBuf>,
    /// libp2p: serve as a circuit relay for other nodes too.
    pub serve_relay: bool,
    /// Where to serve Prometheus metrics (`GET /metrics`); unset: off.
    pub metrics_addr: Option<SocketAddr>,
    /// Events kept in the node's event log (`p2pctl events`), the newest.
    pub events_kept: usize,
    /// Membership: node records gossiped through the fleet.
    pub membership: MembershipSettings,
}

/// The `[membership]` table of `p2pd.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipSettings {
    /// Take part: publish this node's record, gossip the others' (joining
    /// through `bootstrap`), answer `p2pctl peers`.
    pub enabled: bool,
    /// How long a node shown unreachable stays listed ("1h").
    pub forget_after: String,
    /// Networks (`10.0.0.0/8`) that records' IP addresses must be in;
    /// empty: any.
    pub allowed_networks: Vec<String>,
}

impl Default for MembershipSettings {
    fn default() -> Self {
        MembershipSettings {
            enabled: true,
            forget_after: "1h".into(),
            allowed_networks: Vec::new(),
        }
    }
}

impl MembershipSettings {
    /// The SDK's membership settings, with `bootstrap` as the peers to
    /// join through.
    pub fn config(&self, bootstrap: Vec<PeerAddr>) -> Result<MembershipConfig> {
        let forget_after = humantime::parse_duration(&self.forget_after).map_err(|e| {
            anyhow!(
                "membership.forget_after {:?}: {e} (write it as \"1h\" or \"30m\")",
                self.forget_after
            )
        })?;
        if forget_after < std::time::Duration::from_secs(10) {
            bail!("membership.forget_after: at least 10s");
        }
        let allowed = self
            .allowed_networks
            .iter()
            .map(|n| {
                n.parse::<IpNet>()
                    .map_err(|e| anyhow!("membership.allowed_networks: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(MembershipConfig {
            bootstrap,
            forget_after,
            addresses: AddressPolicy { allowed },
            ..MembershipConfig::default()
        })
    }
}

impl DaemonConfig {
    /// The membership settings of a node with id `me`: joining through
    /// `bootstrap`, and with an allow-list set, taking only the records
    /// of the nodes on it (and its own).
    pub fn membership_config(&self, me: PeerId) -> Result<MembershipConfig> {
        let mut cfg = self.membership.config(self.bootstrap_addrs()?)?;
        let allow = peer_ids("allowed_peers", &self.allowed_peers)?;
        if !allow.is_empty() {
            let mut ids = allow;
            ids.insert(me);
            cfg.allowed_ids = Some(ids);
        }
        Ok(cfg)
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            name: String::new(),
            backend: Backend::Iroh,
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 7401))],
            labels: BTreeMap::new(),
            psk_file: None,
            allowed_peers: Vec::new(),
            operators: Vec::new(),
            trusted_keys: PathBuf::from("trusted"),
            signatures_required: 1,
            bootstrap: Vec::new(),
            mdns: false,
            keep_versions: None,
            on_shutdown: OnShutdown::Restart,
            log_format: LogFormat::Text,
            app_log_max_size: ByteSize::mib(10),
            app_log_files: 5,
            upload_limit: None,
            download_limit: None,
            connectivity: None,
            relays: Vec::new(),
            relay_ca: None,
            serve_relay: false,
            metrics_addr: None,
            events_kept: p2p_deploy::events::EVENTS_KEPT,
            membership: MembershipSettings::default(),
        }
    }
}

impl DaemonConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading {} (make one with `p2pd init --data-dir <dir>`)",
                path.display()
            )
        })?;
        let cfg: DaemonConfig =
            toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        cfg.check()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(cfg)
    }

    /// Checks what serde cannot: peer ids and addresses parse, numbers
    /// are in range.
    pub fn check(&self) -> Result<()> {
        if self.listen.is_empty() {
            bail!("listen: at least one address is needed");
        }
        if self.signatures_required == 0 {
            bail!("signatures_required: at least 1 (a node never runs an unsigned package)");
        }
        if self.keep_versions == Some(0) {
            bail!("keep_versions: at least 1 (the active version)");
        }
        if self.events_kept == 0 {
            bail!("events_kept: at least 1");
        }
        if self.app_log_files == 0 || self.app_log_max_size.as_u64() < 1024 {
            bail!("app_log_files must be at least 1 and app_log_max_size at least 1 KiB");
        }
        peer_ids("allowed_peers", &self.allowed_peers)?;
        peer_ids("operators", &self.operators)?;
        peer_addrs("bootstrap", &self.bootstrap)?;
        self.membership.config(Vec::new())?;
        for (k, v) in &self.labels {
            check_label(k, v)?;
        }
        if self.relay_ca.is_some() && self.backend == Backend::Libp2p {
            bail!(
                "relay_ca: libp2p relays are nodes of the network, proven by their ids, not by \
                 certificates; relay_ca is for iroh relays"
            );
        }
        self.relay_settings(Vec::new()).check(self.backend)
    }

    /// The relay settings, with `ca_certs` as read from `relay_ca`.
    fn relay_settings(&self, ca_certs: Vec<Vec<u8>>) -> Relays {
        Relays::new(
            self.connectivity,
            self.relays.clone(),
            ca_certs,
            self.serve_relay,
        )
    }

    /// The transport settings, reading the pre-shared key file.
    pub fn net(&self, data_dir: &Path) -> Result<NetOptions> {
        let psk = match &self.psk_file {
            Some(p) => {
                let p = data_dir.join(p);
                Some(PreSharedKey::load(&p).with_context(|| format!("psk_file {}", p.display()))?)
            }
            None => None,
        };
        let allow = peer_ids("allowed_peers", &self.allowed_peers)?;
        let ca_certs = match &self.relay_ca {
            Some(p) => crate::net::read_relay_ca(&data_dir.join(p))?,
            None => Vec::new(),
        };
        Ok(NetOptions {
            backend: self.backend,
            listen: self.listen.clone(),
            psk,
            allow: (!allow.is_empty()).then_some(allow),
            mdns: self.mdns,
            relays: self.relay_settings(ca_certs),
            connect_timeout: None,
        })
    }

    /// The operators, `None` when any peer may operate.
    pub fn operator_ids(&self) -> Result<Option<BTreeSet<PeerId>>> {
        let ops = peer_ids("operators", &self.operators)?;
        Ok((!ops.is_empty()).then_some(ops))
    }

    /// The bootstrap peers.
    pub fn bootstrap_addrs(&self) -> Result<Vec<PeerAddr>> {
        peer_addrs("bootstrap", &self.bootstrap)
    }
}

/// Parses `key=value` (a label given on the command line).
pub fn parse_label(s: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("label {s:?}: expected key=value"))?;
    check_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

fn check_label(k: &str, v: &str) -> Result<()> {
    use p2p_deploy::selector::is_label_word;
    if !is_label_word(k) || !(v.is_empty() || is_label_word(v)) || k.len() > 63 || v.len() > 63 {
        bail!(
            "label {k}={v}: keys and values are up to 63 letters, digits, '-', '_', '.' or '/', \
             and the key is not empty"
        );
    }
    Ok(())
}

fn peer_ids(what: &str, ids: &[String]) -> Result<BTreeSet<PeerId>> {
    ids.iter()
        .map(|s| {
            s.trim()
                .parse::<PeerId>()
                .map_err(|e| anyhow!("{what}: {s:?} is not a peer id: {e}"))
        })
        .collect()
}

fn peer_addrs(what: &str, addrs: &[String]) -> Result<Vec<PeerAddr>> {
    crate::net::peer_list(what, addrs)
}

/// The commented config `p2pd init` writes.
pub fn template(name: &str, backend: Backend, listen: &[SocketAddr]) -> String {
    let listen = listen
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"# p2pd configuration. Relative paths are relative to this directory.
# Every setting can be overridden by an environment variable, P2PD_ and the
# name in capitals (P2PD_BACKEND=libp2p), or by a flag (p2pd run --backend
# libp2p); flags win over the environment, which wins over this file.

# A name for people, shown by `p2pctl nodes`.
name = "{name}"

# The transport: "iroh" (QUIC) or "libp2p" (TCP + noise + yamux).
backend = "{backend}"

# Addresses to listen on. Port 0 picks a free port at every start; the
# running node's address is then in p2pd.addr (and `p2pd id`).
listen = [{listen}]

# A private network: only nodes holding this key (made by `p2pctl psk`)
# can connect at all.
# psk_file = "network.psk"

# Only these peers may connect (their ids, from `p2pd id`); empty: any
# peer (holding the pre-shared key, if one is set).
allowed_peers = []

# Only these peers may change this node: deploy, start, stop, switch,
# rollback, remove. Empty: any peer that may connect. Name your
# controllers' ids here on any node that is not on a private network.
operators = []

# Publishers whose signatures this node accepts: a directory of *.pub
# files made by `p2pctl keygen` (and revoked/ for revoked keys).
trusted_keys = "trusted"

# Valid signatures from distinct trusted keys that a release needs.
signatures_required = 1

# Peers to dial at start and join the fleet's membership through
# ("<peer id>@<address>", what `p2pd id` prints on them). One that answers
# is enough; those that do not are logged and the next is tried.
bootstrap = []

# Find peers on the local network by mDNS.
mdns = false

# Installed versions kept per app, the active one included (the smaller of
# this and the app's own keep_versions). Unset: the app's setting.
# keep_versions = 3

# When p2pd stops (SIGTERM, Ctrl-C): "restart" stops the apps and the next
# p2pd starts again those that were running; "stop" stops them and keeps
# them stopped until `p2pctl start`.
on_shutdown = "restart"

# p2pd's own log: "text" or "json" (one object per line). Verbosity comes
# from RUST_LOG (default "info").
log_format = "text"

# The apps' logs: rotated at this size, this many files kept per stream.
app_log_max_size = "10 MiB"
app_log_files = 5

# Bandwidth for release chunks served to and fetched from peers, per
# second. Unset: no cap.
# upload_limit = "10 MiB"
# download_limit = "50 MiB"

# Reaching nodes behind NAT, at other sites: "local" (direct addresses
# only, nothing leaves the network), "relays" (the relays below: nodes
# behind NAT are reached through them, and hole punching makes the path
# direct where the NATs allow), or "public" (number 0's public iroh relays;
# needs the internet). Unset: "relays" when relays lists any, else "local".
# connectivity = "relays"

# iroh: relay URLs ("https://relay.example.com:3341", from `p2pd relay`).
# libp2p: relay nodes' addresses ("<id>@/ip4/203.0.113.5/tcp/7402").
relays = []

# iroh: a PEM file of certificates to trust for the relays, besides the
# usual web roots (the relay-cert.pem of a self-signed `p2pd relay`).
# relay_ca = "relay-cert.pem"

# libp2p: also serve as a circuit relay for other nodes of the network.
serve_relay = false

# Prometheus metrics (OpenMetrics text at GET /metrics) on this address.
# Unset: off. Keep it on localhost or a monitoring network: the metrics
# name the node's apps and versions.
# metrics_addr = "127.0.0.1:9464"

# Events kept in the node's event log (`p2pctl events`), the newest.
events_kept = 10000

# Membership: this node's signed record (addresses, labels, site, the
# releases it holds) and those of every node it hears of are gossiped
# through the fleet, so that `p2pctl` reaches every node from one address.
[membership]
enabled = true
# A node shown unreachable is dropped from the list after this long.
forget_after = "1h"
# Networks the IP addresses in records must be in; empty: any.
allowed_networks = []

# Labels controllers select this node by (p2pctl deploy --selector role=web).
# A "site" label names the node's site (see the README's "Sites").
[labels]
"#
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_template_parses_to_the_defaults() {
        let listen = [SocketAddr::from(([127, 0, 0, 1], 0))];
        let cfg: DaemonConfig = toml::from_str(&template("n1", Backend::Libp2p, &listen)).unwrap();
        assert_eq!(cfg.name, "n1");
        assert_eq!(cfg.backend, Backend::Libp2p);
        assert_eq!(cfg.listen, listen);
        let expected = DaemonConfig {
            name: "n1".into(),
            backend: Backend::Libp2p,
            listen: listen.to_vec(),
            ..DaemonConfig::default()
        };
        assert_eq!(cfg, expected);
        cfg.check().unwrap();
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = [
            ("bogus = 1", "bogus"),
            ("backend = \"tcp\"", "backend"),
            ("operators = [\"nope\"]", "operators"),
            ("bootstrap = [\"x@y\"]", "bootstrap"),
            ("signatures_required = 0", "signatures_required"),
            ("upload_limit = \"ten\"", "upload_limit"),
            ("listen = []", "listen"),
            ("[labels]\n\"a b\" = \"c\"", "label"),
            ("connectivity = \"relays\"", "connectivity"),
            ("connectivity = \"nearby\"", "connectivity"),
            ("relays = [\"relay:443\"]", "relays"),
            ("relays = [\"ftp://relay.example.com\"]", "relays"),
            (
                "connectivity = \"local\"\nrelays = [\"https://relay.example.com\"]",
                "connectivity",
            ),
            ("backend = \"libp2p\"\nconnectivity = \"public\"", "public"),
            (
                "backend = \"libp2p\"\nrelays = [\"/ip4/1.2.3.4/tcp/1\"]",
                "relays",
            ),
            ("backend = \"libp2p\"\nrelay_ca = \"ca.pem\"", "relay_ca"),
            ("serve_relay = true", "serve_relay"),
            ("[membership]\nforget_after = \"soon\"", "forget_after"),
            ("[membership]\nforget_after = \"1s\"", "forget_after"),
            (
                "[membership]\nallowed_networks = [\"10.0.0.0/33\"]",
                "allowed_networks",
            ),
            ("[membership]\nbogus = 1", "bogus"),
            ("metrics_addr = \"localhost\"", "metrics_addr"),
            ("events_kept = 0", "events_kept"),
        ];
        for (text, name) in bad {
            let err = toml::from_str::<DaemonConfig>(text)
                .map_err(anyhow::Error::from)
                .and_then(|c| c.check().map(|()| c))
                .unwrap_err();
            assert!(format!("{err:#}").contains(name), "{text}: {err:#}");
        }
    }

    #[test]
    fn relays_listed_mean_connectivity_relays() {
        let cfg: DaemonConfig = toml::from_str("relays = [\"https://relay.example.com\"]").unwrap();
        cfg.check().unwrap();
        let net = cfg.net(Path::new("/nonexistent")).unwrap();
        assert_eq!(net.relays.reach, Reach::Relays);
        let cfg: DaemonConfig = toml::from_str(
            "backend = \"libp2p\"\nserve_relay = true\nrelays = [\"0ef8fe5306adfe90fc0b42b301865084c4f48171ec4e992399614cee529904e0@/ip4/10.0.0.1/tcp/7402,/ip4/10.0.0.1/udp/7402/quic-v1\"]",
        )
        .unwrap();
        cfg.check().unwrap();
        assert_eq!(
            cfg.net(Path::new("/x"))
                .unwrap()
                .relays
                .libp2p_relays()
                .unwrap()[0]
                .addrs
                .len(),
            2
        );
    }

    #[test]
    fn an_allow_list_bounds_whose_membership_records_are_taken() {
        let me = p2p_core::NodeKey::from_seed([1; 32]).peer_id();
        let other = "0ef8fe5306adfe90fc0b42b301865084c4f48171ec4e992399614cee529904e0";
        let cfg: DaemonConfig = toml::from_str(&format!(
            "allowed_peers = [\"{other}\"]\n[membership]\nforget_after = \"10m\""
        ))
        .unwrap();
        cfg.check().unwrap();
        let m = cfg.membership_config(me).unwrap();
        assert_eq!(m.forget_after, std::time::Duration::from_secs(600));
        let ids = m.allowed_ids.unwrap();
        assert!(ids.contains(&me) && ids.contains(&other.parse().unwrap()) && ids.len() == 2);
        let open = DaemonConfig::default().membership_config(me).unwrap();
        assert!(open.allowed_ids.is_none());
    }

    #[test]
    fn labels_from_the_command_line() {
        assert_eq!(
            parse_label("role=web").unwrap(),
            ("role".to_string(), "web".to_string())
        );
        assert!(parse_label("role").is_err());
        assert!(parse_label("=web").is_err());
    }
}
