//! Unit tests of the allocator's policy and bookkeeping.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const GIB: u64 = 1 << 30;

fn agent_res() -> Resources {
    Resources::new(4_000, 16 * GIB, 100 * GIB)
}

fn aid(i: usize) -> AgentId {
    AgentId::from(format!("agent-{i:03}"))
}

fn fid(s: &str) -> FrameworkId {
    FrameworkId::from(s)
}

/// An allocator with `n` identical agents.
fn cluster(n: usize) -> HierarchicalDrf {
    let mut a = HierarchicalDrf::default();
    for i in 0..n {
        a.add_agent(aid(i), agent_res(), Attributes::new()).unwrap();
    }
    a
}

/// [`cluster`] with one active framework in role `r`.
fn cluster_with_framework(n: usize, framework: &str) -> HierarchicalDrf {
    let mut a = cluster(n);
    a.add_framework(fid(framework), "r", true).unwrap();
    a
}

fn frameworks_of(offers: &[Offer]) -> Vec<&str> {
    offers.iter().map(|o| o.framework.as_str()).collect()
}

#[test]
fn drf_alternates_between_equal_frameworks() {
    let mut a = cluster_with_framework(10, "a");
    a.add_framework(fid("b"), "r", true).unwrap();
    let offers = a.allocate(Instant::now());
    assert_eq!(offers.len(), 10);
    // Ties go to the smaller id, then the shares leapfrog each other.
    assert_eq!(
        frameworks_of(&offers),
        ["a", "b", "a", "b", "a", "b", "a", "b", "a", "b"]
    );
    for o in &offers {
        assert_eq!(o.resources, agent_res());
    }
    let (sa, sb) = (
        a.framework_share(&fid("a")).unwrap(),
        a.framework_share(&fid("b")).unwrap(),
    );
    assert!((sa - 0.5).abs() < 1e-12 && (sb - 0.5).abs() < 1e-12);
}

#[test]
fn drf_shares_converge_when_one_framework_starts_ahead() {
    let mut a = cluster(10);
    a.add_framework(fid("a"), "r1", true).unwrap();
    a.add_framework(fid("b"), "r2", true).unwrap();
    // b already runs tasks worth two agents' memory (on agents 0 and 1).
    a.update_agent_allocation(&aid(0), &fid("b"), Resources::new(1_000, 16 * GIB, 0))
        .unwrap();
    a.update_agent_allocation(&aid(1), &fid("b"), Resources::new(1_000, 16 * GIB, 0))
        .unwrap();
    let offers = a.allocate(Instant::now());
    // Agents 0 and 1 still have 3 cpus free; all ten agents get offered.
    assert_eq!(offers.len(), 10);
    let held = |f: &str| a.framework_share(&fid(f)).unwrap();
    // a catches up first: it gets the first offers until it reaches b's share (0.2
    // each after two); at equal shares b, offered to less recently, goes next.
    assert_eq!(&frameworks_of(&offers)[..3], ["a", "a", "b"]);
    let diff = (held("a") - held("b")).abs();
    assert!(diff <= 0.1 + 1e-9, "shares {} vs {}", held("a"), held("b"));
}

#[test]
fn role_weights_scale_dominant_share() {
    let mut a = cluster(30);
    a.set_weight("heavy", 2.0).unwrap();
    a.add_framework(fid("h"), "heavy", true).unwrap();
    a.add_framework(fid("l"), "light", true).unwrap();
    let offers = a.allocate(Instant::now());
    assert_eq!(offers.len(), 30);
    let count = |f: &str| offers.iter().filter(|o| o.framework.as_str() == f).count();
    assert_eq!((count("h"), count("l")), (20, 10));
    let (h, l) = (
        a.role_share("heavy").unwrap(),
        a.role_share("light").unwrap(),
    );
    assert!((h / l - 2.0).abs() < 1e-9, "heavy {h} light {l}");
}

#[test]
fn frameworks_within_a_role_share_the_role() {
    // Role x has two frameworks, role y one: roles split evenly, x's frameworks
    // split x's half.
    let mut a = cluster(8);
    a.add_framework(fid("x1"), "x", true).unwrap();
    a.add_framework(fid("x2"), "x", true).unwrap();
    a.add_framework(fid("y1"), "y", true).unwrap();
    let offers = a.allocate(Instant::now());
    let count = |f: &str| offers.iter().filter(|o| o.framework.as_str() == f).count();
    assert_eq!((count("x1"), count("x2"), count("y1")), (2, 2, 4));
}

