//! Every permission, allowed for a principal that has it and denied for one that
//! does not.

use super::*;

const ACL: &str = r#"
[principals]
"agent:*" = ["agent"]
"group:ops" = ["operator"]
"user:alice" = ["batch"]
"user:carol" = ["viewer"]
"user:dave" = ["killer"]

[roles.agent]
register_agent = true

[roles.operator]
admin = true

[roles.batch]
subscribe = ["batch", "dev*"]
kill_task = "own"
teardown_framework = "role"
view = ["tasks:batch", "sandbox:batch"]
use_volume = [{ prefix = "/srv/data", mode = "ro" }, { prefix = "/srv/scratch", mode = "rw" }]
use_rootfs = ["/srv/rootfs"]
use_image = ["registry.example.com/batch/"]
use_device = ["/dev/fuse"]
run_task = [
  { role = "batch", as_user = ["*"], max_cpus = 4, max_mem = "1GiB" },
  { role = "dev*", as_user = ["root"], agent_attributes = { zone = "a" } },
]

[roles.viewer]
view = ["state", "tasks", "usage", "audit"]

[roles.killer]
kill_task = "any"
"#;

fn policy() -> Policy {
    Policy::Enforced(Arc::new(Acl::parse(ACL).expect("the test ACL parses")))
}

fn user(name: &str, groups: &[&str]) -> Identity {
    let groups: Vec<String> = groups.iter().map(|g| (*g).to_string()).collect();
    Identity::user(name, &groups).unwrap()
}

fn task<'a>(role: &'a str, user: &'a str) -> TaskRequest<'a> {
    TaskRequest {
        task_id: "t",
        role,
        user,
        cpus: 1.0,
        mem_bytes: 64 << 20,
        ..Default::default()
    }
}

/// A task or framework owned by `owner` in `role`.
fn target(owner: &'static str, role: &'static str) -> Target<'static> {
    Target { owner, role }
}

fn denied(p: &Policy, who: &Identity, action: &Action<'_>) -> Denied {
    p.check(who, action)
        .expect_err(&format!("{who} should be denied {action:?}"))
}

#[test]
fn permissive_allows_everything() {
    let p = Policy::Permissive;
    assert!(p.check(&user("x", &[]), &Action::Admin).is_ok());
    assert!(p.check(&user("x", &[]), &Action::RegisterAgent).is_ok());
}

#[test]
fn register_agent() {
    let p = policy();
    let agent = Identity::agent("node1").unwrap();
    assert!(p.check(&agent, &Action::RegisterAgent).is_ok());
    let d = denied(&p, &user("alice", &[]), &Action::RegisterAgent);
    assert_eq!(d.permission, "register_agent");
    assert!(
        d.to_string().contains("user:alice lacks register_agent"),
        "{d}"
    );
}

#[test]
fn admin_through_a_group() {
    let p = policy();
    let ops = user("eve", &["ops"]);
    assert!(p.check(&ops, &Action::Admin).is_ok());
    assert!(p.check(&ops, &Action::RegisterAgent).is_ok());
    assert_eq!(
        denied(&p, &user("eve", &[]), &Action::Admin).permission,
        "admin"
    );
}

#[test]
fn subscribe() {
    let p = policy();
    let alice = user("alice", &[]);
    assert!(
        p.check(&alice, &Action::Subscribe { role: "batch" })
            .is_ok()
    );
    assert!(
        p.check(&alice, &Action::Subscribe { role: "dev-x" })
            .is_ok()
    );
    let d = denied(&p, &alice, &Action::Subscribe { role: "prod" });
    assert_eq!(d.permission, "subscribe(role=prod)");
    denied(
        &p,
        &user("carol", &[]),
        &Action::Subscribe { role: "batch" },
    );
    // Nobody named in the ACL: denied everything.
    denied(&p, &user("mallory", &[]), &Action::Subscribe { role: "*" });
}

