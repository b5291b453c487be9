//! Local discovery: mDNS through `iroh-mdns-address-lookup`, fanned out to
//! any number of [`Provider::discovered`](p2p_core::Provider::discovered)
//! subscriptions.

use futures::StreamExt;
use iroh_mdns_address_lookup::{DiscoveryEvent, MdnsAddressLookup};
use p2p_core::discovery::PeerBook;
use tokio_util::sync::CancellationToken;

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
