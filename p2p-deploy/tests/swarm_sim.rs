//! The swarm on the simulator, under attack and failure: a peer serving
//! corrupt chunks is banned and the deploy completes from the others; the
//! controller killed once every chunk exists in the fleet does not stop
//! the transfer.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use p2p_core::{Ed25519Signer, PeerAddr, PeerId, Provider};
use p2p_deploy::chunks::ChunkStore;
use p2p_deploy::{
    AgentConfig, Controller, ControllerConfig, NodeInfo, NodeResult, Plan, Release, RolloutPlan,
    RolloutReport, TrustStore,
};
use p2p_sim::{LinkSpec, NodeConfig, SimNet};
use tokio::sync::mpsc;

mod common;
use common::{publisher, release_of, spawn_agent, spawn_mallory};

/// A signed release of `size` random bytes in 64 KiB chunks (the sim
/// installer only checks the bytes, it does not unpack them).
async fn release(size: usize) -> Arc<Release> {
    release_of("app", "1.0.0", size).await
}

/// `n` agents named a00.. and a controller "ctl", all at 100 Mbit/s.
fn fleet(seed: u64, n: usize) -> (SimNet, Vec<String>, Controller) {
    fleet_with(seed, n, |_, _| {})
}

/// The same, with agent `i`'s config changed by `tweak(i, cfg)`.
fn fleet_with(
    seed: u64,
    n: usize,
    tweak: impl Fn(usize, &mut AgentConfig),
) -> (SimNet, Vec<String>, Controller) {
    let net = SimNet::builder(seed)
        .default_link(LinkSpec::latency(Duration::from_millis(10)))
        .build();
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("a{i:02}");
        let mut cfg = AgentConfig::new(TrustStore::new([publisher().key_id()]));
        cfg.name = name.clone();
        tweak(i, &mut cfg);
        spawn_agent(&net, &name, cfg);
        names.push(name);
    }
    let ctl = controller(&net, &names, "ctl");
    (net, names, ctl)
}

fn controller(net: &SimNet, names: &[String], name: &str) -> Controller {
    controller_with(net, names, name, ControllerConfig::default())
}

/// A controller `name` at 100 Mbit/s that knows `names`, with `cfg`.
fn controller_with(
    net: &SimNet,
    names: &[String],
    name: &str,
    cfg: ControllerConfig,
) -> Controller {
    let p = net
        .add_node_with(name, NodeConfig::default().mbit(100))
        .unwrap();
    Controller::new(
        Arc::new(p),
        ControllerConfig {
            bootstrap: addrs(net, names),
            ..cfg
        },
    )
}

fn addrs(net: &SimNet, names: &[String]) -> Vec<PeerAddr> {
    names
        .iter()
        .map(|n| net.provider(n).unwrap().local_addr())
        .collect()
}

async fn infos(ctl: &Controller) -> Vec<NodeInfo> {
    let views = ctl.nodes().await;
    let every: p2p_deploy::Selector = "".parse().unwrap();
    let mut t = Controller::select(&views, Some(&every), &[]).unwrap();
    t.sort_by(|a, b| a.name.cmp(&b.name));
    t
}

async fn deploy_all(ctl: &Controller, r: &Arc<Release>, t: &[NodeInfo]) -> RolloutReport {
    let (tx, _) = mpsc::channel(1);
    let plan = RolloutPlan {
        plan: Plan::All,
        ..RolloutPlan::default()
    };
    ctl.deploy(r.clone(), t, &plan, tx).await
}

/// Whether every node runs `version` of the app, by its own account.
fn all_active(infos: &[NodeInfo], version: &str) -> bool {
    infos.iter().all(|i| {
        i.apps.iter().any(|a| {
            a.name == "app"
                && a.active.as_ref().is_some_and(|v| v.to_string() == version)
                && a.status.as_ref().is_some_and(|s| s.state.is_live())
        })
    })
}

