//! The event logs of many nodes, merged, and followed across
//! disconnects without losing or repeating an event.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use p2p_core::{Error, PeerId};
use serde::Serialize;

use super::Controller;
use crate::events::NodeEvent;
use crate::proto::{Call, EVENTS_VERSION, Frame, NodeInfo, Request, unexpected};

/// A followed node that sends nothing, not even a heartbeat, for this
/// long is taken as lost (its agent sends one every 2 s).
pub const FOLLOW_SILENCE: Duration = Duration::from_secs(10);

/// Longest wait between two tries to reach a lost node again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where reading starts on each node: after `default`, or after the
/// index given for the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// For every node not in `nodes`: 0 reads from the oldest event kept.
    pub default: u64,
    /// Per node.
    pub nodes: BTreeMap<PeerId, u64>,
}

impl Resume {
    /// Where reading starts on `node`.
    pub fn after(&self, node: &PeerId) -> u64 {
        self.nodes.get(node).copied().unwrap_or(self.default)
    }
}

/// What a read of many nodes' event logs yields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "what", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FleetEvent {
    /// An event of a node's log.
    Event {
        /// The node.
        node: PeerId,
        /// Its name (or short id).
        name: String,
        /// The event.
        event: NodeEvent,
    },
    /// A followed node's stream broke; reading resumes after `after`
    /// when it answers again.
    Lost {
        /// The node.
        node: PeerId,
        /// Its name.
        name: String,
        /// The last index read from it.
        after: u64,
        /// What happened.
        error: String,
    },
    /// A lost node answers again; its events after `after` follow.
    Resumed {
        /// The node.
        node: PeerId,
        /// Its name.
        name: String,
        /// The last index read before the loss.
        after: u64,
    },
    /// A node's log cannot be read (it did not answer, refused the
    /// index, or runs a p2pd without an event log); nothing more comes
    /// from it.
    Failed {
        /// The node.
        node: PeerId,
        /// Its name.
        name: String,
        /// Why.
        error: String,
    },
}

/// One node's reader.
struct Reader<'a> {
    ctl: &'a Controller,
    node: NodeInfo,
    after: u64,
    follow: bool,
    call: Option<Call>,
    /// Lost and not yet answering again (with the next wait).
    lost: Option<Duration>,
    done: bool,
}

/// Whether an error ends a follower's reading, rather than a loss to
/// wait out: the node answered, and said no.
fn is_final(e: &Error) -> bool {
    matches!(
        e,
        Error::NotFound { .. }
            | Error::Invalid { .. }
            | Error::Denied { .. }
            | Error::NotSupported { .. }
            | Error::VersionMismatch { .. }
            | Error::Protocol { .. }
    )
}

/// How an open failed.
enum OpenError {
    /// The node could not be reached: worth trying again.
    Unreached(Error),
    /// The node answered, and no.
    Refused(Error),
}

/// Opens an events request to `node`.
async fn open(
    ctl: &Controller,
    node: &NodeInfo,
    after: u64,
    follow: bool,
) -> Result<Call, OpenError> {
    let conn = ctl
        .connect(&node.addr)
        .await
        .map_err(OpenError::Unreached)?;
    let request = Request::Events { after, follow };
    let call = Call::open(&*conn, request, ctl.cfg.request_timeout)
        .await
        .map_err(|e| {
            if is_final(&e) {
                OpenError::Refused(e)
            } else {
                OpenError::Unreached(e)
            }
        })?;
    if call.version() < EVENTS_VERSION {
        return Err(OpenError::Refused(Error::NotSupported {
            what: format!(
                "node {} runs an older p2pd (protocol version {}) that keeps no event log",
                node.label(),
                call.version()
            ),
        }));
    }
    Ok(call)
}

