//! [`HierarchicalDrf`]: the default [`Allocator`] (see the module docs of
//! [`crate::allocator`] for the policy and why the structures look like this).

mod books;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    AgentId, Allocator, AllocatorError, Attributes, FrameworkId, Offer, OfferId, Resources,
};
use books::{Agent, Framework, Key, OfferEntry, Role, Shares, Slots};

/// Tunables of [`HierarchicalDrf`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatorConfig {
    /// An agent's offerable resources are offered only if they hold at least this
    /// many milli-cpus **or** at least `min_allocatable_mem_bytes` of memory, so
    /// that crumbs are not offered over and over. Default 10 (0.01 cpus).
    pub min_allocatable_cpus_milli: u64,
    /// See `min_allocatable_cpus_milli`. Default 32 MiB.
    pub min_allocatable_mem_bytes: u64,
    /// The first offer id handed out. A master that restarts should start past
    /// the ids its previous instance used (e.g. from a persisted epoch). Default 1.
    pub first_offer_id: u64,
}

impl AllocatorConfig {
    fn allocatable(&self, r: &Resources) -> bool {
        !r.is_empty()
            && (r.cpus_milli >= self.min_allocatable_cpus_milli
                || r.mem_bytes >= self.min_allocatable_mem_bytes)
    }
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        AllocatorConfig {
            min_allocatable_cpus_milli: 10,
            min_allocatable_mem_bytes: 32 << 20,
            first_offer_id: 1,
        }
    }
}

/// Hierarchical dominant resource fairness: roles by weighted dominant share,
/// then frameworks within the role by dominant share; whole agents are offered.
#[derive(Debug)]
pub struct HierarchicalDrf {
    config: AllocatorConfig,
    agents: Slots<Agent>,
    agent_index: BTreeMap<AgentId, u32>,
    frameworks: Slots<Framework>,
    framework_index: BTreeMap<FrameworkId, u32>,
    roles: Vec<Role>,
    role_index: HashMap<Arc<str>, u32>,
    offers: HashMap<OfferId, OfferEntry>,
    next_offer: u64,
    /// Offers made since this allocator was created: the clock of `last_offered`.
    offers_made: u64,
    /// Sum of the agents' totals.
    total: Resources,
}

impl Default for HierarchicalDrf {
    fn default() -> Self {
        Self::new(AllocatorConfig::default())
    }
}

impl HierarchicalDrf {
    /// An empty allocator.
    #[must_use]
    pub fn new(config: AllocatorConfig) -> Self {
        HierarchicalDrf {
            next_offer: config.first_offer_id,
            offers_made: 0,
            config,
            agents: Slots::new(),
            agent_index: BTreeMap::new(),
            frameworks: Slots::new(),
            framework_index: BTreeMap::new(),
            roles: Vec::new(),
            role_index: HashMap::new(),
            offers: HashMap::new(),
            total: Resources::ZERO,
        }
    }

    /// The sum of all agents' totals.
    #[must_use]
    pub fn total(&self) -> Resources {
        self.total
    }

    /// Number of registered agents.
    #[must_use]
    pub fn agent_count(&self) -> usize {
        self.agent_index.len()
    }

    /// Number of registered frameworks.
    #[must_use]
    pub fn framework_count(&self) -> usize {
        self.framework_index.len()
    }

    /// Number of outstanding offers.
    #[must_use]
    pub fn outstanding_offers(&self) -> usize {
        self.offers.len()
    }

    /// An agent's offerable resources (total − allocated − offered).
    #[must_use]
    pub fn offerable(&self, agent: &AgentId) -> Option<Resources> {
        let slot = *self.agent_index.get(agent)?;
        self.agents.get(slot).map(Agent::offerable)
    }

    /// What a framework holds: allocated plus outstanding offers.
    #[must_use]
    pub fn framework_held(&self, framework: &FrameworkId) -> Option<Resources> {
        let slot = *self.framework_index.get(framework)?;
        self.frameworks.get(slot).map(Framework::held)
    }

    /// A framework's dominant share of the cluster (offers included).
    #[must_use]
    pub fn framework_share(&self, framework: &FrameworkId) -> Option<f64> {
        let held = self.framework_held(framework)?;
        Some(Shares::new(&self.total).dominant(&held))
    }