#[test]
fn run_task_role_user_attributes_and_ceilings() {
    let p = policy();
    let alice = user("alice", &[]);
    assert!(
        p.check(&alice, &Action::RunTask(task("batch", "nobody")))
            .is_ok()
    );
    assert!(p.check(&alice, &Action::RunTask(task("batch", ""))).is_ok());
    // "*" is any user but root.
    let d = denied(&p, &alice, &Action::RunTask(task("batch", "root")));
    assert_eq!(d.permission, "run_task(role=batch, as_user=root)");
    denied(&p, &alice, &Action::RunTask(task("batch", "0:0")));
    // No grant for the role.
    let d = denied(&p, &alice, &Action::RunTask(task("prod", "nobody")));
    assert!(d.permission.starts_with("run_task(role=prod"), "{d}");
    // Ceilings.
    let mut big = task("batch", "nobody");
    big.cpus = 8.0;
    let d = denied(&p, &alice, &Action::RunTask(big));
    assert!(d.to_string().contains("over the limit of 4"), "{d}");
    let mut big = task("batch", "nobody");
    big.mem_bytes = 2 << 30;
    denied(&p, &alice, &Action::RunTask(big));
    // Root in dev roles, only on zone=a agents.
    let zone_a: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
    let zone_b: BTreeMap<String, String> = [("zone".to_string(), "b".to_string())].into();
    let mut on_a = task("dev1", "root");
    on_a.agent_attributes = Some(&zone_a);
    assert!(p.check(&alice, &Action::RunTask(on_a)).is_ok());
    let mut on_b = task("dev1", "root");
    on_b.agent_attributes = Some(&zone_b);
    let d = denied(&p, &alice, &Action::RunTask(on_b));
    assert!(d.to_string().contains("zone=a"), "{d}");
    denied(
        &p,
        &user("carol", &[]),
        &Action::RunTask(task("batch", "nobody")),
    );
}

#[test]
fn volumes_rootfs_and_images() {
    let p = policy();
    let alice = user("alice", &[]);
    let with = |volumes: Vec<(&'static str, bool)>| {
        let mut t = task("batch", "nobody");
        t.volumes = volumes;
        Action::RunTask(t)
    };
    assert!(p.check(&alice, &with(vec![("/srv/data/x", false)])).is_ok());
    assert!(p.check(&alice, &with(vec![("/srv/data", false)])).is_ok());
    assert!(
        p.check(&alice, &with(vec![("/srv/scratch/y", true)]))
            .is_ok()
    );
    let d = denied(&p, &alice, &with(vec![("/srv/data/x", true)]));
    assert_eq!(d.permission, "use_volume(/srv/data/x, rw)");
    denied(&p, &alice, &with(vec![("/srv/database", false)]));
    denied(&p, &alice, &with(vec![("/", true)]));
    denied(&p, &alice, &with(vec![("/srv/data/../../etc", false)]));

    let mut t = task("batch", "nobody");
    t.rootfs = Some("/srv/rootfs/debian");
    assert!(p.check(&alice, &Action::RunTask(t.clone())).is_ok());
    t.rootfs = Some("/");
    assert_eq!(
        denied(&p, &alice, &Action::RunTask(t)).permission,
        "use_rootfs(/)"
    );

    let mut t = task("batch", "nobody");
    t.image = Some("registry.example.com/batch/app:1");
    assert!(p.check(&alice, &Action::RunTask(t.clone())).is_ok());
    t.image = Some("docker.io/library/debian");
    assert!(
        denied(&p, &alice, &Action::RunTask(t))
            .permission
            .starts_with("use_image(")
    );
}

