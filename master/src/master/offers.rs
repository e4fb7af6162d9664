//! Offers: allocation rounds, ACCEPT (which launches tasks) and DECLINE, and offers
//! that are rescinded or expire.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cella_proto::v1::{self, call, event};

use super::{Master, error_event};
use crate::allocator::{AgentId, Allocator, FrameworkId, OfferId, Resources};
use crate::state::{OutstandingOffer, to_wire};

/// The longest refusal a scheduler may ask for (a year).
const MAX_REFUSE_SECS: f64 = 31_536_000.0;

/// An offer named by an ACCEPT: its id, its agent and what it holds.
type AcceptedOffer = (OfferId, AgentId, Resources);

/// Offer ids travel as `offer-N`.
fn offer_id_from_wire(s: &str) -> Option<OfferId> {
    s.strip_prefix("offer-")?.parse().ok().map(OfferId)
}

/// The refusal a scheduler asked for, or `default` when it named none (or nonsense).
fn refuse(secs: Option<f64>, default: Duration) -> Duration {
    secs.filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_REFUSE_SECS)))
        .unwrap_or(default)
}

impl Master {
    /// One allocation round: offers go to their frameworks; those that cannot be
    /// delivered go back to the allocator.
    pub(super) fn allocate(&mut self) {
        let started = Instant::now();
        let offers = self.allocator.allocate(started);
        self.metrics
            .allocation_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut by_framework: BTreeMap<FrameworkId, Vec<v1::Offer>> = BTreeMap::new();
        // Offer ids are never reused, not even across restarts.
        if let Some(max) = offers.iter().map(|o| o.id.0).max() {
            self.registry.offer_ids_used_before(max.saturating_add(1));
        }
        for offer in offers {
            let Some(agent) = self.agents.get(&offer.agent) else {
                let _ = self.allocator.rescind_offer(offer.id);
                continue;
            };
            self.offers.insert(
                offer.id,
                OutstandingOffer {
                    framework: offer.framework.clone(),
                    agent: offer.agent.clone(),
                    resources: offer.resources,
                    expires: started + self.config.offer_timeout,
                },
            );
            self.metrics.offers_sent.inc();
            by_framework
                .entry(offer.framework.clone())
                .or_default()
                .push(v1::Offer {
                    offer_id: offer.id.to_string(),
                    agent_id: offer.agent.to_string(),
                    hostname: agent.hostname.clone(),
                    resources: Some(to_wire(&offer.resources)),
                    attributes: v1::Attribute::list(agent.attributes.clone()),
                });
        }
        for (framework, offers) in by_framework {
            let ids: Vec<OfferId> = offers
                .iter()
                .filter_map(|o| offer_id_from_wire(&o.offer_id))
                .collect();
            if !self.send_to_framework(
                &framework,
                v1::Event {
                    event: Some(event::Event::Offers(event::Offers { offers })),
                },
            ) {
                for id in ids {
                    let _ = self.allocator.rescind_offer(id);
                    self.offers.remove(&id);
                }
            }
        }
    }

    pub(super) fn expire_offers(&mut self, now: Instant) {
        let expired: Vec<OfferId> = self
            .offers
            .iter()
            .filter(|(_, o)| now >= o.expires)
            .map(|(k, _)| *k)
            .collect();
        for offer in expired {
            let _ = self.allocator.rescind_offer(offer);
            self.forget_offer(offer, true);
            self.allocation_wanted = true;
        }
    }

    /// Rescinds every outstanding offer `which` selects, telling the frameworks when
    /// asked.
    pub(super) fn rescind_offers(&mut self, which: impl Fn(&OutstandingOffer) -> bool, tell: bool) {
        let offers: Vec<OfferId> = self
            .offers
            .iter()
            .filter(|(_, o)| which(o))
            .map(|(k, _)| *k)
            .collect();
        for offer in offers {
            let _ = self.allocator.rescind_offer(offer);
            self.forget_offer(offer, tell);
        }
    }

    /// Drops the master's record of an offer, telling its framework when asked.
    pub(super) fn forget_offer(&mut self, offer: OfferId, tell: bool) {
        if let Some(o) = self.offers.remove(&offer) {
            if tell {
                self.metrics.offers_rescinded.inc();
                self.send_to_framework(
                    &o.framework,
                    v1::Event {
                        event: Some(event::Event::Rescind(event::Rescind {
                            offer_id: offer.to_string(),
                        })),
                    },
                );
            }
        }
    }

    pub(super) fn decline(&mut self, id: &FrameworkId, decline: &call::Decline, now: Instant) {
        let refuse_for = refuse(decline.refuse_seconds, self.config.default_refuse);
        for offer_id in &decline.offer_ids {
            match offer_id_from_wire(offer_id)
                .filter(|o| self.offers.get(o).is_some_and(|o| &o.framework == id))
            {
                Some(offer) => {
                    self.offers.remove(&offer);
                    let _ = self.allocator.decline_offer(offer, refuse_for, now);
                }
                None => {
                    self.send_to_framework(
                        id,
                        error_event(&format!("DECLINE: unknown offer {offer_id:?}")),
                    );
                }
            }
        }
        self.allocation_wanted = true;
    }

