//! How a tier of a task's history stores its points: each as its difference from the
//! point before, in varints, in blocks of bytes. A point of a running task differs
//! from the one before in a few figures (CPU time, a level or two), so it takes tens
//! of bytes instead of the 248 of a [`Point`]; an idle task's takes about ten.
//!
//! A point is encoded as: the timestamp's difference, the presence bits XOR the
//! previous ones, a mask of the [`FIELDS`] that changed, then each changed field's
//! difference (all zigzag varints, wrapping, so any values round-trip exactly). Each
//! block's first point is encoded against `Point::default()`, so the oldest block can
//! be dropped whole once its points aged out, and blocks never grow past
//! [`BLOCK_POINTS`] points: a tier takes memory as it fills, without ever copying
//! what it holds into a larger buffer (as a growing `Vec` or `VecDeque` does, at
//! the same second for every task that started together). The newest point, which
//! still takes the samples of its bucket, stays unpacked.

use std::collections::VecDeque;

use prost::encoding::{decode_varint, encode_varint};

use super::point::{FIELDS, FIGURES, Point};

/// Points per block: small enough that a block is a few KiB, large enough that the
/// block's first point (encoded whole) and its allocation cost little per point.
pub const BLOCK_POINTS: u32 = 64;

/// The most bytes a packed point takes, every figure jumping at random (a varint of
/// 64 bits takes ten bytes): the timestamp, presence (32 bits), the mask (41 bits),
/// the figures, and per pressure six averages (16 bits) and two totals.
pub const MAX_POINT_BYTES: usize = 10 + 5 + 6 + 10 * FIGURES + 3 * (6 * 3 + 2 * 10);

const _: () = assert!(FIELDS <= 64, "the changed-field mask is a u64");

fn zigzag(difference: u64) -> u64 {
    (difference << 1) ^ 0u64.wrapping_sub(difference >> 63)
}

fn unzigzag(z: u64) -> u64 {
    (z >> 1) ^ 0u64.wrapping_sub(z & 1)
}

/// Appends `p`, encoded against `prev`.
pub fn encode(prev: &Point, p: &Point, out: &mut Vec<u8>) {
    encode_varint(zigzag(p.timestamp_ns.wrapping_sub(prev.timestamp_ns)), out);
    encode_varint(u64::from(p.present() ^ prev.present()), out);
    let (now, before) = (p.fields(), prev.fields());
    let changed = (0..FIELDS)
        .filter(|&i| now[i] != before[i])
        .fold(0u64, |mask, i| mask | 1 << i);
    encode_varint(changed, out);
    for i in (0..FIELDS).filter(|i| changed & 1 << i != 0) {
        encode_varint(zigzag(now[i].wrapping_sub(before[i])), out);
    }
}

/// The point at the start of `bytes`, encoded against `prev`; `bytes` moves past it.
/// The bytes are the history's own, written by [`encode`]: a varint cut short (which
/// cannot happen) reads as 0.
pub fn decode(prev: &Point, bytes: &mut &[u8]) -> Point {
    let mut next = || decode_varint(bytes).unwrap_or(0);
    let mut p = *prev;
    p.timestamp_ns = prev.timestamp_ns.wrapping_add(unzigzag(next()));
    p.set_present(prev.present() ^ u32::try_from(next()).unwrap_or(0));
    let changed = next();
    if changed != 0 {
        let mut f = prev.fields();
        for (i, v) in f.iter_mut().enumerate() {
            if changed & 1 << i != 0 {
                *v = v.wrapping_add(unzigzag(next()));
            }
        }
        p.set_fields(&f);
    }
    p
}

/// The timestamp of the point at the start of `bytes`, encoded against `prev`.
fn decode_timestamp(prev: &Point, mut bytes: &[u8]) -> u64 {
    let difference = decode_varint(&mut bytes).unwrap_or(0);
    prev.timestamp_ns.wrapping_add(unzigzag(difference))
}

/// A tier's points, oldest first: the packed ones, then the newest, unpacked.
#[derive(Debug, Default, Clone)]
pub struct PackedTier {
    /// Oldest first.
    blocks: VecDeque<Vec<u8>>,
    /// Where the oldest packed point starts in the first block, and the point it is
    /// encoded against.
    head: usize,
    head_prev: Point,
    /// The last point packed into the last block, and how many that block holds.
    tail_prev: Point,
    tail_points: u32,
    /// Packed points.
    packed: usize,
    /// The newest point; `None` only when the tier is empty.
    open: Option<Point>,
}

