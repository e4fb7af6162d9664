//! The master's resource allocator: decides which framework is offered which
//! agent's free resources.
//!
//! # Model
//!
//! * Every agent has a `total` ([`Resources`]: milli-cpus, memory and disk bytes).
//!   Of it, some is *allocated* (running tasks, reported through
//!   [`Allocator::update_agent_allocation`] or accepted offers) and some is
//!   *offered* (outstanding offers). **Offerable = total − allocated − offered**,
//!   computed with saturating arithmetic, so a bookkeeping bug can make an agent
//!   look full but never panics the daemon.
//! * A framework belongs to one role. Outstanding offers count as the framework's
//!   allocation while they are outstanding, exactly like tasks.
//! * [`Allocator::allocate`] runs one full allocation cycle: every agent with
//!   offerable resources is considered once and its whole offerable amount is
//!   offered to a single framework (one offer per agent per cycle, as Mesos'
//!   hierarchical allocator does). The master sends the returned [`Offer`]s and
//!   later reports what became of each: [`Allocator::accept_offer`],
//!   [`Allocator::decline_offer`] or [`Allocator::rescind_offer`].
//!
//! # Policy: hierarchical DRF ([`HierarchicalDrf`])
//!
//! For each agent the allocator picks the role with the lowest *weighted dominant
//! share* (the role's largest fraction of any cluster total, divided by the
//! role's weight), then within that role the framework with the lowest dominant
//! share, skipping frameworks that are inactive, suppressed, or have a refusal
//! filter for that agent. Ties are broken by name (role name, framework id), so a
//! cycle is a deterministic function of the allocator's state; agents are visited
//! in agent-id order.
//!
//! # Why the data structures look like this
//!
//! The performance goal is one full cycle over 20,000 agents and 2,000
//! frameworks in well under 150 ms on two cores (Mesos 1.8 takes ~3.8 s for
//! that). A naive cycle sorts all frameworks for every agent: O(A · F log F).
//! Here:
//!
//! * Agents, frameworks and roles live in slot vectors (`Vec<Option<_>>` plus a
//!   free list) addressed by `u32`; the string ids are only used at the API
//!   boundary (one `BTreeMap` lookup per call) and as deterministic tie-breakers.
//! * At the start of a cycle, the allocator builds one ordered set of
//!   `(share, id, slot)` per role holding its *eligible* frameworks, and one ordered
//!   set of `(weighted share, name, slot)` over roles that have any. Building them
//!   is O(F log F) once per cycle, so between cycles no ordering has to be
//!   maintained and every other operation stays O(log n) or O(1).
//! * Per agent, the pick is the first entry of the role set and of that role's
//!   framework set (O(log F)) unless refusal filters force a short walk. After an
//!   offer, only the chosen framework's and role's keys change: each is removed and
//!   re-inserted with its new share (O(log F + log R)). A cycle is therefore
//!   O(A · (log F + log R)) with no per-agent sorting.
//! * Shares are `f64`s recomputed from exact integer sums (maintained
//!   incrementally per framework and per role) and cached reciprocals of the
//!   cluster totals, so they never drift and re-computing a key is three
//!   multiplications.
//! * Suppressed and inactive frameworks are simply left out of the cycle's sets,
//!   so they cost nothing per agent; their allocations still count toward their
//!   role's share.
//!
//! Not implemented yet: quotas and reservations, multi-role frameworks, attribute
//! constraints (attributes are stored for them), and limits on the number of
//! offers a framework may hold.

mod drf;
mod resources;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use drf::{AllocatorConfig, HierarchicalDrf};
pub use resources::{ResourceError, Resources, cpus_to_milli};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Cheap to clone (a reference-counted string).
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The id as a string.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(Arc::from(s))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(Arc::from(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map($name::from)
            }
        }
    };
}

string_id!(
    /// An agent's id.
    AgentId
);
string_id!(
    /// A framework's (scheduler's) id.
    FrameworkId
);

/// An offer's id: unique for the lifetime of one allocator (a counter; the master
/// may start it past the ids a previous master instance handed out, see
/// [`AllocatorConfig::first_offer_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OfferId(pub u64);

impl fmt::Display for OfferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "offer-{}", self.0)
    }
}

/// Agent attributes (e.g. `rack=r1`), kept for placement constraints.
pub type Attributes = BTreeMap<String, String>;

/// Resources of one agent offered to one framework.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Unique id.
    pub id: OfferId,
    /// The agent whose resources these are.
    pub agent: AgentId,
    /// The framework they are offered to.
    pub framework: FrameworkId,
    /// What is offered.
    pub resources: Resources,
}

