//! The ACL file (TOML): its format, read into the [`Acl`] that answers questions.
//!
//! ```toml
//! [principals]                      # who gets which ACL roles
//! "agent:*"    = ["agent"]          # user:NAME, group:NAME, agent:NODE; a trailing *
//! "group:ops"  = ["operator"]       # matches any rest ("user:*", "agent:rack1-*")
//! "user:alice" = ["batch"]
//!
//! [roles.agent]
//! register_agent = true
//!
//! [roles.operator]
//! admin = true
//!
//! [roles.batch]
//! subscribe = ["batch"]             # framework roles; "*" is any role
//! kill_task = "own"                 # own | role | any
//! teardown_framework = "own"
//! view = ["tasks:batch", "sandbox:batch", "usage"]
//! use_volume = [{ prefix = "/srv/data", mode = "ro" }]
//! use_rootfs = ["/srv/rootfs"]
//! use_image = ["registry.example.com/batch/"]
//! use_device = ["/dev/fuse"]              # exact host device paths
//! run_task = [{ role = "batch", as_user = ["nobody"], agent_attributes = { zone = "a" },
//!               max_cpus = 4, max_mem = "8GiB" }]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{Acl, Grants, Limits, Pattern, RunTaskGrant, Scope, ViewGrant, ViewKind, VolumeGrant};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAcl {
    #[serde(default)]
    principals: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    roles: BTreeMap<String, FileRole>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRole {
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    register_agent: bool,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    run_task: Vec<FileRunTask>,
    #[serde(default)]
    use_volume: Vec<FileVolume>,
    #[serde(default)]
    use_rootfs: Vec<String>,
    #[serde(default)]
    use_image: Vec<String>,
    #[serde(default)]
    use_device: Vec<String>,
    kill_task: Option<String>,
    teardown_framework: Option<String>,
    #[serde(default)]
    view: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRunTask {
    role: String,
    #[serde(default)]
    as_user: Vec<String>,
    #[serde(default)]
    agent_attributes: BTreeMap<String, String>,
    max_cpus: Option<f64>,
    max_mem: Option<Size>,
    max_disk: Option<Size>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVolume {
    prefix: String,
    #[serde(default = "default_mode")]
    mode: String,
}

fn default_mode() -> String {
    "ro".into()
}

/// A size in bytes, or a string with a unit (`512MiB`, `8GiB`, `1G`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

/// Parses `8GiB`, `512MiB`, `100K`, `1024` (binary units; `B` optional).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size; use e.g. 512MiB or 8GiB"))?;
    let shift = match unit.trim().trim_end_matches('B').trim_end_matches('i') {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit; use KiB, MiB, GiB or TiB")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn size(value: Option<Size>, key: &str) -> Result<Option<u64>, String> {
    match value {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => parse_size(&t).map(Some).map_err(|e| format!("{key}: {e}")),
    }
}

fn scope(value: Option<String>, key: &str) -> Result<Option<Scope>, String> {
    value
        .map(|v| match v.as_str() {
            "own" => Ok(Scope::Own),
            "role" => Ok(Scope::Role),
            "any" => Ok(Scope::Any),
            other => Err(format!(
                "{key} = {other:?}: use \"own\", \"role\" or \"any\""
            )),
        })
        .transpose()
}

/// An absolute path without `.` or `..`, with no trailing `/` (but `/` itself).
pub fn normal_absolute(path: &str) -> Option<String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return None;
    }
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::RootDir => {}
            std::path::Component::Normal(s) => parts.push(s.to_str()?),
            _ => return None,
        }
    }
    Some(format!("/{}", parts.join("/")))
}