#[test]
fn devices_are_granted_by_exact_path() {
    let p = policy();
    let alice = user("alice", &[]);
    let with = |devices: Vec<&'static str>| {
        let mut t = task("batch", "nobody");
        t.devices = devices;
        Action::RunTask(t)
    };
    assert!(p.check(&alice, &with(vec!["/dev/fuse"])).is_ok());
    assert!(p.check(&alice, &with(vec!["/dev/fuse/"])).is_ok());
    let d = denied(&p, &alice, &with(vec!["/dev/fuse", "/dev/sda"]));
    assert_eq!(d.permission, "use_device(/dev/sda)");
    denied(&p, &alice, &with(vec!["/dev/fuse/../sda"]));
    denied(&p, &user("carol", &[]), &with(vec!["/dev/fuse"]));
    let e = Acl::parse("[roles.x]\nuse_device = [\"/etc/passwd\"]").unwrap_err();
    assert!(e.contains("use_device[0]") && e.contains("/dev"), "{e}");
}

#[test]
fn kill_and_teardown_scopes() {
    let p = policy();
    let alice = user("alice", &[]);
    let own = target("user:alice", "batch");
    let same_role = target("user:bob", "batch");
    let other = target("user:bob", "prod");
    assert!(p.check(&alice, &Action::KillTask(own)).is_ok());
    let d = denied(&p, &alice, &Action::KillTask(same_role));
    assert_eq!(d.permission, "kill_task(role)");
    let dave = user("dave", &[]);
    assert!(p.check(&dave, &Action::KillTask(other)).is_ok());
    assert_eq!(
        denied(&p, &user("carol", &[]), &Action::KillTask(own)).permission,
        "kill_task(any)"
    );

    assert!(
        p.check(&alice, &Action::TeardownFramework(same_role))
            .is_ok()
    );
    assert_eq!(
        denied(&p, &alice, &Action::TeardownFramework(other)).permission,
        "teardown_framework(any)"
    );
    denied(&p, &dave, &Action::TeardownFramework(other));
}

#[test]
fn views() {
    let p = policy();
    let alice = user("alice", &[]);
    let carol = user("carol", &[]);
    let batch = target("user:bob", "batch");
    let prod = target("user:bob", "prod");
    let mine = target("user:alice", "prod");
    let view = |what, target| Action::View { what, target };
    assert!(p.check(&carol, &view(ViewKind::State, None)).is_ok());
    assert!(p.check(&carol, &view(ViewKind::Audit, None)).is_ok());
    assert!(p.check(&carol, &view(ViewKind::Tasks, Some(prod))).is_ok());
    denied(&p, &carol, &view(ViewKind::Sandbox, Some(prod)));
    assert!(
        p.check(&alice, &view(ViewKind::Sandbox, Some(batch)))
            .is_ok()
    );
    assert_eq!(
        denied(&p, &alice, &view(ViewKind::Sandbox, Some(prod))).permission,
        "view(sandbox:prod)"
    );
    assert_eq!(
        denied(&p, &alice, &view(ViewKind::State, None)).permission,
        "view(state)"
    );
    denied(&p, &alice, &view(ViewKind::Usage, Some(prod)));
    // Owners see their own tasks, usage and sandboxes.
    for what in [ViewKind::Tasks, ViewKind::Usage, ViewKind::Sandbox] {
        assert!(p.check(&alice, &view(what, Some(mine))).is_ok());
    }
    denied(&p, &alice, &view(ViewKind::Audit, Some(mine)));
}

#[test]
fn root_users() {
    for root in ["root", "0", "root:root", "0:0"] {
        assert!(is_root_user(root), "{root}");
    }
    for other in ["nobody", "1000", "rooted", "10:0"] {
        assert!(!is_root_user(other), "{other}");
    }
}

#[test]
fn the_documented_example_parses() {
    let acl = Acl::parse(include_str!("../../../docs/acl.example.toml"))
        .expect("docs/acl.example.toml parses");
    let p = Policy::Enforced(Arc::new(acl));
    let ci = user("ci", &[]);
    assert!(p.check(&ci, &Action::Subscribe { role: "batch" }).is_ok());
    assert!(
        p.check(
            &ci,
            &Action::View {
                what: ViewKind::State,
                target: None
            }
        )
        .is_ok()
    );
    denied(
        &p,
        &user("stranger", &[]),
        &Action::Subscribe { role: "batch" },
    );
}
