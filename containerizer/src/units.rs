//! Parsing and printing of the units people type: sizes (`64MiB`, `1GiB`, `500M`,
//! plain bytes) and decimal CPU counts (`0.5`, `2`).

use std::fmt;

/// Why a size or CPU count was refused; the message names the accepted forms.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("invalid size {input:?}: {why} (use e.g. 64MiB, 1GiB, 500M or plain bytes)")]
    Size { input: String, why: &'static str },
    #[error("invalid CPU count {input:?}: {why} (use a decimal number of CPUs such as 0.5 or 2)")]
    Cpus { input: String, why: &'static str },
}

/// Parses a size: plain bytes, or a number (decimals allowed) with a unit.
/// Binary units (KiB, MiB, GiB, TiB; also K, M, G, T and KB… as in `docker --memory`)
/// are powers of 1024. Zero is refused: no limit of zero bytes makes sense.
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let err = |why| UnitError::Size {
        input: input.to_string(),
        why,
    };
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(err(if s.starts_with('-') {
            "must be positive"
        } else {
            "no number"
        }));
    }
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(err("unknown unit")),
    };
    let bytes = if let Some((int, frac)) = number.split_once('.') {
        if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
            return Err(err("not a number"));
        }
        let value: f64 = number.parse().map_err(|_| err("not a number"))?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(err("too large"));
        }
        // Rounded down to whole bytes; the value is finite, non-negative and in range.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = bytes as u64;
        whole
    } else {
        let value: u64 = number.parse().map_err(|_| err("too large"))?;
        value
            .checked_mul(multiplier)
            .ok_or_else(|| err("too large"))?
    };
    if bytes == 0 {
        return Err(err("must be greater than zero"));
    }
    Ok(bytes)
}

/// A CPU amount in thousandths of a CPU, the unit CFS quotas are computed from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct MilliCpus(pub u64);

impl MilliCpus {
    /// The amount as a decimal count of CPUs.
    pub fn as_cpus(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl fmt::Display for MilliCpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 1000;
        let frac = self.0 % 1000;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:03}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

/// Parses a decimal CPU count (`0.5`, `2`, `1.25`), to a precision of 1/1000 CPU.
pub fn parse_cpus(input: &str) -> Result<MilliCpus, UnitError> {
    let err = |why| UnitError::Cpus {
        input: input.to_string(),
        why,
    };
    let s = input.trim();
    if s.starts_with('-') {
        return Err(err("must be positive"));
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(err("not a number"));
    }
    if frac.len() > 3 && frac[3..].bytes().any(|b| b != b'0') {
        return Err(err("more precise than 0.001"));
    }
    let whole: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| err("too large"))?
    };
    let mut millis = 0u64;
    for (i, b) in frac.bytes().take(3).enumerate() {
        millis += u64::from(b - b'0') * [100, 10, 1][i];
    }
    let total = whole
        .checked_mul(1000)
        .and_then(|w| w.checked_add(millis))
        .filter(|t| *t <= 1_000_000_000)
        .ok_or_else(|| err("too large"))?;
    if total == 0 {
        return Err(err("must be greater than zero"));
    }
    Ok(MilliCpus(total))
}

/// `value` (bytes, or bytes per second) in the largest binary unit up to TiB in which
/// it is still at least 1: the scaled value and the unit (`B` below 1 KiB).
pub fn in_binary_unit(value: f64) -> (f64, &'static str) {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = value;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    (value, UNITS[unit])
}

/// Formats bytes for people: `64 MiB`, `1.5 GiB`, `512 B`.
pub fn format_bytes(bytes: u64) -> String {
    match in_binary_unit(bytes as f64) {
        (_, "B") => format!("{bytes} B"),
        (value, unit) if (value - value.round()).abs() < 0.005 => format!("{value:.0} {unit}"),
        (value, unit) => format!("{value:.1} {unit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size(" 2kb "), Ok(2048));
        for bad in [
            "",
            "0",
            "0MiB",
            "-1",
            "-5M",
            "abc",
            "12XB",
            "1..5M",
            ".",
            "99999999999999999999",
            "20000000TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5"), Ok(MilliCpus(500)));
        assert_eq!(parse_cpus("2"), Ok(MilliCpus(2000)));
        assert_eq!(parse_cpus(".25"), Ok(MilliCpus(250)));
        assert_eq!(parse_cpus("1.2500"), Ok(MilliCpus(1250)));
        for bad in [
            "",
            "0",
            "0.0",
            "-1",
            "abc",
            "1.0001",
            "1e3",
            ".",
            "1.2.3",
            "99999999999",
        ] {
            assert!(parse_cpus(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(MilliCpus(1500).to_string(), "1.5");
        assert_eq!(MilliCpus(2000).to_string(), "2");
        assert_eq!(MilliCpus(1).to_string(), "0.001");
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(64 << 20), "64 MiB");
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,24}") {
            let _ = parse_size(&s);
            let _ = parse_cpus(&s);
        }

        #[test]
        fn size_roundtrip(n in 1u64..(1u64 << 50)) {
            proptest::prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
        }
    }
}