#[test]
fn declined_agent_is_filtered_for_the_refuse_duration() {
    let t0 = Instant::now();
    let mut a = cluster_with_framework(1, "f");
    let offers = a.allocate(t0);
    assert_eq!(offers.len(), 1);
    a.decline_offer(offers[0].id, Duration::from_secs(5), t0)
        .unwrap();
    assert_eq!(a.offerable(&aid(0)), Some(agent_res()));
    assert!(a.allocate(t0).is_empty());
    assert!(a.allocate(t0 + Duration::from_secs(4)).is_empty());
    let again = a.allocate(t0 + Duration::from_secs(6));
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].id, offers[0].id);
}

#[test]
fn declined_agent_goes_to_the_next_framework() {
    let t0 = Instant::now();
    let mut a = cluster_with_framework(1, "a");
    a.add_framework(fid("b"), "r", true).unwrap();
    let first = a.allocate(t0);
    assert_eq!(frameworks_of(&first), ["a"]);
    a.decline_offer(first[0].id, Duration::from_secs(5), t0)
        .unwrap();
    assert_eq!(frameworks_of(&a.allocate(t0)), ["b"]);
}

#[test]
fn equal_shares_take_turns_when_offers_come_back_unfiltered() {
    // "a" lets its offers go (rescinded at the offer timeout, or declined with no
    // filter): "b", equal in share, must get the agent next, and so on in turn.
    let t0 = Instant::now();
    let mut a = cluster_with_framework(1, "a");
    a.add_framework(fid("b"), "r", true).unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let offers = a.allocate(t0);
        assert_eq!(offers.len(), 1);
        got.push(offers[0].framework.as_str().to_owned());
        a.rescind_offer(offers[0].id).unwrap();
    }
    assert_eq!(got, ["a", "b", "a", "b"]);

    // The same between two roles of equal share.
    let mut a = cluster(1);
    a.add_framework(fid("x1"), "x", true).unwrap();
    a.add_framework(fid("y1"), "y", true).unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let offers = a.allocate(t0);
        got.push(offers[0].framework.as_str().to_owned());
        a.decline_offer(offers[0].id, Duration::ZERO, t0).unwrap();
    }
    assert_eq!(got, ["x1", "y1", "x1", "y1"]);

    // A framework that comes late gets one turn, not as many as the others had.
    let mut a = cluster_with_framework(1, "a");
    for _ in 0..5 {
        let offers = a.allocate(t0);
        a.rescind_offer(offers[0].id).unwrap();
    }
    a.add_framework(fid("b"), "r", true).unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let offers = a.allocate(t0);
        got.push(offers[0].framework.as_str().to_owned());
        a.rescind_offer(offers[0].id).unwrap();
    }
    assert_eq!(got, ["b", "a", "b", "a"]);
}

#[test]
fn decline_agent_without_offer_and_revive_clears_filters() {
    let t0 = Instant::now();
    let mut a = cluster_with_framework(2, "f");
    a.decline_agent(&fid("f"), &aid(0), Duration::from_secs(60), t0)
        .unwrap();
    let offers = a.allocate(t0);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].agent, aid(1));
    a.revive(&fid("f")).unwrap();
    let offers = a.allocate(t0);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].agent, aid(0));
}

#[test]
fn suppressed_framework_gets_no_offers_until_revived() {
    let t0 = Instant::now();
    let mut a = cluster_with_framework(4, "a");
    a.add_framework(fid("b"), "r", true).unwrap();
    a.suppress(&fid("a")).unwrap();
    let offers = a.allocate(t0);
    assert_eq!(frameworks_of(&offers), ["b", "b", "b", "b"]);
    for o in offers {
        a.rescind_offer(o.id).unwrap();
    }
    a.suppress(&fid("b")).unwrap();
    assert!(a.allocate(t0).is_empty());
    a.revive(&fid("a")).unwrap();
    assert_eq!(frameworks_of(&a.allocate(t0)), ["a", "a", "a", "a"]);
}

