//! [`PeerBook`]: the peers a backend's discovery found, fanned out to any
//! number of [`Provider::discovered`](crate::Provider::discovered)
//! subscriptions.
//!
//! Backends feed it from their discovery mechanism (mDNS, bootstrap lists)
//! and hand out [`PeerBook::subscribe`] from `discovered()`:
//!
//! ```
//! # use p2p_core::{discovery::PeerBook, NodeKey, PeerAddr};
//! # use futures::StreamExt;
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let book = PeerBook::default();
//! let peer = PeerAddr::new(NodeKey::from_seed([1; 32]).peer_id(), ["10.0.0.1:4433"])?;
//! book.seen(peer.clone());
//! let mut found = book.subscribe(); // the peers known now, then news
//! assert_eq!(found.next().await, Some(peer));
//! book.close();
//! assert_eq!(found.next().await, None);
//! # Ok::<(), p2p_core::Error>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::addr::PeerAddr;
use crate::id::PeerId;
use crate::transport::Discovered;

#[derive(Default)]
struct Book {
    known: BTreeMap<PeerId, PeerAddr>,
    /// Unbounded: updates come only when a peer appears or changes its
    /// addresses, and mDNS does not repeat an unchanged one, so a dropped
    /// update would be lost for good.
    subscribers: Vec<mpsc::UnboundedSender<PeerAddr>>,
    closed: bool,
}

/// The peers found so far and the live subscriptions.
#[derive(Clone, Default)]
pub struct PeerBook {
    inner: Arc<Mutex<Book>>,
}

impl PeerBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        crate::sync::lock(&self.inner)
    }

    /// Records a sighting and tells every subscriber if it is news.
    pub fn seen(&self, addr: PeerAddr) {
        let mut book = self.lock();
        if book.closed || book.known.get(&addr.id) == Some(&addr) {
            return;
        }
        book.known.insert(addr.id, addr.clone());
        book.subscribers.retain(|tx| tx.send(addr.clone()).is_ok());
    }

    /// Forgets a peer that stopped announcing itself.
    pub fn expired(&self, id: &PeerId) {
        self.lock().known.remove(id);
    }

    /// A new subscription: the peers known now, then news. With discovery
    /// off nothing is ever seen, so it stays pending until
    /// [`close`](PeerBook::close); after `close` it yields the known peers
    /// and ends.
    pub fn subscribe(&self) -> Discovered {
        let mut book = self.lock();
        let (tx, rx) = mpsc::unbounded_channel();
        let snapshot: Vec<PeerAddr> = book.known.values().cloned().collect();
        if !book.closed {
            book.subscribers.push(tx);
        }
        futures::stream::iter(snapshot)
            .chain(tokio_stream_from(rx))
            .boxed()
    }

    /// Ends every subscription; later sightings are ignored.
    pub fn close(&self) {
        let mut book = self.lock();
        book.closed = true;
        book.subscribers.clear();
    }
}

fn tokio_stream_from(
    mut rx: mpsc::UnboundedReceiver<PeerAddr>,
) -> impl futures::Stream<Item = PeerAddr> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::NodeKey;

    fn addr(n: u8, a: &str) -> PeerAddr {
        PeerAddr::new(NodeKey::from_seed([n; 32]).peer_id(), [a]).unwrap()
    }

    #[tokio::test]
    async fn late_subscribers_get_known_peers_first_then_news() {
        let book = PeerBook::default();
        book.seen(addr(1, "10.0.0.1:1"));
        book.seen(addr(1, "10.0.0.1:1")); // no news
        let mut early = book.subscribe();
        let mut late_first = book.subscribe();
        assert_eq!(late_first.next().await.unwrap(), addr(1, "10.0.0.1:1"));
        book.seen(addr(2, "10.0.0.2:1"));
        book.seen(addr(1, "10.0.0.1:2")); // address change is news
        assert_eq!(early.next().await.unwrap(), addr(1, "10.0.0.1:1"));
        assert_eq!(early.next().await.unwrap(), addr(2, "10.0.0.2:1"));
        assert_eq!(early.next().await.unwrap(), addr(1, "10.0.0.1:2"));
        book.close();
        assert_eq!(early.next().await, None);
        assert_eq!(late_first.next().await.unwrap(), addr(2, "10.0.0.2:1"));
        assert_eq!(late_first.next().await.unwrap(), addr(1, "10.0.0.1:2"));
        assert_eq!(late_first.next().await, None);
        // Known peers are still listed after close, then the stream ends.
        let after: Vec<PeerAddr> = book.subscribe().collect().await;
        let mut want = vec![addr(1, "10.0.0.1:2"), addr(2, "10.0.0.2:1")];
        want.sort();
        assert_eq!(after, want);
    }
}