impl PackedTier {
    pub fn len(&self) -> usize {
        self.packed + usize::from(self.open.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_none()
    }

    /// The newest point, which samples of its bucket are folded into.
    pub fn back(&self) -> Option<&Point> {
        self.open.as_ref()
    }

    pub fn back_mut(&mut self) -> Option<&mut Point> {
        self.open.as_mut()
    }

    /// Appends `p` as the newest point; the one before is packed.
    pub fn push_back(&mut self, p: Point) {
        let Some(previous) = self.open.replace(p) else {
            return;
        };
        if self.blocks.is_empty() || self.tail_points == BLOCK_POINTS {
            // The full block gives back its spare room; the new one starts at its
            // size, which the next block's points most likely take again.
            let capacity = match self.blocks.back_mut() {
                Some(full) => {
                    full.shrink_to_fit();
                    full.len() + full.len() / 8
                }
                None => 16 * BLOCK_POINTS as usize,
            };
            self.blocks.push_back(Vec::with_capacity(capacity));
            if self.blocks.len() == 1 {
                self.head = 0;
                self.head_prev = Point::default();
            }
            self.tail_prev = Point::default();
            self.tail_points = 0;
        }
        let Some(tail) = self.blocks.back_mut() else {
            return; // Cannot be: a block was just ensured.
        };
        encode(&self.tail_prev, &previous, tail);
        self.tail_prev = previous;
        self.tail_points += 1;
        self.packed += 1;
    }

    /// The oldest point's timestamp.
    pub fn front_timestamp(&self) -> Option<u64> {
        match self.blocks.front() {
            Some(block) if self.packed > 0 => {
                Some(decode_timestamp(&self.head_prev, &block[self.head..]))
            }
            _ => self.open.map(|p| p.timestamp_ns),
        }
    }

    /// Removes and returns the oldest point.
    pub fn pop_front(&mut self) -> Option<Point> {
        if self.packed == 0 {
            return self.open.take();
        }
        let block = self.blocks.front()?;
        let mut rest = &block[self.head..];
        let p = decode(&self.head_prev, &mut rest);
        self.head = block.len() - rest.len();
        self.head_prev = p;
        self.packed -= 1;
        if rest.is_empty() {
            self.blocks.pop_front();
            self.head = 0;
            self.head_prev = Point::default();
        }
        Some(p)
    }

    /// The points, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Point> + '_ {
        let mut blocks = self.blocks.iter();
        let mut rest: &[u8] = blocks.next().map_or(&[], |b| &b[self.head..]);
        let mut prev = self.head_prev;
        let mut left = self.packed;
        let packed = std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            if rest.is_empty() {
                rest = blocks.next()?;
                prev = Point::default();
            }
            prev = decode(&prev, &mut rest);
            left -= 1;
            Some(prev)
        });
        packed.chain(self.open)
    }

    /// Bytes held, allocated capacity included.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.blocks.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.blocks.iter().map(Vec::capacity).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use cella_proto::v1::{Pressure, TaskUsage};

    use super::*;

    fn point(t: u64, cpu: u64, mem: Option<u64>, pressure: Option<f64>) -> Point {
        Point::from_wire(&TaskUsage {
            timestamp_ns: t,
            cpu_user_ns: Some(cpu),
            mem_current_bytes: mem,
            io_pressure: pressure.map(|avg| Pressure {
                some_avg10: avg,
                some_total_us: t / 1000,
                full_avg60: Some(avg / 2.0),
                full_total_us: Some(t / 2000),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn points_round_trip_whatever_their_differences() {
        let extremes = [
            Point::default(),
            point(u64::MAX, u64::MAX, Some(0), Some(100.0)),
            point(1, 0, Some(u64::MAX), None),
            point(0, 1 << 63, None, Some(0.0)),
            point(5, 3, Some(2), Some(0.01)),
        ];
        for prev in &extremes {
            for p in &extremes {
                let mut bytes = Vec::new();
                encode(prev, p, &mut bytes);
                assert!(bytes.len() <= MAX_POINT_BYTES);
                let mut rest = bytes.as_slice();
                assert_eq!(decode(prev, &mut rest), *p);
                assert!(rest.is_empty());
                assert_eq!(decode_timestamp(prev, &bytes), p.timestamp_ns);
            }
        }
    }

    #[test]
    fn a_point_like_the_one_before_takes_a_few_bytes() {
        let a = point(10_000_000_000, 5_000_000, Some(1 << 26), Some(1.5));
        let b = point(20_000_000_000, 9_000_000, Some(1 << 26), Some(1.5));
        let mut bytes = Vec::new();
        encode(&a, &b, &mut bytes);
        // Timestamp (5 bytes), presence (1), mask (6: the pressure's bits are the
        // highest), CPU (4), pressure totals (4 + 4); 248 unpacked.
        assert_eq!(bytes.len(), 24);
    }

    #[test]
    fn the_tier_keeps_its_order_across_blocks_while_points_come_and_go() {
        let mut tier = PackedTier::default();
        let mut expected = VecDeque::new();
        let n = 5 * u64::from(BLOCK_POINTS) + 7;
        for t in 0..n {
            let p = point(
                t,
                t * t,
                (t % 3 == 0).then_some(t),
                (t % 5 == 0).then_some(1.0),
            );
            tier.push_back(p);
            expected.push_back(p);
            // Age points out now and then, sometimes past a block's end.
            if t % 7 == 6 {
                for _ in 0..4 {
                    assert_eq!(
                        tier.front_timestamp(),
                        expected.front().map(|p| p.timestamp_ns)
                    );
                    assert_eq!(tier.pop_front(), expected.pop_front());
                }
            }
            assert_eq!(tier.len(), expected.len());
            assert_eq!(tier.back(), expected.back());
        }
        assert!(tier.iter().eq(expected.iter().copied()));
        while let Some(p) = expected.pop_front() {
            assert_eq!(tier.pop_front(), Some(p));
        }
        assert!(tier.is_empty());
        assert_eq!(
            (tier.len(), tier.pop_front(), tier.front_timestamp()),
            (0, None, None)
        );
        // Refilled after being emptied.
        tier.push_back(point(1, 1, None, None));
        tier.push_back(point(2, 2, None, None));
        assert_eq!(
            tier.iter().map(|p| p.timestamp_ns).collect::<Vec<_>>(),
            [1, 2]
        );
    }
}