    /// A role's dominant share of the cluster, not divided by its weight.
    #[must_use]
    pub fn role_share(&self, role: &str) -> Option<f64> {
        let slot = *self.role_index.get(role)?;
        let role = self.roles.get(slot as usize)?;
        Some(Shares::new(&self.total).dominant(&role.held))
    }

    /// Per agent: its id and the sum of its outstanding offers (for tests).
    #[cfg(test)]
    pub(super) fn agents_offered(&self) -> Vec<(AgentId, Resources)> {
        self.agents
            .iter()
            .map(|(_, a)| (a.id.clone(), a.offered))
            .collect()
    }

    fn agent_slot(&self, id: &AgentId) -> Result<u32, AllocatorError> {
        self.agent_index
            .get(id)
            .copied()
            .ok_or_else(|| AllocatorError::UnknownAgent(id.clone()))
    }

    fn framework_slot(&self, id: &FrameworkId) -> Result<u32, AllocatorError> {
        self.framework_index
            .get(id)
            .copied()
            .ok_or_else(|| AllocatorError::UnknownFramework(id.clone()))
    }

    /// The slots of an agent and a framework (the agent's looked up first).
    fn slots(
        &self,
        agent: &AgentId,
        framework: &FrameworkId,
    ) -> Result<(u32, u32), AllocatorError> {
        Ok((self.agent_slot(agent)?, self.framework_slot(framework)?))
    }

    fn framework_mut(&mut self, id: &FrameworkId) -> Result<&mut Framework, AllocatorError> {
        let slot = self.framework_slot(id)?;
        self.frameworks
            .get_mut(slot)
            .ok_or_else(|| AllocatorError::UnknownFramework(id.clone()))
    }

    fn role_slot(&mut self, name: &str) -> u32 {
        if let Some(&slot) = self.role_index.get(name) {
            return slot;
        }
        // Roles are never removed and are far fewer than u32::MAX in practice; if
        // that ever overflowed, the saturated slot would only alias the last role.
        let slot = u32::try_from(self.roles.len()).unwrap_or(u32::MAX);
        let name: Arc<str> = Arc::from(name);
        self.roles.push(Role {
            name: name.clone(),
            weight: 1.0,
            held: Resources::ZERO,
            last_offered: 0,
        });
        self.role_index.insert(name, slot);
        slot
    }

    fn role_add(&mut self, role: u32, r: &Resources) {
        if let Some(role) = self.roles.get_mut(role as usize) {
            role.held.add_or_warn(r, "role held");
        }
    }

    fn role_sub(&mut self, role: u32, r: &Resources) {
        if let Some(role) = self.roles.get_mut(role as usize) {
            role.held.sub_or_warn(r, "role held");
        }
    }

    /// Removes an outstanding offer from the books (its resources become
    /// offerable) and returns it.
    fn withdraw_offer(&mut self, id: OfferId) -> Option<Offer> {
        let entry = self.offers.remove(&id)?;
        let agent_id = match self.agents.get_mut(entry.agent) {
            Some(agent) => {
                agent.offered.sub_or_warn(&entry.resources, "agent offered");
                agent.offers.retain(|o| *o != id);
                agent.id.clone()
            }
            None => {
                tracing::warn!(offer = %id, "offer refers to a removed agent");
                AgentId::from("")
            }
        };
        let (framework_id, role) = match self.frameworks.get_mut(entry.framework) {
            Some(fw) => {
                fw.offered
                    .sub_or_warn(&entry.resources, "framework offered");
                fw.offers.remove(&id);
                (fw.id.clone(), Some(fw.role))
            }
            None => {
                tracing::warn!(offer = %id, "offer refers to a removed framework");
                (FrameworkId::from(""), None)
            }
        };
        if let Some(role) = role {
            self.role_sub(role, &entry.resources);
        }
        Some(Offer {
            id,
            agent: agent_id,
            framework: framework_id,
            resources: entry.resources,
        })
    }