#[test]
fn inactive_framework_gets_no_offers() {
    let t0 = Instant::now();
    let mut a = cluster(2);
    a.add_framework(fid("f"), "r", false).unwrap();
    assert!(a.allocate(t0).is_empty());
    a.activate_framework(&fid("f")).unwrap();
    let offers = a.allocate(t0);
    assert_eq!(offers.len(), 2);
    for o in offers {
        a.rescind_offer(o.id).unwrap();
    }
    a.deactivate_framework(&fid("f")).unwrap();
    assert!(a.allocate(t0).is_empty());
}

#[test]
fn remove_agent_returns_offers_to_rescind() {
    let t0 = Instant::now();
    let mut a = cluster_with_framework(3, "a");
    a.add_framework(fid("b"), "r", true).unwrap();
    a.update_agent_allocation(&aid(1), &fid("b"), Resources::new(1_000, GIB, 0))
        .unwrap();
    let offers = a.allocate(t0);
    assert_eq!(offers.len(), 3);
    let on_1: Vec<&Offer> = offers.iter().filter(|o| o.agent == aid(1)).collect();
    let rescinded = a.remove_agent(&aid(1)).unwrap();
    assert_eq!(rescinded.len(), 1);
    assert_eq!(&rescinded[0], on_1[0]);
    assert_eq!(a.outstanding_offers(), 2);
    assert_eq!(a.agent_count(), 2);
    assert_eq!(
        a.total(),
        Resources::new(8_000, 32 * GIB, 200 * GIB),
        "cluster total shrinks"
    );
    // The rescinded offer and b's tasks on agent 1 are gone from the books.
    assert_eq!(
        a.rescind_offer(on_1[0].id),
        Err(AllocatorError::UnknownOffer(on_1[0].id))
    );
    let held: Resources = offers
        .iter()
        .filter(|o| o.agent != aid(1))
        .fold(Resources::ZERO, |acc, o| acc.saturating_add(&o.resources));
    let sum = a
        .framework_held(&fid("a"))
        .unwrap()
        .saturating_add(&a.framework_held(&fid("b")).unwrap());
    assert_eq!(sum, held);
    assert_eq!(
        a.remove_agent(&aid(1)),
        Err(AllocatorError::UnknownAgent(aid(1)))
    );
}

#[test]
fn recovered_resources_become_offerable_again() {
    let t0 = Instant::now();
    let mut a = cluster_with_framework(1, "f");
    let offer = a.allocate(t0).remove(0);
    // The framework launches a task with everything.
    a.accept_offer(offer.id, agent_res()).unwrap();
    assert_eq!(a.offerable(&aid(0)), Some(Resources::ZERO));
    assert!(a.allocate(t0).is_empty());
    // The task finishes, half of it is recovered.
    let half = Resources::new(2_000, 8 * GIB, 50 * GIB);
    a.recover_resources(&aid(0), &fid("f"), half).unwrap();
    let offers = a.allocate(t0);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].resources, half);
    // Recovering more than allocated saturates instead of underflowing.
    a.recover_resources(&aid(0), &fid("f"), agent_res())
        .unwrap();
    assert_eq!(a.framework_held(&fid("f")), Some(half));
}

#[test]
fn partially_accepted_offer_returns_the_rest() {
    let t0 = Instant::now();
    let mut a = cluster_with_framework(1, "f");
    let offer = a.allocate(t0).remove(0);
    let used = Resources::new(1_000, GIB, GIB);
    a.accept_offer(offer.id, used).unwrap();
    assert_eq!(a.offerable(&aid(0)), agent_res().checked_sub(&used).ok());
    assert_eq!(a.framework_held(&fid("f")), Some(used));
    let too_much = agent_res();
    let next = a.allocate(t0).remove(0);
    assert!(matches!(
        a.accept_offer(next.id, too_much),
        Err(AllocatorError::ExceedsOffer { .. })
    ));
    // The failed accept changed nothing: the offer is still outstanding.
    assert_eq!(a.outstanding_offers(), 1);
}

#[test]
fn outstanding_offers_count_as_allocated() {
    let t0 = Instant::now();
    let mut a = cluster_with_framework(2, "f");
    assert_eq!(a.allocate(t0).len(), 2);
    // Nothing left to offer while the offers are outstanding.
    assert!(a.allocate(t0).is_empty());
    assert!((a.framework_share(&fid("f")).unwrap() - 1.0).abs() < 1e-12);
}

