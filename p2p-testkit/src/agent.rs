//! One simulated node running the real [`Agent`].

use std::sync::Arc;

use p2p_deploy::membership::{Membership, MembershipConfig, Profile};
use p2p_deploy::{Agent, AgentConfig, AgentParts, MemInstaller};
use p2p_sim::{NodeConfig, SimNet};

/// Changes the parts an agent is composed of on one node (its storage,
/// its installer, ...), given the node's name and the parts the kit made.
pub type PartsHook = Arc<dyn Fn(&str, AgentParts) -> AgentParts + Send + Sync>;

/// Starts an [`Agent`] with `cfg` on a new node `name` of `net`,
/// configured as `node` (bandwidth, NAT, LAN, key). The agent runs on the
/// simulator's provider, processes ([`SimRuntime`](p2p_sim::SimRuntime),
/// scripted by [`SimNet::scripts`]), storage and clock, with an in-memory
/// installer ([`MemInstaller`]). After [`SimNet::crash`] and
/// [`SimNet::restart`] the node runs a fresh agent on the same storage,
/// as a real node does after a reboot.
///
/// This is what [`Fleet`](crate::Fleet) does for each of its agents; call
/// it to add agents to a network built some other way.
///
/// # Errors
/// A node called `name` exists already.
pub fn spawn_agent(
    net: &SimNet,
    name: &str,
    node: NodeConfig,
    cfg: AgentConfig,
) -> p2p_core::Result<()> {
    spawn_agent_with(net, name, node, cfg, None, None)
}

/// [`spawn_agent`], with the agent taking part in membership with
/// `membership` (its bootstrap peers as given there).
///
/// # Errors
/// A node called `name` exists already.
pub fn spawn_agent_with_membership(
    net: &SimNet,
    name: &str,
    node: NodeConfig,
    cfg: AgentConfig,
    membership: MembershipConfig,
) -> p2p_core::Result<()> {
    spawn_agent_with(net, name, node, cfg, None, Some(membership))
}

/// [`spawn_agent`], with the parts changed by `parts` when given.
pub(crate) fn spawn_agent_with(
    net: &SimNet,
    name: &str,
    node: NodeConfig,
    cfg: AgentConfig,
    parts: Option<PartsHook>,
    membership: Option<MembershipConfig>,
) -> p2p_core::Result<()> {
    net.spawn_node(name, node, move |ctx| {
        let cfg = cfg.clone();
        let hook = parts.clone();
        let membership = membership.clone();
        async move {
            let mut agent_parts = AgentParts {
                provider: Arc::new(ctx.provider),
                runtime: ctx.runtime.clone(),
                storage: Arc::new(ctx.storage),
                installer: Arc::new(MemInstaller::new()),
                clock: Arc::new(ctx.clock),
                seed: ctx.seed,
            };
            if let Some(hook) = hook {
                agent_parts = hook(&ctx.name, agent_parts);
            }
            let agent = Agent::new(cfg, agent_parts.clone());
            if let Some(m) = membership {
                let m = Membership::new(
                    m,
                    ctx.key.clone(),
                    agent_parts.provider,
                    agent_parts.storage,
                    agent_parts.clock,
                    Profile::default(),
                    ctx.seed ^ 0x6d65_6d62,
                )
                .await
                .and_then(|m| agent.set_membership(m));
                if let Err(e) = m {
                    tracing::warn!(node = %ctx.name, error = %e, "membership could not start");
                    return;
                }
            }
            if let Err(e) = agent.run().await {
                tracing::warn!(node = %ctx.name, error = %e, "agent stopped");
            }
        }
    })
}