/// Errors of allocator operations. An operation that returns an error has not
/// changed the allocator's state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AllocatorError {
    /// No agent with this id.
    #[error("unknown agent {0}")]
    UnknownAgent(AgentId),
    /// No framework with this id.
    #[error("unknown framework {0}")]
    UnknownFramework(FrameworkId),
    /// No outstanding offer with this id (already accepted, declined, rescinded,
    /// or never made).
    #[error("unknown or no longer outstanding offer {0}")]
    UnknownOffer(OfferId),
    /// `add_agent` with an id that is already registered.
    #[error("agent {0} is already registered")]
    DuplicateAgent(AgentId),
    /// `add_framework` with an id that is already registered.
    #[error("framework {0} is already registered")]
    DuplicateFramework(FrameworkId),
    /// A role weight that is not a finite number > 0.
    #[error("invalid weight {weight} for role {role:?}: must be finite and > 0")]
    InvalidWeight {
        /// The role.
        role: String,
        /// The rejected weight.
        weight: f64,
    },
    /// An offer was accepted for more than it holds.
    #[error("offer {offer} holds {offered}, cannot use {used}")]
    ExceedsOffer {
        /// The offer.
        offer: OfferId,
        /// What it holds.
        offered: Resources,
        /// What the framework tried to use.
        used: Resources,
    },
    /// Too many agents or frameworks for the `u32` slot space.
    #[error("too many {0}")]
    Capacity(&'static str),
}

/// An allocation policy. The master owns one and drives it from its event loop;
/// the trait exists so that other policies (e.g. with quotas) can be swapped in.
///
/// Every method is total: unknown ids and inconsistent amounts yield an
/// [`AllocatorError`] (or are saturated and logged where noted), never a panic.
pub trait Allocator {
    /// Registers an agent with its total resources and attributes.
    fn add_agent(
        &mut self,
        id: AgentId,
        total: Resources,
        attributes: Attributes,
    ) -> Result<(), AllocatorError>;

    /// Changes an agent's total (e.g. re-detected capacity). If the agent is now
    /// over-committed, its outstanding offers are withdrawn and returned: the
    /// master must rescind them.
    fn update_agent_total(
        &mut self,
        id: &AgentId,
        total: Resources,
    ) -> Result<Vec<Offer>, AllocatorError>;

    /// Removes an agent. Returns its outstanding offers, which the master must
    /// rescind; the frameworks' allocations on it are released.
    fn remove_agent(&mut self, id: &AgentId) -> Result<Vec<Offer>, AllocatorError>;

    /// Sets what `framework` has allocated (running tasks) on `agent`, replacing
    /// the previous value: used when an agent (re-)registers with running tasks.
    /// Outstanding offers are not affected.
    fn update_agent_allocation(
        &mut self,
        agent: &AgentId,
        framework: &FrameworkId,
        allocated: Resources,
    ) -> Result<(), AllocatorError>;

    /// Registers a framework in a role (the role is created with weight 1 if it
    /// is new). An inactive framework gets no offers until activated.
    fn add_framework(
        &mut self,
        id: FrameworkId,
        role: &str,
        active: bool,
    ) -> Result<(), AllocatorError>;

    /// Removes a framework: its allocations on all agents are released and its
    /// outstanding offers withdrawn and returned (for the master's bookkeeping).
    fn remove_framework(&mut self, id: &FrameworkId) -> Result<Vec<Offer>, AllocatorError>;

    /// The framework (re)connected: it gets offers again.
    fn activate_framework(&mut self, id: &FrameworkId) -> Result<(), AllocatorError>;

    /// The framework disconnected: it gets no offers; its allocations stay.
    fn deactivate_framework(&mut self, id: &FrameworkId) -> Result<(), AllocatorError>;

    /// The framework wants no offers until it revives.
    fn suppress(&mut self, id: &FrameworkId) -> Result<(), AllocatorError>;

    /// The framework wants offers again; this also clears its refusal filters.
    fn revive(&mut self, id: &FrameworkId) -> Result<(), AllocatorError>;

    /// The framework declined an outstanding offer: its resources become offerable
    /// again, but not to this framework from that agent for `refuse_for` after `now`.
    fn decline_offer(
        &mut self,
        offer: OfferId,
        refuse_for: Duration,
        now: Instant,
    ) -> Result<(), AllocatorError>;

    /// The framework refuses offers from `agent` for `refuse_for` after `now`
    /// (without an outstanding offer to decline).
    fn decline_agent(
        &mut self,
        framework: &FrameworkId,
        agent: &AgentId,
        refuse_for: Duration,
        now: Instant,
    ) -> Result<(), AllocatorError>;

    /// The framework used `used` (which must fit in the offer) of an outstanding
    /// offer to launch tasks: that part becomes the framework's allocation on the
    /// agent, the rest becomes offerable again.
    fn accept_offer(&mut self, offer: OfferId, used: Resources) -> Result<(), AllocatorError>;

    /// The master withdrew an outstanding offer (timeout, agent lost, …): its
    /// resources become offerable again. Returns the offer.
    fn rescind_offer(&mut self, offer: OfferId) -> Result<Offer, AllocatorError>;

    /// Resources a framework held on an agent were freed (a task finished).
    /// Recovering more than is allocated saturates at zero and logs a warning.
    fn recover_resources(
        &mut self,
        agent: &AgentId,
        framework: &FrameworkId,
        resources: Resources,
    ) -> Result<(), AllocatorError>;

    /// Sets a role's weight (default 1): a role with weight 2 is entitled to twice
    /// the dominant share of a role with weight 1.
    fn set_weight(&mut self, role: &str, weight: f64) -> Result<(), AllocatorError>;

    /// Runs one full allocation cycle at time `now` and returns the new offers
    /// (at most one per agent). They are outstanding until accepted, declined or
    /// rescinded.
    fn allocate(&mut self, now: Instant) -> Vec<Offer>;
}