fn grants(name: &str, role: FileRole) -> Result<Grants, String> {
    let at = |key: &str| format!("roles.{name}.{key}");
    let mut run_task = Vec::new();
    for (i, r) in role.run_task.into_iter().enumerate() {
        let key = at(&format!("run_task[{i}]"));
        if let Some(c) = r.max_cpus {
            if !c.is_finite() || c <= 0.0 {
                return Err(format!("{key}.max_cpus: give a number of CPUs above 0"));
            }
        }
        run_task.push(RunTaskGrant {
            role: Pattern::new(&r.role),
            as_user: r.as_user,
            agent_attributes: r.agent_attributes,
            limits: Limits {
                cpus: r.max_cpus,
                mem_bytes: size(r.max_mem, &format!("{key}.max_mem"))?,
                disk_bytes: size(r.max_disk, &format!("{key}.max_disk"))?,
            },
        });
    }
    let mut use_volume = Vec::new();
    for (i, v) in role.use_volume.into_iter().enumerate() {
        let key = at(&format!("use_volume[{i}]"));
        let prefix = normal_absolute(&v.prefix).ok_or_else(|| {
            format!(
                "{key}.prefix {:?}: give an absolute path without '..'",
                v.prefix
            )
        })?;
        let read_write = match v.mode.as_str() {
            "ro" => false,
            "rw" => true,
            other => return Err(format!("{key}.mode {other:?}: use \"ro\" or \"rw\"")),
        };
        use_volume.push(VolumeGrant { prefix, read_write });
    }
    let mut use_rootfs = Vec::new();
    for (i, p) in role.use_rootfs.into_iter().enumerate() {
        use_rootfs.push(normal_absolute(&p).ok_or_else(|| {
            format!(
                "{}: {p:?}: give an absolute path without '..'",
                at(&format!("use_rootfs[{i}]"))
            )
        })?);
    }
    let mut use_device = Vec::new();
    for (i, d) in role.use_device.into_iter().enumerate() {
        use_device.push(
            normal_absolute(&d)
                .filter(|p| p.starts_with("/dev/"))
                .ok_or_else(|| {
                    format!(
                        "{}: {d:?}: give the absolute path of a device under /dev (e.g. \
                         \"/dev/fuse\"), without '..'",
                        at(&format!("use_device[{i}]"))
                    )
                })?,
        );
    }
    let mut view = Vec::new();
    for entry in role.view {
        let (what, role_pattern) = match entry.split_once(':') {
            Some((w, r)) => (w, Some(Pattern::new(r))),
            None => (entry.as_str(), None),
        };
        let what = ViewKind::from_name(what).ok_or_else(|| {
            format!(
                "{}: {entry:?}: use state, tasks, usage, sandbox or audit, optionally with \
                 :ROLE (e.g. \"tasks:batch\")",
                at("view")
            )
        })?;
        view.push(ViewGrant {
            what,
            roles: role_pattern,
        });
    }
    Ok(Grants {
        admin: role.admin,
        register_agent: role.register_agent,
        subscribe: role.subscribe.iter().map(|r| Pattern::new(r)).collect(),
        run_task,
        use_volume,
        use_rootfs,
        use_image: role.use_image,
        use_device,
        kill_task: scope(role.kill_task, &at("kill_task"))?,
        teardown_framework: scope(role.teardown_framework, &at("teardown_framework"))?,
        view,
    })
}

/// Parses the text of an ACL file.
pub fn parse(text: &str) -> Result<Acl, String> {
    let file: FileAcl = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
    let mut roles = BTreeMap::new();
    for (name, role) in file.roles {
        let g = grants(&name, role)?;
        roles.insert(name, g);
    }
    let mut principals = Vec::new();
    for (key, names) in file.principals {
        let valid = ["user:", "group:", "agent:"]
            .iter()
            .any(|p| key.starts_with(p) && key.len() > p.len())
            || key == "*"
            || key == "master";
        if !valid {
            return Err(format!(
                "principals: {key:?}: write user:NAME, group:NAME or agent:NODE (a trailing * \
                 matches any rest)"
            ));
        }
        for name in &names {
            if !roles.contains_key(name) {
                return Err(format!(
                    "principals.{key:?}: no role {name:?}; define it as [roles.{name}]"
                ));
            }
        }
        principals.push((Pattern::new(&key), names));
    }
    Ok(Acl { principals, roles })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_paths() {
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("10"), Ok(10));
        assert!(parse_size("1XB").is_err());
        assert_eq!(normal_absolute("/srv/data/").as_deref(), Some("/srv/data"));
        assert_eq!(normal_absolute("/").as_deref(), Some("/"));
        assert_eq!(normal_absolute("/srv/../etc"), None);
        assert_eq!(normal_absolute("srv"), None);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("[principals]\n\"user:a\" = [\"nope\"]\n", "nope"),
            ("[roles.x]\nkill_task = \"some\"\n", "roles.x.kill_task"),
            ("[roles.x]\nview = [\"everything\"]\n", "roles.x.view"),
            (
                "[roles.x]\nuse_volume = [{ prefix = \"data\" }]\n",
                "use_volume[0]",
            ),
            ("[roles.x]\nregister_agnet = true\n", "register_agnet"),
            ("[principals]\n\"alice\" = []\n", "user:NAME"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{e}");
        }
    }
}
