//! Progress of one pull, for a progress bar on a terminal or one line per layer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::digest::Digest;

/// Called with a snapshot after every event. It runs on the pull's tasks: it must
/// return quickly (send it on a channel, or draw and return).
pub type ProgressCallback = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Where a pull stands.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The reference being prepared, as the user wrote it (normalised).
    pub reference: String,
    pub layers_total: usize,
    pub layers_done: usize,
    /// Compressed bytes of all layers, and how many are in the store so far (layers
    /// already there count as done).
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Bytes actually transferred per second since the first byte of this pull.
    pub bytes_per_second: u64,
    pub event: ProgressEvent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressEvent {
    /// The manifest is known: layer count and sizes are final.
    Resolved { digest: Digest },
    /// A layer starts downloading.
    LayerStarted {
        index: usize,
        digest: Digest,
        size: u64,
    },
    /// More bytes of a layer arrived (at most ten of these a second per layer).
    LayerBytes { index: usize, done: u64, size: u64 },
    /// A layer is downloaded and verified, and is being unpacked.
    LayerUnpacking { index: usize, digest: Digest },
    /// A layer is ready; `cached` when it was in the store already.
    LayerDone {
        index: usize,
        digest: Digest,
        cached: bool,
    },
    /// Every layer is ready.
    Done { digest: Digest },
}

const BYTES_EVENT_INTERVAL: Duration = Duration::from_millis(100);

/// Keeps the counters and calls the callback.
pub(crate) struct Tracker {
    callback: Option<ProgressCallback>,
    state: Mutex<State>,
}

struct State {
    snapshot: Progress,
    first_byte: Option<Instant>,
    transferred: u64,
    layer_done: Vec<u64>,
    last_bytes_event: Vec<Option<Instant>>,
}

impl Tracker {
    pub fn new(reference: String, callback: Option<ProgressCallback>) -> Self {
        Self {
            callback,
            state: Mutex::new(State {
                snapshot: Progress {
                    reference,
                    layers_total: 0,
                    layers_done: 0,
                    bytes_total: 0,
                    bytes_done: 0,
                    bytes_per_second: 0,
                    event: ProgressEvent::Done {
                        digest: Digest::of(b""),
                    },
                },
                first_byte: None,
                transferred: 0,
                layer_done: Vec::new(),
                last_bytes_event: Vec::new(),
            }),
        }
    }

    fn update(&self, change: impl FnOnce(&mut State) -> Option<ProgressEvent>) {
        let snapshot = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            let Some(event) = change(&mut state) else {
                return;
            };
            if let Some(first) = state.first_byte {
                let seconds = first.elapsed().as_secs_f64();
                if seconds > 0.0 {
                    // Display figure only: the rounding is irrelevant.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let rate = (state.transferred as f64 / seconds) as u64;
                    state.snapshot.bytes_per_second = rate;
                }
            }
            state.snapshot.event = event;
            state.snapshot.clone()
        };
        if let Some(callback) = &self.callback {
            callback(&snapshot);
        }
    }

    pub fn resolved(&self, digest: &Digest, sizes: &[u64]) {
        self.update(|s| {
            s.snapshot.layers_total = sizes.len();
            s.snapshot.bytes_total = sizes.iter().sum();
            s.layer_done = vec![0; sizes.len()];
            s.last_bytes_event = vec![None; sizes.len()];
            Some(ProgressEvent::Resolved {
                digest: digest.clone(),
            })
        });
    }

    pub fn layer_started(&self, index: usize, digest: &Digest, size: u64) {
        self.update(|_| {
            Some(ProgressEvent::LayerStarted {
                index,
                digest: digest.clone(),
                size,
            })
        });
    }

    pub fn layer_bytes(&self, index: usize, bytes: u64, size: u64) {
        self.update(|s| {
            let now = Instant::now();
            s.first_byte.get_or_insert(now);
            s.transferred += bytes;
            let done = s.layer_done.get_mut(index)?;
            let before = *done;
            *done = (*done + bytes).min(size);
            s.snapshot.bytes_done += *done - before;
            let last = s.last_bytes_event.get_mut(index)?;
            let due = last.is_none_or(|t| now.duration_since(t) >= BYTES_EVENT_INTERVAL);
            if !due && *done < size {
                return None;
            }
            *last = Some(now);
            Some(ProgressEvent::LayerBytes {
                index,
                done: *done,
                size,
            })
        });
    }

    pub fn layer_unpacking(&self, index: usize, digest: &Digest) {
        self.update(|_| {
            Some(ProgressEvent::LayerUnpacking {
                index,
                digest: digest.clone(),
            })
        });
    }

    pub fn layer_done(&self, index: usize, digest: &Digest, size: u64, cached: bool) {
        self.update(|s| {
            if let Some(done) = s.layer_done.get_mut(index) {
                s.snapshot.bytes_done += size.saturating_sub(*done);
                *done = size;
            }
            s.snapshot.layers_done += 1;
            Some(ProgressEvent::LayerDone {
                index,
                digest: digest.clone(),
                cached,
            })
        });
    }

    pub fn done(&self, digest: &Digest) {
        self.update(|_| {
            Some(ProgressEvent::Done {
                digest: digest.clone(),
            })
        });
    }
}