#[tokio::test(start_paused = true)]
async fn a_peer_serving_corrupt_chunks_is_banned_and_the_deploy_completes() {
    let (net, names, ctl) = fleet(11, 6);
    let r = release(4 << 20).await;
    let mallory = net
        .add_node_with("mallory", NodeConfig::default().mbit(100))
        .unwrap();
    let mallory_id = mallory.local_id();
    let joined = spawn_mallory(Arc::new(mallory), addrs(&net, &names), r.descriptor.clone());

    let t = infos(&ctl).await;
    assert_eq!(t.len(), names.len());
    let report = deploy_all(&ctl, &r, &t).await;
    assert!(report.is_success(), "{report:?}");
    let after = infos(&ctl).await;
    assert!(all_active(&after, "1.0.0"), "{after:#?}");

    let joined = joined.lock().unwrap().clone();
    assert!(
        joined.len() >= names.len() / 2,
        "mallory got sessions with only {} of {} targets",
        joined.len(),
        names.len()
    );
    for info in after.iter().filter(|i| joined.contains(&i.id)) {
        let score = info
            .peers
            .iter()
            .find(|p| p.peer == mallory_id)
            .unwrap_or_else(|| panic!("{} has no score for mallory: {:?}", info.name, info.peers));
        assert!(score.corrupt >= 1, "{}: {score:?}", info.name);
        assert_eq!(score.good, 0, "{}: {score:?}", info.name);
        assert!(
            score.banned_ms.is_some(),
            "{} did not ban mallory: {score:?}",
            info.name
        );
        // The honest peers served good chunks and are in good standing.
        assert!(
            info.peers
                .iter()
                .filter(|p| p.peer != mallory_id)
                .all(|p| p.banned_ms.is_none() && p.corrupt == 0),
            "{}: {:?}",
            info.name,
            info.peers
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_transfer_completes_when_the_controller_dies_after_seeding() {
    controller_dies_after_seeding(12, 8, None).await;
}

/// The same in a fleet where each node knows only 3 others: when the
/// controller dies, some chunks a node lacks are on none of its
/// neighbours yet, and come to them later; the node must wait for them
/// while chunks keep arriving, not give up.
#[tokio::test(start_paused = true)]
async fn with_few_neighbours_each_the_transfer_completes_when_the_controller_dies() {
    controller_dies_after_seeding(16, 30, Some(3)).await;
}

async fn controller_dies_after_seeding(seed: u64, n: usize, swarm_peers: Option<usize>) {
    let (net, names, ctl) = match swarm_peers {
        None => fleet(seed, n),
        Some(k) => {
            let (net, names, _) = fleet(seed, n);
            net.crash("ctl").unwrap();
            let cfg = ControllerConfig {
                swarm_peers: k,
                ..ControllerConfig::default()
            };
            let ctl = controller_with(&net, &names, "ctl0", cfg);
            (net, names, ctl)
        }
    };
    let ctl_name = if swarm_peers.is_some() { "ctl0" } else { "ctl" };
    let r = release(6 << 20).await;
    let d = r.descriptor.clone();
    let t = infos(&ctl).await;
    assert_eq!(t.len(), names.len());

    // Watch the agents' stores: once every chunk is on some agent, kill
    // the controller.
    let watch = {
        let (net, names, d) = (net.clone(), names.clone(), d.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let mut lacking: Option<BTreeSet<usize>> = None;
                let mut complete = 0;
                for n in &names {
                    let store = ChunkStore::new(Arc::new(net.storage(n).unwrap()));
                    let Ok(missing) = store.missing(&d).await else {
                        continue;
                    };
                    if store.release(&d.id()).await.unwrap().is_none() {
                        lacking = Some((0..d.chunks.len()).collect());
                        break;
                    }
                    complete += usize::from(missing.is_empty());
                    let missing: BTreeSet<usize> = missing.into_iter().collect();
                    lacking = Some(match lacking {
                        None => missing,
                        Some(l) => l.intersection(&missing).copied().collect(),
                    });
                }
                if lacking.is_some_and(|l| l.is_empty()) {
                    net.crash(ctl_name).unwrap();
                    return complete;
                }
            }
        }
    };
    let (report, complete_at_crash) = tokio::join!(deploy_all(&ctl, &r, &t), watch);
    let _ = ctl_name;
    assert!(
        complete_at_crash < names.len(),
        "every agent was complete before the controller died: the test proves nothing"
    );
    assert!(
        !report.is_success(),
        "the controller died mid-rollout: {report:?}"
    );

    // The agents finish on their own; a new controller sees the result.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let ctl2 = controller(&net, &names, "ctl2");
    let after = infos(&ctl2).await;
    assert_eq!(after.len(), names.len());
    assert!(all_active(&after, "1.0.0"), "{after:#?}");
    for n in &names {
        let store = ChunkStore::new(Arc::new(net.storage(n).unwrap()));
        assert!(store.missing(&d).await.unwrap().is_empty(), "{n}");
    }
}

/// The infos of the named nodes, in `infos`.
fn named(infos: &[NodeInfo], names: &[&str]) -> Vec<NodeInfo> {
    infos
        .iter()
        .filter(|i| names.contains(&i.name.as_str()))
        .cloned()
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_damaged_release_record_hides_only_itself() {
    let (net, names, ctl) = fleet_with(23, 1, |_, _| {});
    let all = infos(&ctl).await;
    let app = release_of("app", "1.0.0", 300_000).await;
    assert!(deploy_all(&ctl, &app, &all).await.is_success());
    // A descriptor record that no longer decodes (a disk fault, a bad
    // restore), then the agent restarts: it recovers, answers, and its
    // catalog still lists what it holds.
    let storage = net.storage(&names[0]).unwrap();
    let key = format!("releases/{}", "ab".repeat(32));
    p2p_core::Storage::put(&storage, &key, b"garbage")
        .await
        .unwrap();
    net.crash(&names[0]).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    net.restart(&names[0]).unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let found = ctl.search("app", None).await;
    assert!(found.unanswered.is_empty(), "{found:?}");
    assert_eq!(found.hits.len(), 1, "{found:?}");
    assert!(found.hits[0].holders[0].active, "{found:?}");
    // Removing the app still works; the damaged record is left alone.
    let reply = ctl
        .request(
            &all[0].addr,
            p2p_deploy::proto::Request::Remove {
                app: "app".into(),
                version: None,
            },
        )
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    assert!(
        p2p_core::Storage::get(&storage, &key)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn search_finds_releases_by_name_and_version_and_a_node_fetches_one_from_holders() {
    let other = Ed25519Signer::from_seed(&[1; 32]);
    let (_net, names, ctl) = fleet_with(21, 5, |i, cfg| {
        if i == 4 {
            // Trusts another publisher only.
            cfg.trust = TrustStore::new([other.key_id()]);
        }
    });
    let all = infos(&ctl).await;
    assert_eq!(all.len(), names.len());
    let app = release_of("app", "1.0.0", 1 << 20).await;
    let tool = release_of("tool", "0.3.0", 300_000).await;
    assert!(
        deploy_all(&ctl, &app, &named(&all, &["a00", "a01"]))
            .await
            .is_success()
    );
    assert!(
        deploy_all(&ctl, &tool, &named(&all, &["a02"]))
            .await
            .is_success()
    );

    let found = ctl.search("app", None).await;
    assert!(found.unanswered.is_empty(), "{found:?}");
    assert_eq!(found.hits.len(), 1, "{found:?}");
    let hit = &found.hits[0];
    assert_eq!(
        (hit.name.as_str(), hit.version.to_string(), hit.id),
        ("app", "1.0.0".to_string(), app.id())
    );
    let holders: BTreeSet<PeerId> = hit.holders.iter().map(|h| h.node.id).collect();
    let want: BTreeSet<PeerId> = named(&all, &["a00", "a01"]).iter().map(|i| i.id).collect();
    assert_eq!(holders, want);
    assert!(
        hit.holders
            .iter()
            .all(|h| h.complete && h.installed && h.active)
    );

    let names_of = |s: &p2p_deploy::Search| -> Vec<String> {
        s.hits
            .iter()
            .map(|h| format!("{} {}", h.name, h.version))
            .collect()
    };
    assert_eq!(
        names_of(&ctl.search("*", None).await),
        ["app 1.0.0", "tool 0.3.0"]
    );
    assert_eq!(names_of(&ctl.search("t*", None).await), ["tool 0.3.0"]);
    assert!(
        names_of(&ctl.search("ap", None).await).is_empty(),
        "exact unless *"
    );
    let req = |r: &str| semver::VersionReq::parse(r).unwrap();
    assert!(names_of(&ctl.search("app", Some(&req(">=2"))).await).is_empty());
    assert_eq!(
        names_of(&ctl.search("*", Some(&req("^0.3"))).await),
        ["tool 0.3.0"]
    );

    // a03 fetches app from its holders and keeps it, not installed.
    let a03 = &named(&all, &["a03"])[0];
    let entry = ctl
        .prefetch(&a03.addr, hit.id, hit.complete_holders())
        .await
        .unwrap();
    assert!(
        entry.is_complete() && !entry.installed && !entry.active,
        "{entry:?}"
    );
    let again = ctl.search("app", None).await;
    assert_eq!(again.hits[0].holders.len(), 3, "{again:?}");
    // Deploying it there now finds every chunk present.
    assert!(
        deploy_all(&ctl, &app, &named(&all, &["a03"]))
            .await
            .is_success()
    );

    // Refusals, each naming the problem; nothing is kept.
    let a04 = &named(&all, &["a04"])[0];
    let e = ctl
        .prefetch(&a04.addr, hit.id, hit.complete_holders())
        .await
        .unwrap_err();
    assert!(matches!(e, p2p_core::Error::BadSignature { .. }), "{e}");
    // Each holder's refusal is named, and neither is blamed for it: trust
    // stores differ from node to node.
    for h in &hit.holders {
        assert!(e.to_string().contains(&h.node.id.short()), "{e}");
    }
    let a04_now = infos(&ctl)
        .await
        .into_iter()
        .find(|i| i.id == a04.id)
        .unwrap();
    assert!(
        a04_now
            .peers
            .iter()
            .all(|p| p.corrupt == 0 && p.banned_ms.is_none()),
        "{:?}",
        a04_now.peers
    );
    let e = ctl
        .prefetch(&a03.addr, tool.id(), Vec::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no peer to fetch it from"), "{e}");
    let e = ctl
        .prefetch(&a03.addr, tool.id(), hit.complete_holders())
        .await
        .unwrap_err();
    assert!(
        matches!(e, p2p_core::Error::NotFound { .. }) && e.to_string().contains("from peer"),
        "{e}"
    );
    let found = ctl.search("*", None).await;
    assert!(
        found
            .hits
            .iter()
            .all(|h| h.holders.iter().all(|x| x.node.id != a04.id)),
        "the node that refused the release keeps nothing: {found:?}"
    );
    assert_eq!(names_of(&found), ["app 1.0.0", "tool 0.3.0"]);
}

#[tokio::test(start_paused = true)]
async fn upload_and_download_caps_bound_the_transfer_rate() {
    const MIB: u64 = 1 << 20;
    let (_net, names, ctl) = fleet_with(22, 5, |i, cfg| match i {
        1 => cfg.swarm.upload_limit = Some(MIB),
        2 => cfg.swarm.download_limit = Some(MIB),
        _ => {}
    });
    let all = infos(&ctl).await;
    assert_eq!(all.len(), names.len());
    let r = release(4 << 20).await;
    assert!(
        deploy_all(&ctl, &r, &named(&all, &["a00", "a01"]))
            .await
            .is_success()
    );
    let node = |n: &str| named(&all, &[n])[0].addr.clone();
    let timed = |to: &str, from: &str| {
        let (ctl, to, from, id) = (&ctl, node(to), node(from), r.id());
        async move {
            let begun = tokio::time::Instant::now();
            let e = ctl.prefetch(&to, id, vec![from]).await.unwrap();
            assert!(e.is_complete());
            begun.elapsed()
        }
    };
    // 4 MiB at 100 Mbit/s from one peer: about a second (two 64 KiB
    // requests in flight, 20 ms round trips).
    let free = timed("a04", "a00").await;
    // At 1 MiB/s: about 4 s (the first chunk goes at once).
    let upload_capped = timed("a03", "a01").await;
    let download_capped = timed("a02", "a00").await;
    assert!(free < Duration::from_secs(2), "uncapped took {free:?}");
    for (what, took) in [("upload", upload_capped), ("download", download_capped)] {
        assert!(
            took >= Duration::from_millis(3_500) && took < Duration::from_secs(6),
            "with a 1 MiB/s {what} cap, 4 MiB took {took:?}"
        );
    }
}

/// A node serves `upload_slots` chunk requests at once and answers
/// "busy" to one more at once (the client then asks another holder),
/// until a slot is free again; a swarm of such nodes still completes.
#[tokio::test(start_paused = true)]
async fn a_node_with_every_upload_slot_taken_answers_busy_and_the_swarm_completes() {
    use p2p_deploy::proto::{Call, Frame, Request};
    let (net, _names, ctl) = fleet_with(23, 8, |_, cfg| cfg.swarm.upload_slots = 1);
    let all = infos(&ctl).await;
    let r = release(2 << 20).await;
    let report = deploy_all(&ctl, &r, &all).await;
    assert!(report.is_success(), "{report:?}");

    let probe = net
        .add_node_with("probe", NodeConfig::default().mbit(100))
        .unwrap();
    let conn = probe.connect(&all[0].addr).await.unwrap();
    let fetch = |i: u32| Request::FetchChunks {
        package: r.id(),
        indexes: vec![i],
    };
    let timeout = Duration::from_secs(10);
    // The first request takes the slot, and keeps it while this client
    // has not closed its side.
    let mut first = Call::open(&*conn, fetch(0), timeout).await.unwrap();
    assert!(matches!(
        first.next().await.unwrap(),
        Frame::Chunk { index: 0, .. }
    ));
    let mut second = Call::open(&*conn, fetch(1), timeout).await.unwrap();
    let busy = second.next().await.unwrap_err();
    assert!(
        matches!(busy, p2p_core::Error::Busy { .. }),
        "with the one slot taken: {busy}"
    );
    assert!(
        busy.to_string().contains("serving 1 chunk requests"),
        "{busy}"
    );
    // Once the first client is done, the slot is free again.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = Call::open(&*conn, fetch(1), timeout).await.unwrap();
    assert!(matches!(
        third.next().await.unwrap(),
        Frame::Chunk { index: 1, .. }
    ));
}

/// One peer holds at most `SLOTS_PER_PEER` of a node's upload slots: the
/// next request of its is refused as busy while other peers are served.
#[tokio::test(start_paused = true)]
async fn one_peer_cannot_take_every_upload_slot() {
    use p2p_deploy::agent::SLOTS_PER_PEER;
    use p2p_deploy::proto::{Call, Frame, Request};
    let (net, _names, ctl) = fleet(24, 2);
    let all = infos(&ctl).await;
    let r = release(2 << 20).await;
    assert!(deploy_all(&ctl, &r, &all).await.is_success());
    let fetch = |i: u32| Request::FetchChunks {
        package: r.id(),
        indexes: vec![i],
    };
    let timeout = Duration::from_secs(10);
    let greedy = net.add_node("greedy").unwrap();
    let conn = greedy.connect(&all[0].addr).await.unwrap();
    let mut held = Vec::new();
    for i in 0..SLOTS_PER_PEER as u32 {
        let mut call = Call::open(&*conn, fetch(i), timeout).await.unwrap();
        assert!(matches!(call.next().await.unwrap(), Frame::Chunk { .. }));
        held.push(call); // read, and never closed
    }
    let mut more = Call::open(&*conn, fetch(9), timeout).await.unwrap();
    let busy = more.next().await.unwrap_err();
    assert!(
        matches!(busy, p2p_core::Error::Busy { .. }) && busy.to_string().contains("of yours"),
        "a peer past its share of the slots: {busy}"
    );
    // Someone else is served meanwhile.
    let other = net.add_node("other").unwrap();
    let conn2 = other.connect(&all[0].addr).await.unwrap();
    let mut call = Call::open(&*conn2, fetch(9), timeout).await.unwrap();
    assert!(matches!(
        call.next().await.unwrap(),
        Frame::Chunk { index: 9, .. }
    ));
    // One slot given back: the greedy peer is served again.
    held.pop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = Call::open(&*conn, fetch(9), timeout).await.unwrap();
    assert!(matches!(
        again.next().await.unwrap(),
        Frame::Chunk { index: 9, .. }
    ));
}

/// Sends `request` to `node` through `ctl` and reads to its answer.
async fn ask(
    ctl: &Controller,
    node: &NodeInfo,
    request: p2p_deploy::proto::Request,
) -> p2p_core::Result<p2p_deploy::proto::Reply> {
    let conn = ctl.connect(&node.addr).await?;
    let call = p2p_deploy::proto::Call::open(&*conn, request, Duration::from_secs(120)).await?;
    call.finish(|_| {}).await
}

#[tokio::test(start_paused = true)]
async fn a_deploy_by_reference_takes_the_descriptor_from_a_holder() {
    use p2p_deploy::proto::{Activation, Reply, Request};
    let (_net, _names, ctl) = fleet(25, 4);
    let all = infos(&ctl).await;
    let r = release(1 << 20).await;
    assert!(deploy_all(&ctl, &r, &all[..1]).await.is_success());
    let by_ref = |from: Vec<PeerAddr>, peers: Vec<PeerAddr>| Request::DeployRef {
        package: r.id(),
        signatures: r.signatures.clone(),
        options: Default::default(),
        from,
        peers,
    };

    // No rollout runs, so the controller serves nothing: the descriptor
    // and every chunk come from a00.
    let reply = ask(
        &ctl,
        &all[1],
        by_ref(vec![all[0].addr.clone()], vec![all[0].addr.clone()]),
    )
    .await
    .unwrap();
    assert!(
        matches!(reply, Reply::Activation(Activation::Activated { .. })),
        "{reply:?}"
    );
    let a01 = infos(&ctl).await;
    assert!(all_active(&a01[..2], "1.0.0"), "{a01:#?}");

    // Nobody named holds it and the sender does not serve it: the error
    // names the release and each source asked, and nothing is installed.
    let e = ask(&ctl, &all[2], by_ref(vec![all[3].addr.clone()], Vec::new()))
        .await
        .unwrap_err();
    assert!(matches!(e, p2p_core::Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains(&r.id().to_string()), "{e}");
    let other = release_of("app", "2.0.0", 1 << 20).await;
    let e = ask(
        &ctl,
        &all[2],
        Request::DeployRef {
            package: other.id(),
            signatures: other.signatures.clone(),
            options: Default::default(),
            from: vec![all[0].addr.clone(), all[1].addr.clone()],
            peers: Vec::new(),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, p2p_core::Error::NotFound { .. }), "{e}");
    for holder in &all[..2] {
        assert!(e.to_string().contains(&holder.id.short()), "{e}");
    }
    let a02 = &infos(&ctl).await[2];
    assert!(a02.apps.is_empty(), "{a02:?}");
}

#[tokio::test(start_paused = true)]
async fn targets_past_the_descriptor_copies_deploy_even_when_the_holders_named_are_down() {
    let net = SimNet::builder(26)
        .default_link(LinkSpec::latency(Duration::from_millis(10)))
        .build();
    let names: Vec<String> = (0..8).map(|i| format!("a{i:02}")).collect();
    for name in &names {
        let mut cfg = AgentConfig::new(TrustStore::new([publisher().key_id()]));
        cfg.name = name.clone();
        spawn_agent(&net, name, cfg);
    }
    let ctl = controller_with(
        &net,
        &names,
        "ctl",
        ControllerConfig {
            descriptor_copies: 2,
            ..ControllerConfig::default()
        },
    );
    let r = release(2 << 20).await;
    let t = infos(&ctl).await;
    assert_eq!(t.len(), names.len());

    // All up: the first two targets get the descriptor, the other two
    // take it from them.
    let report = deploy_all(&ctl, &r, &t[4..]).await;
    assert!(report.is_success(), "{report:?}");
    assert!(all_active(&infos(&ctl).await[4..], "1.0.0"));

    // The two that get the descriptor are down: the other two are named
    // holders that do not answer, and ask the controller.
    for n in &names[..2] {
        net.crash(n).unwrap();
    }
    let (tx, _) = mpsc::channel(1);
    let plan = RolloutPlan {
        max_failures: p2p_deploy::FailureLimit::Count(2),
        ..RolloutPlan::default()
    };
    let report = ctl.deploy(r.clone(), &t[..4], &plan, tx).await;
    assert!(report.halted.is_none(), "{report:?}");
    for (i, node) in t[..4].iter().enumerate() {
        let result = &report.nodes[&node.id];
        assert_eq!(
            matches!(result, NodeResult::Activated),
            i >= 2,
            "{}: {result:?}",
            node.name
        );
    }
    let after = infos(&ctl).await;
    assert_eq!(after.len(), 6, "{after:#?}");
    assert!(all_active(&after, "1.0.0"), "{after:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_peer_answering_with_another_releases_descriptor_is_caught_and_the_deploy_goes_on() {
    use p2p_core::framing::Framed;
    use p2p_deploy::proto::{Envelope, Frame, MAX_FRAME, PROTOCOL, Reply, Request};
    let (net, _names, ctl) = fleet(27, 3);
    let all = infos(&ctl).await;
    let r = release(1 << 20).await;
    let other = release_of("app", "9.0.0", 1 << 20).await;
    assert!(deploy_all(&ctl, &r, &all[..1]).await.is_success());

    // A peer that answers every descriptor request with the other
    // release's descriptor and signatures: well signed, but not the one
    // asked for.
    let liar = net
        .add_node_with("liar", NodeConfig::default().mbit(100))
        .unwrap();
    let liar_addr = liar.local_addr();
    let mut listener = liar.listen().await.unwrap();
    tokio::spawn(async move {
        while let Ok(conn) = listener.accept().await {
            let other = other.clone();
            tokio::spawn(async move {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let mut framed = Framed::with_max(send, recv, MAX_FRAME);
                    framed.hello(&PROTOCOL).await.unwrap();
                    let _: Envelope = framed.recv().await.unwrap();
                    let reply = Reply::Release {
                        descriptor: other.descriptor_bytes.clone(),
                        signatures: other.signatures.clone(),
                    };
                    let _ = framed.send(&Frame::Done(reply)).await;
                    let _ = framed.finish().await;
                }
            });
        }
    });

    // Asked first, the liar is caught by the release id (the
    // descriptor's hash) and marked; the descriptor comes from a00.
    let reply = ask(
        &ctl,
        &all[1],
        Request::DeployRef {
            package: r.id(),
            signatures: r.signatures.clone(),
            options: Default::default(),
            from: vec![liar_addr.clone(), all[0].addr.clone()],
            peers: vec![all[0].addr.clone()],
        },
    )
    .await
    .unwrap();
    assert!(matches!(reply, Reply::Activation(_)), "{reply:?}");
    let now = infos(&ctl).await;
    assert!(all_active(&now[..2], "1.0.0"), "{now:#?}");
    let score = now[1]
        .peers
        .iter()
        .find(|p| p.peer == liar_addr.id)
        .unwrap_or_else(|| panic!("no score for the liar: {:?}", now[1].peers));
    assert!(score.corrupt >= 1, "{score:?}");

    // With only the liar to ask and nothing served by the sender, the
    // deploy fails, naming the mismatch, and installs nothing.
    let e = ask(
        &ctl,
        &all[2],
        Request::DeployRef {
            package: r.id(),
            signatures: r.signatures.clone(),
            options: Default::default(),
            from: vec![liar_addr],
            peers: Vec::new(),
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("when asked for"), "{e}");
    assert!(infos(&ctl).await[2].apps.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_release_kept_ahead_is_dropped_once_it_can_no_longer_be_deployed() {
    let (net, _names, ctl) = fleet(28, 2);
    let all = infos(&ctl).await;
    let v1 = release_of("app", "1.0.0", 1 << 20).await;
    let v2 = release_of("app", "2.0.0", 1 << 20).await;
    let v3 = release_of("app", "3.0.0", 1 << 20).await;
    for r in [&v1, &v3] {
        assert!(deploy_all(&ctl, r, &all[..1]).await.is_success());
    }
    // a01 keeps 1.0.0 and 3.0.0 ahead, from a00, installing neither.
    for r in [&v1, &v3] {
        let entry = ctl
            .prefetch(&all[1].addr, r.id(), vec![all[0].addr.clone()])
            .await
            .unwrap();
        assert!(entry.is_complete() && !entry.installed, "{entry:?}");
    }
    let store = ChunkStore::new(Arc::new(net.storage("a01").unwrap()));
    let held = |id| {
        let store = store.clone();
        async move { store.release(&id).await.unwrap().is_some() }
    };
    assert!(held(v1.id()).await && held(v3.id()).await);

    // 2.0.0 installed: 1.0.0 can never be deployed there again and goes
    // (its chunks with it, unless another release shares them); 3.0.0
    // still can, and stays.
    assert!(deploy_all(&ctl, &v2, &all[1..]).await.is_success());
    assert!(!held(v1.id()).await, "1.0.0 is kept for nothing");
    assert!(held(v3.id()).await && held(v2.id()).await);
    assert!(store.missing(&v3.descriptor).await.unwrap().is_empty());
    let found = ctl.search("app", None).await;
    let holders = |v: &str| -> Vec<PeerId> {
        found
            .hits
            .iter()
            .filter(|h| h.version.to_string() == v)
            .flat_map(|h| h.holders.iter().map(|x| x.node.id))
            .collect()
    };
    assert_eq!(holders("1.0.0"), [all[0].id]);
    assert_eq!(holders("3.0.0").len(), 2);

    // And 3.0.0 deploys there from what it kept.
    assert!(deploy_all(&ctl, &v3, &all[1..]).await.is_success());
}

/// A signed package of app "app" 1.0.0 (300 KB of noise in 64 KiB chunks)
/// with one byte of its archive changed, in chunk 2: the signatures hold,
/// the chunk does not match its hash. Served as a controller that skips
/// its own check would serve it.
async fn tampered_release(dir: &std::path::Path) -> Arc<Release> {
    use rand::{RngExt, SeedableRng};
    use std::os::unix::fs::PermissionsExt;
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("p2p.toml"),
        "name = \"app\"\nversion = \"1.0.0\"\nentrypoint = \"run\"\n",
    )
    .unwrap();
    std::fs::write(app.join("run"), "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(app.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut noise = vec![0u8; 300_000];
    rand_chacha::ChaCha8Rng::seed_from_u64(5).fill(&mut noise[..]);
    std::fs::write(app.join("data.bin"), noise).unwrap();
    let out = dir.join("app-1.0.0.p2p");
    let opts = p2p_deploy::BuildOptions {
        chunk_size: 64 * 1024,
        ..p2p_deploy::BuildOptions::default()
    };
    p2p_deploy::build(&app, &out, &p2p_core::SystemClock, opts).unwrap();
    let mut pkg = p2p_deploy::PackageFile::open(&out).unwrap();
    pkg.sign(&publisher()).await.unwrap();
    let pkg = p2p_deploy::PackageFile::open(&out).unwrap();
    let mut bytes = std::fs::read(&out).unwrap();
    bytes[(pkg.archive_offset + 2 * 64 * 1024 + 5) as usize] ^= 0x01;
    std::fs::write(&out, bytes).unwrap();
    let pkg = p2p_deploy::PackageFile::open(&out).unwrap();
    assert_eq!(
        pkg.check_archive().unwrap_err(),
        p2p_deploy::package::FormatError::ChunkHash { index: 2 }
    );
    Arc::new(Release::from_package(&pkg))
}

#[tokio::test(start_paused = true)]
async fn a_release_with_a_bad_chunk_fails_at_once_naming_the_chunk_and_the_sender() {
    let (net, names, ctl) = fleet(14, 3);
    let dir = tempfile::tempdir().unwrap();
    let bad = tampered_release(dir.path()).await;
    let ctl_id = net.provider("ctl").unwrap().local_id();
    let t = infos(&ctl).await;
    assert_eq!(t.len(), names.len());

    let begun = tokio::time::Instant::now();
    let report = deploy_all(&ctl, &bad, &t).await;
    let took = begun.elapsed();
    for n in &t {
        match &report.nodes[&n.id] {
            NodeResult::Failed { error } => {
                assert!(
                    error.contains("chunk 2 of app 1.0.0 does not match its hash")
                        && error.contains(&ctl_id.short()),
                    "{}: {error}",
                    n.name
                );
            }
            other => panic!("{}: {other:?}", n.name),
        }
    }
    // Virtual time: the nodes gave up at the bad chunk, not at a timeout.
    assert!(took < Duration::from_secs(10), "the rollout took {took:?}");

    // Nothing was left locked: a good release of the app goes in at once.
    let good = release_of("app", "1.0.1", 1 << 20).await;
    let begun = tokio::time::Instant::now();
    let report = deploy_all(&ctl, &good, &t).await;
    assert!(report.is_success(), "{report:?}");
    assert!(
        begun.elapsed() < Duration::from_secs(10),
        "{:?}",
        begun.elapsed()
    );
    assert!(all_active(&infos(&ctl).await, "1.0.1"));
}

#[tokio::test(start_paused = true)]
async fn a_deploy_whose_controller_dies_before_any_chunk_arrived_frees_the_app_within_seconds() {
    // Slow agents, so the controller dies with most of the release unsent.
    let net = SimNet::builder(15)
        .default_link(LinkSpec::latency(Duration::from_millis(10)))
        .build();
    let mut names = Vec::new();
    for i in 0..2 {
        let name = format!("a{i:02}");
        let mut cfg = AgentConfig::new(TrustStore::new([publisher().key_id()]));
        cfg.name = name.clone();
        common::spawn_agent_on(&net, &name, NodeConfig::default().mbit(1), cfg);
        names.push(name);
    }
    let ctl = controller(&net, &names, "ctl");
    let r = release(8 << 20).await;
    let t = infos(&ctl).await;
    let crash = {
        let net = net.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            net.crash("ctl").unwrap();
        }
    };
    let (report, ()) = tokio::join!(deploy_all(&ctl, &r, &t), crash);
    assert!(!report.is_success(), "{report:?}");
    let died = tokio::time::Instant::now();

    // Another controller deploys another version: the agents gave the
    // dead one's deploy up and answer this one, not "busy".
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ctl2 = controller(&net, &names, "ctl2");
    let t2 = infos(&ctl2).await;
    assert_eq!(t2.len(), names.len());
    let small = release_of("app", "1.0.1", 64 << 10).await;
    let report = deploy_all(&ctl2, &small, &t2).await;
    assert!(report.is_success(), "{report:?}");
    assert!(
        died.elapsed() < Duration::from_secs(30),
        "{:?}",
        died.elapsed()
    );
}