    /// Sets `framework`'s allocation on `agent` to `value`, keeping all sums in step.
    fn set_allocation(&mut self, agent: u32, framework: u32, value: Resources) {
        let (Some(a), Some(f)) = (
            self.agents.get_mut(agent),
            self.frameworks.get_mut(framework),
        ) else {
            return;
        };
        let pos = a.allocations.iter().position(|(s, _)| *s == framework);
        let old = pos
            .and_then(|p| a.allocations.get(p))
            .map_or(Resources::ZERO, |(_, r)| *r);
        match (pos, value.is_empty()) {
            (Some(p), true) => {
                a.allocations.swap_remove(p);
                f.agents.remove(&agent);
            }
            (Some(p), false) => {
                if let Some(entry) = a.allocations.get_mut(p) {
                    entry.1 = value;
                }
            }
            (None, true) => {}
            (None, false) => {
                a.allocations.push((framework, value));
                f.agents.insert(agent);
            }
        }
        a.allocated.sub_or_warn(&old, "agent allocated");
        a.allocated.add_or_warn(&value, "agent allocated");
        if !a.allocated.saturating_add(&a.offered).fits(&a.total) {
            tracing::warn!(
                agent_id = %a.id,
                total = %a.total,
                allocated = %a.allocated,
                offered = %a.offered,
                "agent is over-committed"
            );
        }
        f.allocated.sub_or_warn(&old, "framework allocated");
        f.allocated.add_or_warn(&value, "framework allocated");
        let role = f.role;
        self.role_sub(role, &old);
        self.role_add(role, &value);
    }

    fn allocation(&self, agent: u32, framework: u32) -> Resources {
        self.agents
            .get(agent)
            .and_then(|a| a.allocations.iter().find(|(s, _)| *s == framework))
            .map_or(Resources::ZERO, |(_, r)| *r)
    }

    fn add_filter(&mut self, framework: u32, agent: u32, refuse_for: Duration, now: Instant) {
        if refuse_for.is_zero() {
            return;
        }
        if let Some(f) = self.frameworks.get_mut(framework) {
            f.filters.insert(agent, now.checked_add(refuse_for));
        }
    }
}

impl Allocator for HierarchicalDrf {
    fn add_agent(
        &mut self,
        id: AgentId,
        total: Resources,
        attributes: Attributes,
    ) -> Result<(), AllocatorError> {
        if self.agent_index.contains_key(&id) {
            return Err(AllocatorError::DuplicateAgent(id));
        }
        let slot = self.agents.insert(
            Agent {
                id: id.clone(),
                total,
                allocated: Resources::ZERO,
                offered: Resources::ZERO,
                allocations: Vec::new(),
                offers: Vec::new(),
                attributes,
            },
            "agents",
        )?;
        self.agent_index.insert(id, slot);
        self.total.add_or_warn(&total, "cluster total");
        Ok(())
    }

    fn update_agent_total(
        &mut self,
        id: &AgentId,
        total: Resources,
    ) -> Result<Vec<Offer>, AllocatorError> {
        let slot = self.agent_slot(id)?;
        let Some(agent) = self.agents.get_mut(slot) else {
            return Err(AllocatorError::UnknownAgent(id.clone()));
        };
        let old = std::mem::replace(&mut agent.total, total);
        let overcommitted = !agent.allocated.saturating_add(&agent.offered).fits(&total);
        let offers = if overcommitted {
            agent.offers.clone()
        } else {
            Vec::new()
        };
        self.total.sub_or_warn(&old, "cluster total");
        self.total.add_or_warn(&total, "cluster total");
        Ok(offers
            .into_iter()
            .filter_map(|o| self.withdraw_offer(o))
            .collect())
    }

    fn remove_agent(&mut self, id: &AgentId) -> Result<Vec<Offer>, AllocatorError> {
        let slot = self.agent_slot(id)?;
        let offer_ids = self
            .agents
            .get(slot)
            .map(|a| a.offers.clone())
            .unwrap_or_default();
        let rescinded: Vec<Offer> = offer_ids
            .into_iter()
            .filter_map(|o| self.withdraw_offer(o))
            .collect();
        let allocations = self
            .agents
            .get(slot)
            .map(|a| a.allocations.clone())
            .unwrap_or_default();
        for (framework, _) in allocations {
            self.set_allocation(slot, framework, Resources::ZERO);
        }
        for f in self.frameworks.iter_mut() {
            f.filters.remove(&slot);
        }
        if let Some(agent) = self.agents.remove(slot) {
            self.total.sub_or_warn(&agent.total, "cluster total");
        }
        self.agent_index.remove(id);
        Ok(rescinded)
    }

    fn update_agent_allocation(
        &mut self,
        agent: &AgentId,
        framework: &FrameworkId,
        allocated: Resources,
    ) -> Result<(), AllocatorError> {
        let (a, f) = self.slots(agent, framework)?;
        self.set_allocation(a, f, allocated);
        Ok(())
    }

