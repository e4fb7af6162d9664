//! Allocator benchmark: time of ONE full allocation cycle of [`HierarchicalDrf`]
//! on large clusters (10,000 agents / 1,000 frameworks and 20,000 agents / 2,000
//! frameworks, 100 roles), plus the memory the allocator holds per agent and per
//! framework.
//!
//! Run: `cargo bench -p cella-master --bench allocator` (release profile).
//! A plain `main` (harness = false): no benchmark framework needed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cella_master::allocator::{
    AgentId, Allocator, Attributes, FrameworkId, HierarchicalDrf, Offer, Resources,
};

/// Counts live heap bytes, to estimate the allocator's memory per agent/framework.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged,
// so `System`'s guarantees carry over; the counter has no effect on the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through `alloc`/`realloc` above)
        // with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract; `ptr` came
        // from `System` via this allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const GIB: u64 = 1 << 30;
const ROLES: usize = 100;
const CYCLES: usize = 15;

struct Report {
    agents: usize,
    frameworks: usize,
    cycles: Vec<Duration>,
    offers_per_cycle: usize,
    bytes_per_agent: f64,
    bytes_per_framework: f64,
    bytes_per_offer: f64,
}

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn bench(agents: usize, frameworks: usize) -> Report {
    let mut alloc = HierarchicalDrf::default();
    let agent_total = Resources::new(32_000, 256 * GIB, 1024 * GIB);

    let before = live();
    let agent_ids: Vec<AgentId> = (0..agents)
        .map(|i| AgentId::from(format!("agent-{i:06}")))
        .collect();
    for id in &agent_ids {
        alloc
            .add_agent(id.clone(), agent_total, Attributes::new())
            .expect("add agent");
    }
    let after_agents = live();

    let framework_ids: Vec<FrameworkId> = (0..frameworks)
        .map(|i| FrameworkId::from(format!("framework-{i:05}")))
        .collect();
    for (i, id) in framework_ids.iter().enumerate() {
        alloc
            .add_framework(id.clone(), &format!("role-{:03}", i % ROLES), true)
            .expect("add framework");
    }
    // A few heavier roles, so weighted shares are exercised too.
    for r in (0..ROLES).step_by(10) {
        alloc
            .set_weight(&format!("role-{r:03}"), 2.0)
            .expect("set weight");
    }
    let after_frameworks = live();

    // Every framework already runs tasks: agent j holds one task of framework
    // j % F, 1–8 cpus, 4–64 GiB, 10 GiB disk, so shares differ and every agent
    // still has offerable resources.
    for (j, agent) in agent_ids.iter().enumerate() {
        let f = &framework_ids[j % frameworks];
        let k = j as u64;
        let task = Resources::new(1_000 * (1 + k % 8), 4 * GIB * (1 + k % 16), 10 * GIB);
        alloc
            .update_agent_allocation(agent, f, task)
            .expect("allocation");
    }
    let after_tasks = live();

    let mut cycles = Vec::with_capacity(CYCLES);
    let mut offers_per_cycle = 0;
    let mut bytes_per_offer = 0.0;
    // One warm-up cycle, then CYCLES timed ones; between cycles (untimed) every
    // offer is rescinded so the next cycle has the whole cluster to offer again.
    for c in 0..=CYCLES {
        let live_before = live();
        let start = Instant::now();
        let offers = alloc.allocate(Instant::now());
        let elapsed = start.elapsed();
        offers_per_cycle = offers.len();
        if c > 0 {
            cycles.push(elapsed);
        }
        if c == 0 {
            // Books for outstanding offers (the first cycle grows the offer
            // table; later ones reuse it), without the returned Vec itself.
            let vec_bytes = offers.capacity() * std::mem::size_of::<Offer>();
            bytes_per_offer = live().saturating_sub(live_before).saturating_sub(vec_bytes) as f64
                / offers.len().max(1) as f64;
        }
        for o in offers {
            alloc.rescind_offer(o.id).expect("rescind");
        }
    }

    // Keep the ids alive until the end so they are not double-counted as freed.
    drop(agent_ids);
    drop(framework_ids);

    Report {
        agents,
        frameworks,
        cycles,
        offers_per_cycle,
        bytes_per_agent: (after_agents - before + (after_tasks - after_frameworks)) as f64
            / agents as f64,
        bytes_per_framework: (after_frameworks - after_agents) as f64 / frameworks as f64,
        bytes_per_offer,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    println!(
        "HierarchicalDrf: one full allocation cycle ({ROLES} roles, agents of 32 cpus / 256 GiB / 1 TiB, {CYCLES} timed cycles after 1 warm-up)"
    );
    for (agents, frameworks, mesos_s) in [(10_000, 1_000, 1.1), (20_000, 2_000, 3.8)] {
        let r = bench(agents, frameworks);
        let mut sorted = r.cycles.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
        println!(
            "{:>6} agents {:>5} frameworks: median {:7.2} ms  min {:7.2} ms  max {:7.2} ms  ({} offers/cycle; Mesos 1.8: {:.1} s = {:.0}x)",
            r.agents,
            r.frameworks,
            ms(median),
            ms(min),
            ms(max),
            r.offers_per_cycle,
            mesos_s,
            mesos_s / median.as_secs_f64(),
        );
        println!(
            "{:>32} memory: {:.0} B/agent (with one task), {:.0} B/framework, {:.0} B/outstanding offer",
            "", r.bytes_per_agent, r.bytes_per_framework, r.bytes_per_offer
        );
    }
}
