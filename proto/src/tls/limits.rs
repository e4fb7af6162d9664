//! What one peer can take of a server: connections (in total and per address), idle
//! time, and requests in flight.
//!
//! Every accepted connection gets an entry in a [`ConnectionTable`]. Connections that
//! presented no client certificate (still in the handshake, `GET /health` probes,
//! bearer-token clients, or an attacker) are *anonymous*: at most
//! [`Limits::max_anonymous_per_address`] of them per IP address. When a new connection
//! would exceed a cap, the oldest anonymous connection with no request in flight
//! (of that address, or of any for the total cap) is closed to make room; only when
//! there is none is the newcomer refused. An attacker who opens a thousand idle
//! connections therefore only ever displaces its own, and a health probe always gets
//! in. Connections with a verified certificate (agents, schedulers, operators) are
//! never evicted. A connection with no request in flight for
//! [`Limits::idle_timeout`] is closed.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The caps of [`super::serve_with`].
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections in total (lowered to what the process's descriptor limit
    /// allows).
    pub max_connections: usize,
    /// Connections without a client certificate per remote IP address.
    pub max_anonymous_per_address: usize,
    /// A connection with no request in flight this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// The largest request head (HTTP/1.1 buffer, HTTP/2 header list), in bytes.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_anonymous_per_address: 128,
            idle_timeout: Duration::from_secs(60),
            max_concurrent_streams: 128,
            max_header_bytes: 64 << 10,
        }
    }
}

/// Counters of a server's connections (for `/metrics`).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Open now.
    pub open: AtomicU64,
    /// Refused at accept: a cap was reached and nothing could be evicted.
    pub refused: AtomicU64,
    /// Closed to make room for a newer connection.
    pub evicted: AtomicU64,
    /// Closed after `idle_timeout` without a request.
    pub idle_closed: AtomicU64,
    /// Failed or timed out during the TLS handshake.
    pub handshake_failed: AtomicU64,
}

impl ConnectionStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What a connection shares with the table: whether a request is in flight, since
/// when it has been idle, and how to close it.
#[derive(Debug)]
pub struct ConnState {
    in_flight: AtomicUsize,
    /// Milliseconds since the table's epoch when the last request ended.
    idle_since_ms: AtomicU64,
    epoch: Instant,
    pub close: Notify,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Whether no request has been in flight for at least `timeout`.
    pub fn idle_for(&self, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
            && self
                .now_ms()
                .saturating_sub(self.idle_since_ms.load(Ordering::SeqCst))
                >= u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }
}

/// A request in flight (its response body included); see [`ConnState::request`].
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.idle_since_ms.store(now, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Entry {
    ip: IpAddr,
    anonymous: bool,
    state: Arc<ConnState>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// By id, which is the order of acceptance: the first evictable one is the oldest.
    conns: BTreeMap<u64, Entry>,
    anonymous_per_ip: HashMap<IpAddr, usize>,
}

/// The open connections of one server; see the module documentation.
pub struct ConnectionTable {
    limits: Limits,
    stats: Arc<ConnectionStats>,
    epoch: Instant,
    inner: Mutex<Inner>,
}

/// A connection's place in the table; dropping it removes the entry.
pub struct Admitted {
    table: Arc<ConnectionTable>,
    id: u64,
    pub state: Arc<ConnState>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

impl ConnectionTable {
    pub fn new(limits: Limits, stats: Arc<ConnectionStats>) -> Arc<ConnectionTable> {
        Arc::new(ConnectionTable {
            limits,
            stats,
            epoch: Instant::now(),
            inner: Mutex::new(Inner::default()),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a new (anonymous) connection from `ip`, evicting the oldest idle
    /// anonymous one if a cap is reached; `None` when it must be refused.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut inner = self.lock();
        if inner.anonymous_per_ip.get(&ip).copied().unwrap_or(0)
            >= self.limits.max_anonymous_per_address
            && !self.evict_oldest(&mut inner, Some(ip))
        {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if inner.conns.len() >= self.limits.max_connections && !self.evict_oldest(&mut inner, None)
        {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let state = Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(
                u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX),
            ),
            epoch: self.epoch,
            close: Notify::new(),
        });
        inner.conns.insert(
            id,
            Entry {
                ip,
                anonymous: true,
                state: state.clone(),
            },
        );
        *inner.anonymous_per_ip.entry(ip).or_default() += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Some(Admitted {
            table: self.clone(),
            id,
            state,
        })
    }

    /// The connection presented a verified certificate: it no longer counts against
    /// its address and is never evicted.
    pub fn authenticated(&self, admitted: &Admitted) {
        let mut inner = self.lock();
        let Some(entry) = inner.conns.get_mut(&admitted.id) else {
            return;
        };
        if entry.anonymous {
            entry.anonymous = false;
            let ip = entry.ip;
            Self::forget_anonymous(&mut inner, ip);
        }
    }

    fn forget_anonymous(inner: &mut Inner, ip: IpAddr) {
        if let Some(n) = inner.anonymous_per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.anonymous_per_ip.remove(&ip);
            }
        }
    }

    /// Closes the oldest anonymous connection without a request in flight (of `ip`
    /// if given); false if there is none.
    fn evict_oldest(&self, inner: &mut Inner, ip: Option<IpAddr>) -> bool {
        let victim = inner
            .conns
            .iter()
            .find(|(_, e)| e.anonymous && !e.state.busy() && ip.is_none_or(|ip| e.ip == ip))
            .map(|(id, _)| *id);
        let Some(id) = victim else {
            return false;
        };
        if let Some(entry) = inner.conns.remove(&id) {
            Self::forget_anonymous(inner, entry.ip);
            entry.state.close.notify_one();
            self.stats.open.fetch_sub(1, Ordering::Relaxed);
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    fn remove(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(entry) = inner.conns.remove(&id) {
            if entry.anonymous {
                Self::forget_anonymous(&mut inner, entry.ip);
            }
            self.stats.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The number of descriptors this process may open (its soft `RLIMIT_NOFILE`), after
/// raising the soft limit to the hard one. Daemons call it once at start.
pub fn raise_descriptor_limit() -> u64 {
    let Ok((soft, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    else {
        return 1024;
    };
    if soft < hard
        && nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
            .is_ok()
    {
        return hard;
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_idle_anonymous_connection_makes_room() {
        let limits = Limits {
            max_connections: 4,
            max_anonymous_per_address: 2,
            ..Limits::default()
        };
        let table = ConnectionTable::new(limits, Arc::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = table.admit(a).unwrap();
        let second = table.admit(a).unwrap();
        let busy = second.state.request();
        // A third from `a` evicts the oldest idle one of `a`.
        let third = table.admit(a).unwrap();
        assert_eq!(ConnectionStats::get(&table.stats().evicted), 1);
        // `second` is busy and `third` idle: a fourth evicts `third`.
        let _fourth = table.admit(a).unwrap();
        assert_eq!(ConnectionStats::get(&table.stats().evicted), 2);
        drop((first, third));
        // Authenticated connections are never evicted.
        let c1 = table.admit(b).unwrap();
        table.authenticated(&c1);
        let c2 = table.admit(b).unwrap();
        table.authenticated(&c2);
        // Total cap (4): second (busy), fourth, c1, c2. Fourth is the only candidate.
        let c3 = table.admit(b).unwrap();
        let _busy3 = c3.state.request();
        assert_eq!(ConnectionStats::get(&table.stats().evicted), 3);
        // Now nothing is evictable: refused.
        assert!(table.admit(b).is_none());
        assert_eq!(ConnectionStats::get(&table.stats().refused), 1);
        drop(busy);
    }
}