    fn add_framework(
        &mut self,
        id: FrameworkId,
        role: &str,
        active: bool,
    ) -> Result<(), AllocatorError> {
        if self.framework_index.contains_key(&id) {
            return Err(AllocatorError::DuplicateFramework(id));
        }
        let role = self.role_slot(role);
        let slot = self.frameworks.insert(
            Framework {
                id: id.clone(),
                role,
                active,
                suppressed: false,
                allocated: Resources::ZERO,
                offered: Resources::ZERO,
                agents: BTreeSet::new(),
                offers: BTreeSet::new(),
                filters: HashMap::new(),
                last_offered: 0,
            },
            "frameworks",
        )?;
        self.framework_index.insert(id, slot);
        Ok(())
    }

    fn remove_framework(&mut self, id: &FrameworkId) -> Result<Vec<Offer>, AllocatorError> {
        let slot = self.framework_slot(id)?;
        let (offer_ids, agents): (Vec<OfferId>, Vec<u32>) = self
            .frameworks
            .get(slot)
            .map(|f| {
                (
                    f.offers.iter().copied().collect(),
                    f.agents.iter().copied().collect(),
                )
            })
            .unwrap_or_default();
        let withdrawn: Vec<Offer> = offer_ids
            .into_iter()
            .filter_map(|o| self.withdraw_offer(o))
            .collect();
        for agent in agents {
            self.set_allocation(agent, slot, Resources::ZERO);
        }
        self.frameworks.remove(slot);
        self.framework_index.remove(id);
        Ok(withdrawn)
    }

    fn activate_framework(&mut self, id: &FrameworkId) -> Result<(), AllocatorError> {
        self.framework_mut(id)?.active = true;
        Ok(())
    }

    fn deactivate_framework(&mut self, id: &FrameworkId) -> Result<(), AllocatorError> {
        self.framework_mut(id)?.active = false;
        Ok(())
    }

    fn suppress(&mut self, id: &FrameworkId) -> Result<(), AllocatorError> {
        self.framework_mut(id)?.suppressed = true;
        Ok(())
    }

    fn revive(&mut self, id: &FrameworkId) -> Result<(), AllocatorError> {
        let f = self.framework_mut(id)?;
        f.suppressed = false;
        f.filters.clear();
        Ok(())
    }

    fn decline_offer(
        &mut self,
        offer: OfferId,
        refuse_for: Duration,
        now: Instant,
    ) -> Result<(), AllocatorError> {
        let entry = *self
            .offers
            .get(&offer)
            .ok_or(AllocatorError::UnknownOffer(offer))?;
        self.withdraw_offer(offer);
        self.add_filter(entry.framework, entry.agent, refuse_for, now);
        Ok(())
    }

    fn decline_agent(
        &mut self,
        framework: &FrameworkId,
        agent: &AgentId,
        refuse_for: Duration,
        now: Instant,
    ) -> Result<(), AllocatorError> {
        let f = self.framework_slot(framework)?;
        let a = self.agent_slot(agent)?;
        self.add_filter(f, a, refuse_for, now);
        Ok(())
    }

    fn accept_offer(&mut self, offer: OfferId, used: Resources) -> Result<(), AllocatorError> {
        let entry = *self
            .offers
            .get(&offer)
            .ok_or(AllocatorError::UnknownOffer(offer))?;
        if !used.fits(&entry.resources) {
            return Err(AllocatorError::ExceedsOffer {
                offer,
                offered: entry.resources,
                used,
            });
        }
        self.withdraw_offer(offer);
        let current = self.allocation(entry.agent, entry.framework);
        self.set_allocation(entry.agent, entry.framework, current.saturating_add(&used));
        Ok(())
    }

    fn rescind_offer(&mut self, offer: OfferId) -> Result<Offer, AllocatorError> {
        self.withdraw_offer(offer)
            .ok_or(AllocatorError::UnknownOffer(offer))
    }

    fn recover_resources(
        &mut self,
        agent: &AgentId,
        framework: &FrameworkId,
        resources: Resources,
    ) -> Result<(), AllocatorError> {
        let (a, f) = self.slots(agent, framework)?;
        let current = self.allocation(a, f);
        if !resources.fits(&current) {
            tracing::warn!(
                %agent, %framework, allocated = %current, recovered = %resources,
                "recovering more than is allocated; saturating at zero"
            );
        }
        self.set_allocation(a, f, current.saturating_sub(&resources));
        Ok(())
    }

