//! Scalar resources (cpus, memory, disk) with arithmetic that never panics.
//!
//! CPUs arrive on the wire as a decimal count (`0.5`, `32`); they are stored as
//! integer milli-cpus so that sums and differences are exact and associative (a
//! float sum of thousands of task allocations drifts, and a drifted "free" value
//! of `-1e-12` cpus is exactly the kind of bug that must not exist). Memory and disk
//! are bytes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Errors of resource arithmetic and conversion.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResourceError {
    /// `a - b` where some component of `b` exceeds `a`.
    #[error("resource underflow: cannot subtract {subtrahend} from {minuend}")]
    Underflow {
        /// The left-hand side.
        minuend: Resources,
        /// The right-hand side.
        subtrahend: Resources,
    },
    /// `a + b` does not fit in `u64`.
    #[error("resource overflow: {lhs} + {rhs}")]
    Overflow {
        /// The left-hand side.
        lhs: Resources,
        /// The right-hand side.
        rhs: Resources,
    },
    /// A CPU count that is negative, NaN, infinite or too large.
    #[error("invalid cpu count {0}: must be finite, >= 0 and < 1.8e16")]
    InvalidCpus(f64),
}

/// An amount of cpus, memory and disk: what an agent has, a framework holds or an
/// offer carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// CPUs in thousandths of a cpu (1000 = one cpu).
    pub cpus_milli: u64,
    /// Memory in bytes.
    pub mem_bytes: u64,
    /// Disk in bytes.
    pub disk_bytes: u64,
}

/// The largest cpu count accepted from the wire; anything above is surely a bug.
const MAX_CPUS: f64 = 1.8e16;

impl Resources {
    /// No resources.
    pub const ZERO: Resources = Resources {
        cpus_milli: 0,
        mem_bytes: 0,
        disk_bytes: 0,
    };

    /// Resources from milli-cpus and bytes.
    #[must_use]
    pub const fn new(cpus_milli: u64, mem_bytes: u64, disk_bytes: u64) -> Self {
        Resources {
            cpus_milli,
            mem_bytes,
            disk_bytes,
        }
    }

    /// Resources from a decimal cpu count (as on the wire), rounded to the nearest
    /// milli-cpu, and bytes.
    pub fn from_cpus(cpus: f64, mem_bytes: u64, disk_bytes: u64) -> Result<Self, ResourceError> {
        Ok(Resources {
            cpus_milli: cpus_to_milli(cpus)?,
            mem_bytes,
            disk_bytes,
        })
    }

    /// The cpu count as a decimal number (for the wire and for display).
    #[must_use]
    pub fn cpus(&self) -> f64 {
        self.cpus_milli as f64 / 1000.0
    }

    /// True when every component is zero.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.cpus_milli == 0 && self.mem_bytes == 0 && self.disk_bytes == 0
    }

    /// True when `self` fits within `other`: no component of `self` exceeds the
    /// same component of `other`.
    #[must_use]
    pub const fn fits(&self, other: &Resources) -> bool {
        self.cpus_milli <= other.cpus_milli
            && self.mem_bytes <= other.mem_bytes
            && self.disk_bytes <= other.disk_bytes
    }

    /// `self + other`, or an error if a component overflows `u64`.
    pub fn checked_add(&self, other: &Resources) -> Result<Resources, ResourceError> {
        let overflow = || ResourceError::Overflow {
            lhs: *self,
            rhs: *other,
        };
        Ok(Resources {
            cpus_milli: self
                .cpus_milli
                .checked_add(other.cpus_milli)
                .ok_or_else(overflow)?,
            mem_bytes: self
                .mem_bytes
                .checked_add(other.mem_bytes)
                .ok_or_else(overflow)?,
            disk_bytes: self
                .disk_bytes
                .checked_add(other.disk_bytes)
                .ok_or_else(overflow)?,
        })
    }

    /// `self - other`, or an error if `other` does not fit in `self`.
    pub fn checked_sub(&self, other: &Resources) -> Result<Resources, ResourceError> {
        if !other.fits(self) {
            return Err(ResourceError::Underflow {
                minuend: *self,
                subtrahend: *other,
            });
        }
        Ok(Resources {
            cpus_milli: self.cpus_milli - other.cpus_milli,
            mem_bytes: self.mem_bytes - other.mem_bytes,
            disk_bytes: self.disk_bytes - other.disk_bytes,
        })
    }

    /// `self + other`, each component clamped at `u64::MAX`.
    #[must_use]
    pub const fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpus_milli: self.cpus_milli.saturating_add(other.cpus_milli),
            mem_bytes: self.mem_bytes.saturating_add(other.mem_bytes),
            disk_bytes: self.disk_bytes.saturating_add(other.disk_bytes),
        }
    }

    /// `self - other`, each component clamped at zero.
    #[must_use]
    pub const fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpus_milli: self.cpus_milli.saturating_sub(other.cpus_milli),
            mem_bytes: self.mem_bytes.saturating_sub(other.mem_bytes),
            disk_bytes: self.disk_bytes.saturating_sub(other.disk_bytes),
        }
    }

    /// Component-wise minimum.
    #[must_use]
    pub fn min(&self, other: &Resources) -> Resources {
        Resources {
            cpus_milli: self.cpus_milli.min(other.cpus_milli),
            mem_bytes: self.mem_bytes.min(other.mem_bytes),
            disk_bytes: self.disk_bytes.min(other.disk_bytes),
        }
    }

    /// Add `other` in place, saturating; logs a warning if it had to saturate,
    /// because in the allocator's books that means a bookkeeping bug.
    pub(crate) fn add_or_warn(&mut self, other: &Resources, what: &str) {
        match self.checked_add(other) {
            Ok(sum) => *self = sum,
            Err(e) => {
                tracing::warn!(error = %e, what, "resource sum saturated");
                *self = self.saturating_add(other);
            }
        }
    }

    /// Subtract `other` in place, saturating at zero; logs a warning if it had to
    /// saturate.
    pub(crate) fn sub_or_warn(&mut self, other: &Resources, what: &str) {
        match self.checked_sub(other) {
            Ok(diff) => *self = diff,
            Err(e) => {
                tracing::warn!(error = %e, what, "resource difference saturated at zero");
                *self = self.saturating_sub(other);
            }
        }
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpus:{}.{:03};mem:{}B;disk:{}B",
            self.cpus_milli / 1000,
            self.cpus_milli % 1000,
            self.mem_bytes,
            self.disk_bytes
        )
    }
}

