use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, Mutex, MutexGuard},
};

use futures::channel::mpsc;
use libp2p::PeerId;
use libp2p::swarm::{ConnectionId, Stream, StreamProtocol};

use super::{AlreadyRegistered, IncomingStreams, handler::NewStream};

pub(crate) struct Shared {
    /// Tracks the supported inbound protocols created via
    /// [`Control::accept`](super::Control::accept).
    ///
    /// For each [`StreamProtocol`], we hold the [`mpsc::Sender`] corresponding to the
    /// [`mpsc::Receiver`] in [`IncomingStreams`].
    supported_inbound_protocols: Vec<(StreamProtocol, mpsc::Sender<(PeerId, Stream)>)>,

    /// Each connection's peer, and whether it goes through a relay.
    connections: BTreeMap<ConnectionId, (PeerId, bool)>,
    senders: BTreeMap<ConnectionId, mpsc::Sender<NewStream>>,

    /// Tracks channel pairs for a peer whilst we are dialing them.
    pending_channels: BTreeMap<PeerId, (mpsc::Sender<NewStream>, mpsc::Receiver<NewStream>)>,

    /// Sender for peers we want to dial.
    ///
    /// We manage this through a channel to avoid locks as part of
    /// [`NetworkBehaviour::poll`](libp2p::swarm::NetworkBehaviour::poll).
    dial_sender: mpsc::Sender<PeerId>,
}

impl Shared {
    pub(crate) fn lock(shared: &Arc<Mutex<Shared>>) -> MutexGuard<'_, Shared> {
        p2p_core::sync::lock(shared)
    }
}

impl Shared {
    pub(crate) fn new(dial_sender: mpsc::Sender<PeerId>) -> Self {
        Self {
            dial_sender,
            connections: Default::default(),
            senders: Default::default(),
            pending_channels: Default::default(),
            supported_inbound_protocols: Default::default(),
        }
    }

    pub(crate) fn accept(
        &mut self,
        protocol: StreamProtocol,
    ) -> Result<IncomingStreams, AlreadyRegistered> {
        self.supported_inbound_protocols
            .retain(|(_, sender)| !sender.is_closed());

        if self
            .supported_inbound_protocols
            .iter()
            .any(|(p, _)| *p == protocol)
        {
            return Err(AlreadyRegistered);
        }

        let (sender, receiver) = mpsc::channel(0);
        self.supported_inbound_protocols
            .push((protocol.clone(), sender));

        Ok(IncomingStreams::new(receiver))
    }

    /// Lists the protocols for which we have an active [`IncomingStreams`] instance.
    pub(crate) fn supported_inbound_protocols(&mut self) -> Vec<StreamProtocol> {
        self.supported_inbound_protocols
            .retain(|(_, sender)| !sender.is_closed());

        self.supported_inbound_protocols
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }

    pub(crate) fn on_inbound_stream(
        &mut self,
        remote: PeerId,
        stream: Stream,
        protocol: StreamProtocol,
    ) {
        let Some(i) = self
            .supported_inbound_protocols
            .iter()
            .position(|(p, _)| *p == protocol)
        else {
            tracing::debug!(%protocol, "channel is gone, dropping inbound stream");
            return;
        };
        match self.supported_inbound_protocols[i]
            .1
            .try_send((remote, stream))
        {
            Ok(()) => {}
            Err(e) if e.is_full() => {
                tracing::debug!(%protocol, "Channel is full, dropping inbound stream");
            }
            Err(e) if e.is_disconnected() => {
                tracing::debug!(%protocol, "Channel is gone, dropping inbound stream");
                self.supported_inbound_protocols.remove(i);
            }
            _ => unreachable!(),
        }
    }

    pub(crate) fn on_connection_established(
        &mut self,
        conn: ConnectionId,
        peer: PeerId,
        relayed: bool,
    ) {
        self.connections.insert(conn, (peer, relayed));
    }

    pub(crate) fn on_connection_closed(&mut self, conn: ConnectionId) {
        self.connections.remove(&conn);
    }

    pub(crate) fn on_dial_failure(&mut self, peer: PeerId, reason: String) {
        let Some((_, mut receiver)) = self.pending_channels.remove(&peer) else {
            return;
        };

        while let Ok(new_stream) = receiver.try_recv() {
            let _ = new_stream
                .sender
                .send(Err(super::OpenStreamError::Io(io::Error::new(
                    io::ErrorKind::NotConnected,
                    reason.clone(),
                ))));
        }
    }

    pub(crate) fn sender(&mut self, peer: PeerId) -> mpsc::Sender<NewStream> {
        // The change from upstream: a direct connection before a relayed
        // one, and the newest of those, so that streams move to the path
        // hole punching made as soon as it exists.
        let maybe_sender = self
            .connections
            .iter()
            .filter(|(_, (p, _))| *p == peer)
            .max_by_key(|(c, (_, relayed))| (!*relayed, **c))
            .and_then(|(c, _)| self.senders.get(c));

        match maybe_sender {
            Some(sender) => {
                tracing::debug!("Returning sender to existing connection");

                sender.clone()
            }
            None => {
                tracing::debug!(%peer, "Not connected to peer, initiating dial");

                let (sender, _) = self
                    .pending_channels
                    .entry(peer)
                    .or_insert_with(|| mpsc::channel(0));

                let _ = self.dial_sender.try_send(peer);

                sender.clone()
            }
        }
    }

    pub(crate) fn receiver(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
    ) -> mpsc::Receiver<NewStream> {
        if let Some((sender, receiver)) = self.pending_channels.remove(&peer) {
            tracing::debug!(%peer, %connection, "Returning existing pending receiver");

            self.senders.insert(connection, sender);
            return receiver;
        }

        tracing::debug!(%peer, %connection, "Creating new channel pair");

        let (sender, receiver) = mpsc::channel(0);
        self.senders.insert(connection, sender);

        receiver
    }
}