    fn set_weight(&mut self, role: &str, weight: f64) -> Result<(), AllocatorError> {
        if !weight.is_finite() || weight <= 0.0 {
            return Err(AllocatorError::InvalidWeight {
                role: role.to_owned(),
                weight,
            });
        }
        let slot = self.role_slot(role);
        if let Some(r) = self.roles.get_mut(slot as usize) {
            r.weight = weight;
        }
        Ok(())
    }

    fn allocate(&mut self, now: Instant) -> Vec<Offer> {
        let shares = Shares::new(&self.total);

        // Forget expired filters, so the per-agent check stays a miss in an empty map.
        for f in self.frameworks.iter_mut() {
            if !f.filters.is_empty() {
                f.filters
                    .retain(|_, until| until.is_none_or(|until| until > now));
            }
        }

        // The cycle's ordered sets: eligible frameworks per role, and the roles
        // that have any.
        let mut per_role: Vec<BTreeSet<Key>> = self.roles.iter().map(|_| BTreeSet::new()).collect();
        for (slot, f) in self.frameworks.iter() {
            if !f.eligible() {
                continue;
            }
            if let Some(set) = per_role.get_mut(f.role as usize) {
                set.insert(Key {
                    share: shares.dominant(&f.held()),
                    last_offered: f.last_offered,
                    name: f.id.0.clone(),
                    slot,
                });
            }
        }
        let mut role_order: BTreeSet<Key> = BTreeSet::new();
        for ((slot, role), set) in (0u32..).zip(&self.roles).zip(&per_role) {
            if !set.is_empty() {
                role_order.insert(Key {
                    share: shares.dominant(&role.held) / role.weight,
                    last_offered: role.last_offered,
                    name: role.name.clone(),
                    slot,
                });
            }
        }
        if role_order.is_empty() {
            return Vec::new();
        }

        let mut offers = Vec::new();
        for &a in self.agent_index.values() {
            let Some(agent) = self.agents.get_mut(a) else {
                continue;
            };
            let offerable = agent.offerable();
            if !self.config.allocatable(&offerable) {
                continue;
            }

            // The lowest (role, framework) not refusing this agent.
            let mut pick = None;
            'roles: for rk in &role_order {
                let Some(set) = per_role.get(rk.slot as usize) else {
                    continue;
                };
                for fk in set {
                    let refused = self
                        .frameworks
                        .get(fk.slot)
                        .is_none_or(|f| f.filtered(a, now));
                    if !refused {
                        pick = Some((rk.slot, fk.slot));
                        break 'roles;
                    }
                }
            }
            let Some((r, f)) = pick else {
                continue;
            };
            let (Some(fw), Some(role), Some(set)) = (
                self.frameworks.get_mut(f),
                self.roles.get_mut(r as usize),
                per_role.get_mut(r as usize),
            ) else {
                continue;
            };

            let id = OfferId(self.next_offer);
            self.next_offer = self.next_offer.wrapping_add(1);
            self.offers.insert(
                id,
                OfferEntry {
                    agent: a,
                    framework: f,
                    resources: offerable,
                },
            );
            agent.offered.add_or_warn(&offerable, "agent offered");
            agent.offers.push(id);
            offers.push(Offer {
                id,
                agent: agent.id.clone(),
                framework: fw.id.clone(),
                resources: offerable,
            });

            // Re-key the framework and its role with their new shares.
            let mut fkey = Key {
                share: shares.dominant(&fw.held()),
                last_offered: fw.last_offered,
                name: fw.id.0.clone(),
                slot: f,
            };
            set.remove(&fkey);
            fw.offered.add_or_warn(&offerable, "framework offered");
            fw.offers.insert(id);
            self.offers_made += 1;
            fw.last_offered = self.offers_made;
            fkey.share = shares.dominant(&fw.held());
            fkey.last_offered = fw.last_offered;
            set.insert(fkey);

            let mut rkey = Key {
                share: shares.dominant(&role.held) / role.weight,
                last_offered: role.last_offered,
                name: role.name.clone(),
                slot: r,
            };
            role_order.remove(&rkey);
            role.held.add_or_warn(&offerable, "role held");
            role.last_offered = self.offers_made;
            rkey.share = shares.dominant(&role.held) / role.weight;
            rkey.last_offered = role.last_offered;
            role_order.insert(rkey);
        }
        offers
    }
}