impl Reader<'_> {
    fn failed(&mut self, e: &Error) -> FleetEvent {
        self.done = true;
        FleetEvent::Failed {
            node: self.node.id,
            name: self.node.label(),
            error: match e {
                Error::NotSupported { what } => what.clone(),
                e => e.to_string(),
            },
        }
    }

    /// A broken stream: the end when not following, else a loss.
    fn broke(&mut self, e: &Error) -> FleetEvent {
        self.call = None;
        if !self.follow || is_final(e) {
            return self.failed(e);
        }
        self.lost = Some(Duration::from_secs(1));
        FleetEvent::Lost {
            node: self.node.id,
            name: self.node.label(),
            after: self.after,
            error: e.to_string(),
        }
    }

    async fn next(&mut self) -> Option<FleetEvent> {
        loop {
            if self.done {
                return None;
            }
            if self.call.is_none() {
                match open(self.ctl, &self.node, self.after, self.follow).await {
                    Ok(c) => {
                        self.call = Some(c);
                        if self.lost.take().is_some() {
                            return Some(FleetEvent::Resumed {
                                node: self.node.id,
                                name: self.node.label(),
                                after: self.after,
                            });
                        }
                    }
                    Err(OpenError::Refused(e)) => return Some(self.failed(&e)),
                    Err(OpenError::Unreached(e)) if !self.follow => return Some(self.failed(&e)),
                    Err(OpenError::Unreached(e)) => match self.lost {
                        // Lost already: wait, and try again.
                        Some(wait) => {
                            tokio::time::sleep(wait).await;
                            self.lost = Some((wait * 2).min(MAX_BACKOFF));
                            continue;
                        }
                        // Not reached at the start of a follow: said
                        // once, then waited for.
                        None => {
                            self.lost = Some(Duration::from_secs(1));
                            return Some(FleetEvent::Lost {
                                node: self.node.id,
                                name: self.node.label(),
                                after: self.after,
                                error: e.to_string(),
                            });
                        }
                    },
                }
            }
            let Some(call) = self.call.as_mut() else {
                continue;
            };
            let frame = if self.follow {
                match tokio::time::timeout(FOLLOW_SILENCE, call.next_or_alive()).await {
                    Ok(f) => f,
                    Err(_) => Err(Error::unreachable(format!(
                        "node {} sent nothing for {} s",
                        self.node.label(),
                        FOLLOW_SILENCE.as_secs()
                    ))),
                }
            } else {
                call.next().await
            };
            match frame {
                Ok(Frame::NodeEvent(e)) => {
                    // After a resume the node starts after the last index
                    // read: nothing is shown twice, even so.
                    if e.index <= self.after {
                        continue;
                    }
                    self.after = e.index;
                    return Some(FleetEvent::Event {
                        node: self.node.id,
                        name: self.node.label(),
                        event: e,
                    });
                }
                Ok(Frame::Alive) => continue,
                Ok(Frame::Done(_)) if !self.follow => {
                    self.done = true;
                    return None;
                }
                Ok(Frame::Done(_)) => {
                    let e = Error::closed("the node ended the stream");
                    return Some(self.broke(&e));
                }
                Ok(other) => {
                    let e = unexpected(&self.node.id, "an event", &other);
                    return Some(self.failed(&e));
                }
                Err(e) => return Some(self.broke(&e)),
            }
        }
    }
}

impl Controller {
    /// Reads the event logs of `nodes`, each after its index in `from`,
    /// merged as events arrive; with `follow`, new events as they are
    /// recorded, for as long as the stream is read. A followed node whose
    /// stream breaks (it restarted, the network failed, it fell silent
    /// for [`FOLLOW_SILENCE`]) yields [`FleetEvent::Lost`], is tried
    /// again with a growing wait, and yields [`FleetEvent::Resumed`] and
    /// then its events after the last one read: none lost, none twice.
    pub fn events<'a>(
        &'a self,
        nodes: &[NodeInfo],
        from: &Resume,
        follow: bool,
    ) -> BoxStream<'a, FleetEvent> {
        let streams = nodes.iter().map(|n| {
            let reader = Reader {
                ctl: self,
                node: n.clone(),
                after: from.after(&n.id),
                follow,
                call: None,
                lost: None,
                done: false,
            };
            futures::stream::unfold(reader, |mut r| async move {
                let item = r.next().await?;
                Some((item, r))
            })
            .boxed()
        });
        futures::stream::select_all(streams).boxed()
    }
}
