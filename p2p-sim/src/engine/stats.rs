//! What the network counts: totals ([`NetStats`]) and per-node link
//! traffic ([`NodeTraffic`]).

/// Totals since the network started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Payload bytes delivered to receivers.
    pub bytes_delivered: u64,
    /// Segments delivered.
    pub segments_delivered: u64,
    /// Segments lost and retransmitted.
    pub segments_lost: u64,
    /// Segments held back by partitions.
    pub segments_parked: u64,
    /// Connections established.
    pub connections: u64,
    /// Events processed by the engine.
    pub events: u64,
}

/// Bytes one node's links carried since the network started (every
/// incarnation), segment headers not counted: with the node's rates they
/// tell how busy its uplink and downlink were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeTraffic {
    /// Bytes that left its uplink (retransmissions included).
    pub sent: u64,
    /// Bytes that went through its downlink (duplicates included).
    pub received: u64,
}
