//! The allocator's books: slots with stable handles, and the entries of agents,
//! frameworks, roles and outstanding offers; dominant shares and the sort key of DRF.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::allocator::{AgentId, AllocatorError, Attributes, FrameworkId, OfferId, Resources};

/// A vector of slots with a free list: stable `u32` handles, O(1) access.
#[derive(Debug)]
pub(super) struct Slots<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Slots<T> {
    pub(super) fn new() -> Self {
        Slots {
            items: Vec::new(),
            free: Vec::new(),
        }
    }

    pub(super) fn insert(&mut self, item: T, what: &'static str) -> Result<u32, AllocatorError> {
        if let Some(slot) = self.free.pop() {
            if let Some(place) = self.items.get_mut(slot as usize) {
                *place = Some(item);
                return Ok(slot);
            }
        }
        let slot = u32::try_from(self.items.len()).map_err(|_| AllocatorError::Capacity(what))?;
        self.items.push(Some(item));
        Ok(slot)
    }

    pub(super) fn remove(&mut self, slot: u32) -> Option<T> {
        let item = self.items.get_mut(slot as usize)?.take();
        if item.is_some() {
            self.free.push(slot);
        }
        item
    }

    pub(super) fn get(&self, slot: u32) -> Option<&T> {
        self.items.get(slot as usize)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.items.get_mut(slot as usize)?.as_mut()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        // Slots are created from `u32::try_from(len)`, so every index fits.
        (0u32..)
            .zip(self.items.iter())
            .filter_map(|(i, item)| item.as_ref().map(|t| (i, t)))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.items.iter_mut().filter_map(Option::as_mut)
    }
}

#[derive(Debug)]
pub(super) struct Agent {
    pub(super) id: AgentId,
    pub(super) total: Resources,
    /// Sum of `allocations`.
    pub(super) allocated: Resources,
    /// Sum of the outstanding offers on this agent.
    pub(super) offered: Resources,
    /// Per framework slot: what it has allocated (running tasks) here.
    pub(super) allocations: Vec<(u32, Resources)>,
    pub(super) offers: Vec<OfferId>,
    #[allow(dead_code)] // kept for placement constraints
    pub(super) attributes: Attributes,
}

impl Agent {
    pub(super) fn offerable(&self) -> Resources {
        self.total
            .saturating_sub(&self.allocated)
            .saturating_sub(&self.offered)
    }
}

/// `None` = refused until the framework revives.
pub(super) type FilterExpiry = Option<Instant>;

#[derive(Debug)]
pub(super) struct Framework {
    pub(super) id: FrameworkId,
    pub(super) role: u32,
    pub(super) active: bool,
    pub(super) suppressed: bool,
    /// Allocated by tasks, over all agents.
    pub(super) allocated: Resources,
    /// In outstanding offers, over all agents.
    pub(super) offered: Resources,
    /// Agent slots where this framework has an allocation entry.
    pub(super) agents: BTreeSet<u32>,
    pub(super) offers: BTreeSet<OfferId>,
    /// Agent slot → refusal expiry.
    pub(super) filters: HashMap<u32, FilterExpiry>,
    /// When it last received an offer (the allocator's count of offers made then;
    /// 0: never): breaks ties between equal shares (see [`Key`]).
    pub(super) last_offered: u64,
}

impl Framework {
    pub(super) fn held(&self) -> Resources {
        self.allocated.saturating_add(&self.offered)
    }

    pub(super) fn eligible(&self) -> bool {
        self.active && !self.suppressed
    }

    /// True if offers from `agent` are refused at `now`.
    pub(super) fn filtered(&self, agent: u32, now: Instant) -> bool {
        if self.filters.is_empty() {
            return false;
        }
        match self.filters.get(&agent) {
            None => false,
            Some(None) => true,
            Some(Some(until)) => *until > now,
        }
    }
}

#[derive(Debug)]
pub(super) struct Role {
    pub(super) name: Arc<str>,
    pub(super) weight: f64,
    /// Allocated + offered over all frameworks of the role.
    pub(super) held: Resources,
    /// When one of its frameworks last received an offer (as for a framework):
    /// breaks ties between equal shares.
    pub(super) last_offered: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct OfferEntry {
    pub(super) agent: u32,
    pub(super) framework: u32,
    pub(super) resources: Resources,
}

/// Reciprocals of the cluster totals: a dominant share is three multiplications.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shares {
    pub(super) cpus: f64,
    pub(super) mem: f64,
    pub(super) disk: f64,
}

impl Shares {
    pub(super) fn new(total: &Resources) -> Self {
        let recip = |x: u64| if x == 0 { 0.0 } else { 1.0 / x as f64 };
        Shares {
            cpus: recip(total.cpus_milli),
            mem: recip(total.mem_bytes),
            disk: recip(total.disk_bytes),
        }
    }

    pub(super) fn dominant(&self, r: &Resources) -> f64 {
        (r.cpus_milli as f64 * self.cpus)
            .max(r.mem_bytes as f64 * self.mem)
            .max(r.disk_bytes as f64 * self.disk)
    }
}

/// A sort key: (share, last offered, name, slot). Totally ordered
/// (`f64::total_cmp`). Between equal shares the one offered to least recently goes
/// first: otherwise a framework that lets its offers time out or declines them
/// without a filter would get every offer back before an equal one with a larger
/// name, for ever; and unlike a count of offers received, a newcomer (or a new
/// role) gets one turn, not as many as the others have had. The name makes the
/// remaining ties deterministic and the slot finds the entry again without a lookup.
#[derive(Debug, Clone)]
pub(super) struct Key {
    pub(super) share: f64,
    pub(super) last_offered: u64,
    pub(super) name: Arc<str>,
    pub(super) slot: u32,
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.share
            .total_cmp(&other.share)
            .then(self.last_offered.cmp(&other.last_offered))
            .then_with(|| self.name.cmp(&other.name))
            .then(self.slot.cmp(&other.slot))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Key {}
