//! The small languages operators type in the agent's flags and TOML file:
//! `cpus:4;mem:8GiB;disk:20GiB` and `rack=r1,zone=z1`.

use cella_containerizer::units::{MilliCpus, parse_cpus, parse_size};

/// Amounts given in `--resources` or `--reserve`; unset fields are not overridden
/// (resources) or not reserved (reserve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceSpec {
    pub cpus: Option<MilliCpus>,
    pub mem_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
}

/// Parses `cpus:4;mem:8GiB;disk:20GiB` (any subset, in any order; `;` or `,`
/// between items; `mem` may also be written `memory`). With `allow_zero`, `0` is
/// accepted for any amount (a reservation of nothing).
pub fn parse_resources(input: &str, allow_zero: bool) -> Result<ResourceSpec, String> {
    const FORMAT: &str = "use e.g. \"cpus:4;mem:8GiB;disk:20GiB\" (any subset)";
    let mut spec = ResourceSpec::default();
    for item in input.split([';', ',']) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once(':') else {
            return Err(format!("{item:?} is not NAME:AMOUNT; {FORMAT}"));
        };
        let value = value.trim();
        let is_zero =
            allow_zero && !value.is_empty() && value.bytes().all(|b| b == b'0' || b == b'.');
        match key.trim().to_ascii_lowercase().as_str() {
            "cpus" | "cpu" => {
                if spec.cpus.is_some() {
                    return Err(format!("cpus is given twice; {FORMAT}"));
                }
                spec.cpus = Some(if is_zero {
                    MilliCpus(0)
                } else {
                    parse_cpus(value).map_err(|e| e.to_string())?
                });
            }
            "mem" | "memory" => {
                if spec.mem_bytes.is_some() {
                    return Err(format!("mem is given twice; {FORMAT}"));
                }
                spec.mem_bytes = Some(if is_zero {
                    0
                } else {
                    parse_size(value).map_err(|e| e.to_string())?
                });
            }
            "disk" => {
                if spec.disk_bytes.is_some() {
                    return Err(format!("disk is given twice; {FORMAT}"));
                }
                spec.disk_bytes = Some(if is_zero {
                    0
                } else {
                    parse_size(value).map_err(|e| e.to_string())?
                });
            }
            other => {
                return Err(format!(
                    "unknown resource {other:?}: the agent knows cpus, mem and disk; {FORMAT}"
                ));
            }
        }
    }
    Ok(spec)
}

/// Parses `rack=r1,zone=z1` (`,` or `;` between pairs). Keys must be unique.
pub fn parse_attributes(input: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in input.split([',', ';']) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!(
                "{item:?} is not KEY=VALUE; use e.g. \"rack=r1,zone=z1\""
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        check_attribute(key, value)?;
        if out.iter().any(|(k, _)| k == key) {
            return Err(format!("attribute {key:?} is given twice"));
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

pub(super) fn check_attribute(key: &str, value: &str) -> Result<(), String> {
    let ok_key = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    if !ok_key {
        return Err(format!(
            "attribute name {key:?}: use 1 to 128 characters from A-Z a-z 0-9 . _ - /"
        ));
    }
    if value.len() > 1024 || value.chars().any(char::is_control) {
        return Err(format!(
            "attribute {key:?}: the value must be at most 1024 characters without control characters"
        ));
    }
    Ok(())
}
