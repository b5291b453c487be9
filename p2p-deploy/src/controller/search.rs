//! Finding releases in the fleet (by name, prefix and version range) and
//! having nodes fetch one ahead of a deploy.

use std::collections::BTreeMap;

use p2p_core::{Error, PeerAddr, Result};
use serde::{Deserialize, Serialize};

use super::Controller;
use crate::package::PackageId;
use crate::proto::{Reply, Request, call_watched};

/// What [`Controller::search`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Search {
    /// Matching releases, by name and version, each with its holders.
    pub hits: Vec<SearchHit>,
    /// Nodes that could not be asked, and why.
    pub unanswered: Vec<(PeerAddr, String)>,
}

/// One release found in the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    /// App name.
    pub name: String,
    /// Version.
    pub version: semver::Version,
    /// The release's id.
    pub id: PackageId,
    /// Archive size in bytes.
    pub size: u64,
    /// Nodes holding it, complete holders first.
    pub holders: Vec<Holder>,
}

impl SearchHit {
    /// The nodes holding every chunk, to fetch it from.
    pub fn complete_holders(&self) -> Vec<PeerAddr> {
        self.holders
            .iter()
            .filter(|h| h.complete)
            .map(|h| h.node.clone())
            .collect()
    }
}

/// A node holding a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The node, at the address it was reached at.
    pub node: PeerAddr,
    /// Whether it holds every chunk.
    pub complete: bool,
    /// Whether the version is installed there.
    pub installed: bool,
    /// Whether it is the active version there.
    pub active: bool,
}

impl Controller {
    /// Searches the releases held in the fleet. Through membership when
    /// the nodes take part: the first node that answers
    /// [`members`](Self::members) lists what every node up holds, as each
    /// published it (a release fetched a moment ago shows within seconds).
    /// Otherwise every known node is asked for its catalog, concurrently.
    /// `name` matches an app name exactly,
    /// or, ending in `*`, as a prefix (`"web*"`; `"*"` or `""` match
    /// everything); `version` narrows to a semver requirement. Hits come
    /// sorted by name, newest version first, each with the nodes holding
    /// it (complete holders first); nodes that could not be asked are
    /// listed in [`Search::unanswered`].
    pub async fn search(&self, name: &str, version: Option<&semver::VersionReq>) -> Search {
        let matches = |n: &str| match name.strip_suffix('*') {
            Some(prefix) => n.starts_with(prefix),
            None => name.is_empty() || n == name,
        };
        // Through membership: one node's table lists what every node
        // holds. Only when no node takes part are catalogs asked one by
        // one.
        if let Ok(found) = self.members().await {
            let mut hits: BTreeMap<PackageId, SearchHit> = BTreeMap::new();
            for m in found.up() {
                for h in &m.record.held {
                    if !matches(&h.name) || version.is_some_and(|req| !req.matches(&h.version)) {
                        continue;
                    }
                    let holder = Holder {
                        node: m.peer_addr(),
                        complete: h.complete,
                        installed: h.installed,
                        active: h.active,
                    };
                    add_holder(&mut hits, &h.name, &h.version, h.id, h.size, holder);
                }
            }
            return Search {
                hits: sorted(hits),
                unanswered: found.unanswered,
            };
        }
        let addrs = self.known();
        let answers = futures::future::join_all(addrs.into_iter().map(|addr| async move {
            let r = match self.request(&addr, Request::Catalog).await {
                Ok(Reply::Catalog(entries)) => Ok(entries),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            };
            (addr, r)
        }))
        .await;
        let mut hits: BTreeMap<PackageId, SearchHit> = BTreeMap::new();
        let mut unanswered = Vec::new();
        for (addr, r) in answers {
            let entries = match r {
                Ok(e) => e,
                Err(e) => {
                    unanswered.push((addr, e));
                    continue;
                }
            };
            for e in entries {
                if !matches(&e.name) || version.is_some_and(|req| !req.matches(&e.version)) {
                    continue;
                }
                let holder = Holder {
                    node: addr.clone(),
                    complete: e.is_complete(),
                    installed: e.installed,
                    active: e.active,
                };
                add_holder(&mut hits, &e.name, &e.version, e.id, e.size, holder);
            }
        }
        let hits = sorted(hits);
        Search { hits, unanswered }
    }

    /// Has `node` fetch release `package` from `from` (nodes holding it,
    /// as [`search`](Self::search) finds them) and keep it without
    /// installing it, so that a later deploy of it starts with every chunk
    /// present. Bounded by the deploy deadline.
    pub async fn prefetch(
        &self,
        node: &PeerAddr,
        package: PackageId,
        from: Vec<PeerAddr>,
    ) -> Result<crate::proto::CatalogEntry> {
        let conn = self.connect(node).await?;
        let reply = call_watched(
            &conn,
            Request::Fetch { package, from },
            self.cfg.deploy_timeout,
            self.cfg.node_silence,
        )
        .await?;
        match reply {
            Reply::Catalog(mut e) if e.len() == 1 => Ok(e.remove(0)),
            other => Err(Error::protocol(format!(
                "node {} answered a fetch with {other:?}",
                node.id.short()
            ))),
        }
    }
}

/// Adds `holder` to the hit for release `id`, made if new.
fn add_holder(
    hits: &mut BTreeMap<PackageId, SearchHit>,
    name: &str,
    version: &semver::Version,
    id: PackageId,
    size: u64,
    holder: Holder,
) {
    hits.entry(id)
        .or_insert_with(|| SearchHit {
            name: name.to_string(),
            version: version.clone(),
            id,
            size,
            holders: Vec::new(),
        })
        .holders
        .push(holder);
}

/// Hits by name, newest version first, complete holders first.
fn sorted(hits: BTreeMap<PackageId, SearchHit>) -> Vec<SearchHit> {
    let mut hits: Vec<SearchHit> = hits.into_values().collect();
    for h in &mut hits {
        h.holders.sort_by_key(|h| (!h.complete, h.node.id));
    }
    hits.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then_with(|| b.version.cmp(&a.version))
            .then_with(|| a.id.cmp(&b.id))
    });
    hits
}