    /// ACCEPT: each task is checked on its own, then all of them against the
    /// offers; valid tasks that fit are launched, the others get `ERROR` /
    /// `INVALID_TASK`. What the tasks do not use is refused for `refuse_seconds`.
    pub(super) fn accept(&mut self, framework: &FrameworkId, accept: call::Accept, now: Instant) {
        let refuse_for = refuse(accept.refuse_seconds, self.config.default_refuse);
        let (offers, mut problem) = self.accepted_offers(framework, &accept.offer_ids);
        let agent = offers.first().map(|(_, a, _)| a.clone());
        if problem.is_none() && offers.iter().any(|(_, a, _)| Some(a) != agent.as_ref()) {
            problem = Some("the offers of one ACCEPT must come from the same agent".to_string());
        }
        let offered = offers
            .iter()
            .fold(Resources::default(), |acc, (_, _, r)| acc.saturating_add(r));

        let mut seen = BTreeSet::new();
        let mut checked: Vec<(v1::TaskInfo, Result<Resources, String>)> = Vec::new();
        let mut disk_defaulted = BTreeSet::new();
        for mut task in accept.tasks {
            if self.config.task_defaults.apply(&mut task) {
                disk_defaulted.insert(task.task_id.clone());
            }
            let verdict = problem.clone().map_or_else(
                || self.check_task(framework, agent.as_ref(), &task, &mut seen),
                Err,
            );
            checked.push((task, verdict));
        }
        // Tasks take their resources from the offers in order; one that does not fit
        // in what is left is refused, naming what it lacks.
        let mut left = offered;
        let mut needed = Resources::default();
        for (task, verdict) in &mut checked {
            if let Ok(wants) = verdict {
                if wants.fits(&left) {
                    left = left.saturating_sub(wants);
                    needed = needed.saturating_add(wants);
                } else {
                    let mut why = shortfall(&task.task_id, wants, &left, &offered);
                    if disk_defaulted.contains(&task.task_id) && wants.disk_bytes > left.disk_bytes
                    {
                        why.push_str(
                            " (the task names no disk: it gets the cluster's default, \
                             the master's --default-task-disk; name resources.disk_bytes to ask for less)",
                        );
                    }
                    *verdict = Err(why);
                }
            }
        }

        // Give the offers back to the allocator: what the tasks use becomes the
        // framework's allocation, the rest is refused for `refuse_for` (nothing is
        // refused when no task could be launched).
        let mut remaining = needed;
        for (offer, _, resources) in &offers {
            if needed.is_empty() {
                let _ = self.allocator.decline_offer(*offer, Duration::ZERO, now);
            } else {
                let used = remaining.min(resources);
                remaining = remaining.saturating_sub(&used);
                let _ = self.allocator.accept_offer(*offer, used);
                if let Some(agent) = &agent {
                    if !resources.saturating_sub(&used).is_empty() && !refuse_for.is_zero() {
                        let _ = self
                            .allocator
                            .decline_agent(framework, agent, refuse_for, now);
                    }
                }
            }
            self.offers.remove(offer);
        }

        for (task, verdict) in checked {
            match (verdict, &agent) {
                (Ok(resources), Some(agent)) => self.launch(framework, agent, task, resources),
                (Ok(_), None) => self.refuse_task(framework, None, &task, "no agent to launch on"),
                (Err(why), agent) => self.refuse_task(framework, agent.as_ref(), &task, &why),
            }
        }
        self.allocation_wanted = true;
    }

    /// The offers an ACCEPT names (outstanding and this framework's), and what is
    /// wrong with them, if anything.
    fn accepted_offers(
        &self,
        framework: &FrameworkId,
        offer_ids: &[String],
    ) -> (Vec<AcceptedOffer>, Option<String>) {
        let mut offers = Vec::new();
        let mut problem = None;
        for raw in offer_ids {
            match offer_id_from_wire(raw).and_then(|o| self.offers.get(&o).map(|x| (o, x))) {
                Some((o, x)) if &x.framework == framework => {
                    offers.push((o, x.agent.clone(), x.resources))
                }
                _ => {
                    problem = Some(format!(
                        "offer {raw:?} is not outstanding for this framework (expired, rescinded, declined or \
                         already used): wait for a new offer"
                    ));
                }
            }
        }
        if offers.is_empty() && problem.is_none() {
            problem = Some("ACCEPT names no offer".to_string());
        }
        (offers, problem)
    }
}

/// Why a task does not fit in what is `left` of the offers: each resource it needs
/// more of, with units.
fn shortfall(task_id: &str, wants: &Resources, left: &Resources, offered: &Resources) -> String {
    let mut short = Vec::new();
    if wants.cpus_milli > left.cpus_milli {
        short.push(format!(
            "{} cpus (the offers have {} left of {})",
            wants.cpus(),
            left.cpus(),
            offered.cpus()
        ));
    }
    if wants.mem_bytes > left.mem_bytes {
        short.push(format!(
            "{} of memory (the offers have {} left of {})",
            bytes(wants.mem_bytes),
            bytes(left.mem_bytes),
            bytes(offered.mem_bytes)
        ));
    }
    if wants.disk_bytes > left.disk_bytes {
        short.push(format!(
            "{} of disk (the offers have {} left of {})",
            bytes(wants.disk_bytes),
            bytes(left.disk_bytes),
            bytes(offered.disk_bytes)
        ));
    }
    format!(
        "task {task_id:?} does not fit in the offers: it needs {}; ask for less, or accept \
         offers (of one agent) that hold more",
        short.join(" and ")
    )
}

/// A size for people: in the largest binary unit that keeps it readable, with the
/// exact byte count when that unit rounds it.
fn bytes(n: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if n >= 1 << shift {
            let value = n as f64 / f64::from(1u32 << (shift - 10)) / 1024.0;
            return if n % (1 << shift) == 0 {
                format!("{} {unit}", n >> shift)
            } else {
                format!("{value:.1} {unit} ({n} bytes)")
            };
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_printed_with_units() {
        assert_eq!(bytes(0), "0 bytes");
        assert_eq!(bytes(512), "512 bytes");
        assert_eq!(bytes(64 << 20), "64 MiB");
        assert_eq!(bytes(3 << 30), "3 GiB");
        assert_eq!(bytes((1 << 30) + (512 << 20)), "1.5 GiB (1610612736 bytes)");
    }
}