#[test]
fn offer_ids_are_unique() {
    let t0 = Instant::now();
    let mut a = cluster_with_framework(5, "f");
    let mut seen = HashSet::new();
    for _ in 0..4 {
        for o in a.allocate(t0) {
            assert!(seen.insert(o.id));
            a.rescind_offer(o.id).unwrap();
        }
    }
    assert_eq!(seen.len(), 20);
}

#[test]
fn remove_framework_releases_everything() {
    let t0 = Instant::now();
    let mut a = cluster_with_framework(2, "f");
    a.update_agent_allocation(&aid(0), &fid("f"), Resources::new(1_000, GIB, 0))
        .unwrap();
    let offers = a.allocate(t0);
    assert_eq!(offers.len(), 2);
    let withdrawn = a.remove_framework(&fid("f")).unwrap();
    assert_eq!(withdrawn.len(), 2);
    assert_eq!(a.outstanding_offers(), 0);
    assert_eq!(a.offerable(&aid(0)), Some(agent_res()));
    assert_eq!(a.role_share("r"), Some(0.0));
    a.add_framework(fid("g"), "r", true).unwrap();
    assert_eq!(a.allocate(t0).len(), 2);
}

#[test]
fn shrinking_an_agent_rescinds_its_offers() {
    let t0 = Instant::now();
    let mut a = cluster_with_framework(1, "f");
    assert_eq!(a.allocate(t0).len(), 1);
    let small = Resources::new(1_000, GIB, GIB);
    let rescinded = a.update_agent_total(&aid(0), small).unwrap();
    assert_eq!(rescinded.len(), 1);
    assert_eq!(a.total(), small);
    assert_eq!(a.allocate(t0)[0].resources, small);
}

#[test]
fn crumbs_are_not_offered() {
    let mut a = HierarchicalDrf::default();
    a.add_agent(aid(0), Resources::new(5, 1 << 20, 0), Attributes::new())
        .unwrap();
    a.add_framework(fid("f"), "r", true).unwrap();
    assert!(a.allocate(Instant::now()).is_empty());
}

#[test]
fn errors_do_not_panic() {
    let t0 = Instant::now();
    let mut a = cluster_with_framework(1, "f");
    assert!(matches!(
        a.add_agent(aid(0), agent_res(), Attributes::new()),
        Err(AllocatorError::DuplicateAgent(_))
    ));
    assert!(matches!(
        a.add_framework(fid("f"), "r", true),
        Err(AllocatorError::DuplicateFramework(_))
    ));
    let ghost = fid("ghost");
    assert!(a.suppress(&ghost).is_err());
    assert!(a.revive(&ghost).is_err());
    assert!(a.remove_framework(&ghost).is_err());
    assert!(a.recover_resources(&aid(0), &ghost, agent_res()).is_err());
    assert!(
        a.recover_resources(&aid(9), &fid("f"), agent_res())
            .is_err()
    );
    assert!(a.decline_offer(OfferId(999), Duration::ZERO, t0).is_err());
    assert!(a.accept_offer(OfferId(999), Resources::ZERO).is_err());
    for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            a.set_weight("r", w),
            Err(AllocatorError::InvalidWeight { .. })
        ));
    }
    // Over-committing an agent is logged, offerable saturates at zero.
    a.update_agent_allocation(
        &aid(0),
        &fid("f"),
        Resources::new(u64::MAX, u64::MAX, u64::MAX),
    )
    .unwrap();
    assert_eq!(a.offerable(&aid(0)), Some(Resources::ZERO));
    assert!(a.allocate(t0).is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    AddAgent(u8, u64, u64),
    RemoveAgent(u8),
    AddFramework(u8, u8),
    RemoveFramework(u8),
    Suppress(u8),
    Revive(u8),
    Allocation(u8, u8, u64, u64),
    Recover(u8, u8, u64, u64),
    Allocate,
    AcceptFirst(u64),
    DeclineFirst(u64),
    RescindFirst,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, any::<u64>(), any::<u64>()).prop_map(|(a, c, m)| Op::AddAgent(a, c, m)),
        (0u8..6).prop_map(Op::RemoveAgent),
        (0u8..5, 0u8..3).prop_map(|(f, r)| Op::AddFramework(f, r)),
        (0u8..5).prop_map(Op::RemoveFramework),
        (0u8..5).prop_map(Op::Suppress),
        (0u8..5).prop_map(Op::Revive),
        (0u8..6, 0u8..5, any::<u64>(), any::<u64>())
            .prop_map(|(a, f, c, m)| Op::Allocation(a, f, c, m)),
        (0u8..6, 0u8..5, any::<u64>(), any::<u64>())
            .prop_map(|(a, f, c, m)| Op::Recover(a, f, c, m)),
        Just(Op::Allocate),
        Just(Op::Allocate),
        any::<u64>().prop_map(Op::AcceptFirst),
        (0u64..10).prop_map(Op::DeclineFirst),
        Just(Op::RescindFirst),
    ]
}