/// Converts a decimal cpu count to milli-cpus, rounding to the nearest milli-cpu.
pub fn cpus_to_milli(cpus: f64) -> Result<u64, ResourceError> {
    if !cpus.is_finite() || !(0.0..MAX_CPUS).contains(&cpus) {
        return Err(ResourceError::InvalidCpus(cpus));
    }
    let milli = (cpus * 1000.0).round();
    // The range check above bounds `milli` to [0, 1.8e19) which is within u64
    // (1.8446e19), and `round` made it integral: the cast neither truncates nor
    // loses the sign.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let milli = milli as u64;
    Ok(milli)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_resources() -> impl Strategy<Value = Resources> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(c, m, d)| Resources::new(c, m, d))
    }

    fn small_resources() -> impl Strategy<Value = Resources> {
        (0u64..1 << 40, 0u64..1 << 50, 0u64..1 << 50).prop_map(|(c, m, d)| Resources::new(c, m, d))
    }

    proptest! {
        #[test]
        fn arithmetic_never_panics(a in any_resources(), b in any_resources()) {
            let _ = a.checked_add(&b);
            let _ = a.checked_sub(&b);
            let s = a.saturating_add(&b);
            let d = a.saturating_sub(&b);
            prop_assert!(a.fits(&s));
            prop_assert!(d.fits(&a));
            let mut x = a;
            x.add_or_warn(&b, "test");
            x.sub_or_warn(&b, "test");
            x.sub_or_warn(&s, "test");
            let _ = a.min(&b);
            let _ = a.is_empty();
            let _ = a.to_string();
        }

        #[test]
        fn sub_is_checked(a in any_resources(), b in any_resources()) {
            match a.checked_sub(&b) {
                Ok(d) => {
                    prop_assert!(b.fits(&a));
                    prop_assert_eq!(d.checked_add(&b), Ok(a));
                }
                Err(ResourceError::Underflow { .. }) => prop_assert!(!b.fits(&a)),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }

        #[test]
        fn add_then_sub_round_trips(a in small_resources(), b in small_resources()) {
            let s = a.checked_add(&b).unwrap();
            prop_assert_eq!(s.checked_sub(&b).unwrap(), a);
            prop_assert!(a.fits(&s) && b.fits(&s));
        }

        #[test]
        fn cpus_conversion_never_panics(c in any::<f64>()) {
            match cpus_to_milli(c) {
                Ok(m) => prop_assert!(c >= 0.0 && ((m as f64) - c * 1000.0).abs() <= 0.5 + c * 1e-12),
                Err(_) => prop_assert!(!(c.is_finite() && (0.0..MAX_CPUS).contains(&c))),
            }
        }
    }

    #[test]
    fn decimal_cpus() {
        let r = Resources::from_cpus(0.5, 1, 2).unwrap();
        assert_eq!(r.cpus_milli, 500);
        assert_eq!(Resources::from_cpus(32.0, 0, 0).unwrap().cpus_milli, 32_000);
        assert_eq!(Resources::from_cpus(0.0015, 0, 0).unwrap().cpus_milli, 2);
        assert!(Resources::from_cpus(-1.0, 0, 0).is_err());
        assert!(Resources::from_cpus(f64::NAN, 0, 0).is_err());
        assert!(Resources::from_cpus(f64::INFINITY, 0, 0).is_err());
        assert_eq!(r.to_string(), "cpus:0.500;mem:1B;disk:2B");
        assert!((r.cpus() - 0.5).abs() < f64::EPSILON);
    }

    #[test]
    fn empty_and_fits() {
        assert!(Resources::ZERO.is_empty());
        assert!(!Resources::new(0, 0, 1).is_empty());
        let a = Resources::new(1, 2, 3);
        assert!(Resources::ZERO.fits(&a));
        assert!(a.fits(&a));
        assert!(!Resources::new(2, 0, 0).fits(&a));
        assert!(a.checked_sub(&Resources::new(2, 0, 0)).is_err());
        assert_eq!(
            a.saturating_sub(&Resources::new(2, 0, 0)),
            Resources::new(0, 2, 3)
        );
    }
}
