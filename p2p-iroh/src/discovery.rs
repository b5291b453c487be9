//! Local discovery: mDNS through `iroh-mdns-address-lookup`, fanned out to
//! any number of [`Provider::discovered`](p2p_core::Provider::discovered)
//! subscriptions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use iroh_mdns_address_lookup::{DiscoveryEvent, MdnsAddressLookup};
use p2p_core::{Discovered, PeerAddr, PeerId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
pub(crate) struct PeerBook {
    inner: Arc<Mutex<Book>>,
}

impl PeerBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a sighting and tells every subscriber if it is news.
    pub(crate) fn seen(&self, addr: PeerAddr) {
        let mut book = self.lock();
        if book.closed || book.known.get(&addr.id) == Some(&addr) {
            return;
        }
        book.known.insert(addr.id, addr.clone());
        book.subscribers.retain(|tx| tx.send(addr.clone()).is_ok());
    }

    /// Forgets a peer that stopped announcing itself.
    pub(crate) fn expired(&self, id: &PeerId) {
        self.lock().known.remove(id);
    }

    /// A new subscription: the peers known now, then news. With discovery
    /// off nothing is ever seen, so it stays pending until [`close`].
    pub(crate) fn subscribe(&self) -> Discovered {
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

    /// Ends every subscription.
    pub(crate) fn close(&self) {
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

/// Feeds mDNS events into `book` until `stop` fires.
pub(crate) async fn run_mdns(mdns: MdnsAddressLookup, book: PeerBook, stop: CancellationToken) {
    let mut events = mdns.subscribe().await;
    loop {
        let ev = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            ev = events.next() => ev,
        };
        match ev {
            Some(DiscoveryEvent::Discovered { endpoint_info, .. }) => {
                let addr = crate::addr::to_peer_addr(&endpoint_info.to_endpoint_addr());
                tracing::debug!(peer = %addr, "mDNS discovered a peer");
                book.seen(addr);
            }
            Some(DiscoveryEvent::Expired { endpoint_id }) => {
                book.expired(&crate::addr::peer_id(&endpoint_id));
            }
            Some(_) => {}
            None => break,
        }
    }
    book.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_core::NodeKey;

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