proptest! {
    /// Any sequence of operations, with arbitrary (even absurd) amounts, neither
    /// panics nor breaks the books: every agent's offers sum to what it has
    /// offered, and offers never exceed what the agent had free.
    #[test]
    fn random_operations_keep_books_consistent(ops in proptest::collection::vec(op(), 1..60)) {
        let t0 = Instant::now();
        let mut a = HierarchicalDrf::default();
        let mut outstanding: BTreeMap<OfferId, Offer> = BTreeMap::new();
        let ag = |i: u8| AgentId::from(format!("a{i}"));
        let fw = |i: u8| FrameworkId::from(format!("f{i}"));
        for (step, op) in ops.into_iter().enumerate() {
            let now = t0 + Duration::from_secs(step as u64);
            match op {
                Op::AddAgent(i, c, m) => { let _ = a.add_agent(ag(i), Resources::new(c, m, 0), Attributes::new()); }
                Op::RemoveAgent(i) => {
                    if let Ok(gone) = a.remove_agent(&ag(i)) {
                        for o in gone { prop_assert!(outstanding.remove(&o.id).is_some()); }
                    }
                }
                Op::AddFramework(f, r) => { let _ = a.add_framework(fw(f), &format!("r{r}"), true); }
                Op::RemoveFramework(f) => {
                    if let Ok(gone) = a.remove_framework(&fw(f)) {
                        for o in gone { prop_assert!(outstanding.remove(&o.id).is_some()); }
                    }
                }
                Op::Suppress(f) => { let _ = a.suppress(&fw(f)); }
                Op::Revive(f) => { let _ = a.revive(&fw(f)); }
                Op::Allocation(i, f, c, m) => { let _ = a.update_agent_allocation(&ag(i), &fw(f), Resources::new(c, m, 0)); }
                Op::Recover(i, f, c, m) => { let _ = a.recover_resources(&ag(i), &fw(f), Resources::new(c, m, 0)); }
                Op::Allocate => {
                    for o in a.allocate(now) {
                        prop_assert!(!o.resources.is_empty());
                        prop_assert!(outstanding.insert(o.id, o).is_none());
                    }
                }
                Op::AcceptFirst(c) => {
                    if let Some((&id, o)) = outstanding.iter().next() {
                        let used = Resources::new(c % (o.resources.cpus_milli + 1), o.resources.mem_bytes / 2, 0);
                        a.accept_offer(id, used).unwrap();
                        outstanding.remove(&id);
                    }
                }
                Op::DeclineFirst(s) => {
                    if let Some(&id) = outstanding.keys().next() {
                        a.decline_offer(id, Duration::from_secs(s), now).unwrap();
                        outstanding.remove(&id);
                    }
                }
                Op::RescindFirst => {
                    if let Some(&id) = outstanding.keys().next() {
                        prop_assert_eq!(a.rescind_offer(id).unwrap().id, id);
                        outstanding.remove(&id);
                    }
                }
            }
            prop_assert_eq!(a.outstanding_offers(), outstanding.len());
            for (agent, offered) in a.agents_offered() {
                let sum = outstanding
                    .values()
                    .filter(|o| o.agent == agent)
                    .fold(Resources::ZERO, |acc, o| acc.saturating_add(&o.resources));
                prop_assert_eq!(sum, offered, "agent {}", agent);
            }
        }
    }
}
