//! Membership against peers that misbehave, on the simulator: a peer that
//! gossips a forged record, a record with an address it may not claim, or
//! an old record of another node gets none of them into the table and is
//! banned; a peer that opens gossip sessions in a flood is refused past
//! its rate; a bootstrap address that does not answer is passed over.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use p2p_core::{Connection, NodeKey, PeerAddr, PeerId, Provider};
use p2p_deploy::membership::gossip::{BUCKETS, GossipMsg};
use p2p_deploy::membership::{
    AddressPolicy, MemberEntry, MembershipConfig, NodeRecord, SignedRecord, open_entries,
};
use p2p_deploy::proto::{Call, Reply, Request, call};
use p2p_testkit::{Fleet, Node, block_on};

/// A fleet of three agents with membership, n1 and n2 joined through n0.
fn fleet() -> Fleet {
    Fleet::builder(21)
        .membership(MembershipConfig::default())
        .node(Node::new("n0"))
        .node(Node::new("n1").join("n0"))
        .node(Node::new("n2").join("n0"))
        .build()
}

/// One gossip session as a rogue client: takes the server's whole table
/// and offers `ours`. `Err` holds a refusal.
async fn gossip(
    conn: &Arc<dyn Connection>,
    ours: Vec<MemberEntry>,
) -> Result<Vec<MemberEntry>, String> {
    let call = Call::open(
        &**conn,
        Request::Gossip { root: 0 },
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut framed = call.into_framed();
    match framed.recv::<GossipMsg>().await.unwrap() {
        GossipMsg::Buckets(_) => {}
        GossipMsg::Refused(why) => return Err(why),
        other => panic!("{other:?}"),
    }
    framed
        .send(&GossipMsg::Digests {
            buckets: (0..BUCKETS as u8).collect(),
            items: Vec::new(),
        })
        .await
        .unwrap();
    let theirs = match framed.recv::<GossipMsg>().await.unwrap() {
        GossipMsg::Entries { entries, .. } => entries,
        other => panic!("{other:?}"),
    };
    framed
        .send(&GossipMsg::Entries {
            entries: ours,
            want: Vec::new(),
        })
        .await
        .unwrap();
    let _ = framed.finish().await;
    // Let the server take them in.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(theirs)
}

async fn table(conn: &Arc<dyn Connection>) -> Vec<NodeRecord> {
    match call(&**conn, Request::Members, Duration::from_secs(10))
        .await
        .unwrap()
    {
        Reply::Members(e) => {
            let (ok, bad) = open_entries(e, &AddressPolicy::default());
            assert!(bad.is_empty(), "{bad:?}");
            ok.into_iter().map(|m| m.record).collect()
        }
        other => panic!("{other:?}"),
    }
}

fn record_of(entries: &[MemberEntry], id: PeerId) -> (MemberEntry, NodeRecord) {
    let (ok, _) = open_entries(entries.to_vec(), &AddressPolicy::default());
    let rec = ok.into_iter().find(|m| m.record.id == id).unwrap().record;
    let entry = entries
        .iter()
        .find(|e| e.record.open(&AddressPolicy::default()).unwrap().id == id)
        .unwrap()
        .clone();
    (entry, rec)
}

#[test]
fn forged_stale_and_false_records_are_dropped_and_their_sender_banned() {
    block_on(async {
        let fleet = fleet();
        fleet.run_for(Duration::from_secs(5)).await;
        let rogue_key = NodeKey::from_seed([66; 32]);
        let rogue = fleet
            .net()
            .add_node_with(
                "rogue",
                p2p_sim::NodeConfig {
                    key: Some(rogue_key.clone()),
                    ..Default::default()
                },
            )
            .unwrap();
        let n0 = fleet.net().provider("n0").unwrap().local_addr();
        let conn = rogue.connect(&n0).await.unwrap();
        let n1 = fleet.peer_id("n1");
        let theirs = gossip(&conn, Vec::new()).await.unwrap();
        let (old_entry, old_n1) = record_of(&theirs, n1);

        // n1 publishes a newer record (it now holds a release).
        let r = fleet.release("web", "1.0.0", 16 << 10);
        let first = fleet.deploy(&r, "", &Default::default()).await;
        assert!(first.is_success(), "{first}");
        fleet.run_for(Duration::from_secs(5)).await;
        let newer = table(&conn).await;
        let n1_now = newer.iter().find(|r| r.id == n1).unwrap().clone();
        assert!(n1_now.seq > old_n1.seq);
        assert_eq!(n1_now.held.len(), 1);

        // An old record of n1: dropped, n1's newer one stays.
        gossip(&conn, vec![old_entry]).await.unwrap();
        // n1's record with the rogue's address, signed by the rogue.
        let mut forged = n1_now.clone();
        forged.seq += 1000;
        forged.addrs = vec!["rogue".into()];
        let bytes = postcard::to_allocvec(&forged).unwrap();
        let forged = MemberEntry {
            record: SignedRecord {
                signature: rogue_key.sign(&bytes).to_vec(),
                bytes,
            },
            down: None,
        };
        gossip(&conn, vec![forged]).await.unwrap();
        // The rogue's own record, claiming an address that reaches nobody.
        let own = NodeRecord {
            id: rogue_key.peer_id(),
            seq: 1,
            addrs: vec!["0.0.0.0:7401".into()],
            name: "rogue".into(),
            labels: Default::default(),
            site: None,
            held: Vec::new(),
        }
        .sign(&rogue_key);
        gossip(
            &conn,
            vec![MemberEntry {
                record: own,
                down: None,
            }],
        )
        .await
        .unwrap();

        let now = table(&conn).await;
        let n1_held = now.iter().find(|r| r.id == n1).unwrap();
        assert_eq!(n1_held, &n1_now, "n1's own newest record is what n0 holds");
        assert!(now.iter().all(|r| r.id != rogue_key.peer_id()));
        assert_eq!(now.len(), 3);

        // A second forgery: past the threshold, the rogue is banned.
        let mut again = n1_now.clone();
        again.seq += 2000;
        let bytes = postcard::to_allocvec(&again).unwrap();
        let again = MemberEntry {
            record: SignedRecord {
                signature: rogue_key.sign(&bytes).to_vec(),
                bytes,
            },
            down: None,
        };
        gossip(&conn, vec![again]).await.unwrap();
        let refused = gossip(&conn, Vec::new()).await.unwrap_err();
        assert!(refused.contains("banned"), "{refused}");
        // The honest nodes still gossip with n0.
        fleet.run_for(Duration::from_secs(10)).await;
        let n2_conn = rogue_free_conn(&fleet, "ctl-check").await;
        assert_eq!(table(&n2_conn).await.len(), 3);
    });
}

/// A connection to n2 from a fresh, well-behaved node.
async fn rogue_free_conn(fleet: &Fleet, name: &str) -> Arc<dyn Connection> {
    let p = fleet.net().add_node(name).unwrap();
    let n2 = fleet.net().provider("n2").unwrap().local_addr();
    p.connect(&n2).await.unwrap()
}

#[test]
fn a_peer_that_floods_gossip_sessions_is_refused_past_its_rate() {
    block_on(async {
        let fleet = fleet();
        fleet.run_for(Duration::from_secs(5)).await;
        let flooder = fleet.net().add_node("flooder").unwrap();
        let n0 = fleet.net().provider("n0").unwrap().local_addr();
        let conn = flooder.connect(&n0).await.unwrap();
        let results = futures::future::join_all((0..60).map(|_| gossip(&conn, Vec::new()))).await;
        let refused: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        let served = results.len() - refused.len();
        assert!(served >= 5, "{served} served");
        assert!(
            refused.len() >= 30,
            "{} of 60 refused: {refused:?}",
            refused.len()
        );
        assert!(
            refused[0].contains("gossip sessions a second"),
            "{}",
            refused[0]
        );
        // The others are not held up: n1 and n2 are still in n0's table,
        // and the flooder is served again after a pause.
        fleet.run_for(Duration::from_secs(3)).await;
        assert!(gossip(&conn, Vec::new()).await.is_ok());
        assert_eq!(table(&conn).await.len(), 3);
    });
}

#[test]
fn a_bootstrap_address_that_does_not_answer_is_passed_over() {
    block_on(async {
        // n1 is given a node that does not exist first, then n0.
        let ghost = NodeKey::from_seed([9; 32]).peer_id();
        let fleet = Fleet::builder(4)
            .membership(MembershipConfig::default())
            .node(Node::new("n0"))
            .build();
        let n0 = fleet.net().provider("n0").unwrap().local_addr();
        let cfg =
            p2p_deploy::AgentConfig::new(p2p_deploy::TrustStore::new([fleet.signer().key_id()]));
        let membership = MembershipConfig {
            bootstrap: vec![PeerAddr::new(ghost, ["nowhere"]).unwrap(), n0.clone()],
            ..MembershipConfig::default()
        };
        p2p_testkit::spawn_agent_with_membership(
            fleet.net(),
            "n1",
            p2p_sim::NodeConfig::default(),
            cfg,
            membership,
        )
        .unwrap();
        fleet.run_for(Duration::from_secs(10)).await;
        let ctl = fleet.net().add_node("check").unwrap();
        let conn = ctl.connect(&n0).await.unwrap();
        assert_eq!(table(&conn).await.len(), 2, "n1 joined through n0");
    });
}

#[test]
fn with_an_allow_list_only_the_listed_nodes_records_are_taken() {
    block_on(async {
        let keys: Vec<NodeKey> = (0..3u8).map(|i| NodeKey::from_seed([i + 1; 32])).collect();
        let node = |i: usize| {
            Node::new(format!("n{i}")).config(p2p_sim::NodeConfig {
                key: Some(keys[i].clone()),
                ..p2p_sim::NodeConfig::default().mbit(100)
            })
        };
        let fleet = Fleet::builder(22)
            .membership(MembershipConfig {
                allowed_ids: Some(keys.iter().map(|k| k.peer_id()).collect()),
                ..MembershipConfig::default()
            })
            .node(node(0))
            .node(node(1).join("n0"))
            .node(node(2).join("n0"))
            .build();
        fleet.run_for(Duration::from_secs(5)).await;
        // A peer that gets through the transport (the simulator has no
        // allow-list of its own) offers its own, validly signed record.
        let outsider_key = NodeKey::from_seed([77; 32]);
        let outsider = fleet
            .net()
            .add_node_with(
                "outsider",
                p2p_sim::NodeConfig {
                    key: Some(outsider_key.clone()),
                    ..Default::default()
                },
            )
            .unwrap();
        let n0 = fleet.net().provider("n0").unwrap().local_addr();
        let conn = outsider.connect(&n0).await.unwrap();
        let own = NodeRecord {
            id: outsider_key.peer_id(),
            seq: 1,
            addrs: vec!["outsider".into()],
            name: "outsider".into(),
            labels: Default::default(),
            site: None,
            held: Vec::new(),
        }
        .sign(&outsider_key);
        gossip(
            &conn,
            vec![MemberEntry {
                record: own,
                down: None,
            }],
        )
        .await
        .unwrap();
        fleet.run_for(Duration::from_secs(5)).await;
        let t = table(&conn).await;
        assert_eq!(t.len(), 3, "{t:?}");
        assert!(t.iter().all(|r| r.id != outsider_key.peer_id()));
    });
}
