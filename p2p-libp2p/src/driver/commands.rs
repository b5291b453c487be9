//! What the swarm task does for each [`Command`] from a provider handle.

use super::{Command, ConnState, Driver};

impl Driver {
    pub(super) fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial {
                peer,
                addrs,
                who,
                reply,
            } => self.dial(peer, addrs, who, reply),
            Command::ConnState { conn, reply } => {
                let state = if self.connections.contains_key(&conn) {
                    ConnState::Open
                } else {
                    self.ended.get(&conn).copied().unwrap_or(ConnState::Closed)
                };
                let _ = reply.send(state);
            }
            Command::Shutdown { .. } => unreachable!("handled by run"),
        }
    }
}
