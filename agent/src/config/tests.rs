use super::*;
use proptest::prelude::*;

/// Why `args` do not resolve without a configuration file.
fn flags_error(args: AgentArgs) -> ConfigError {
    args.resolve_with(&AgentArgs::default(), None).unwrap_err()
}

/// Why the configuration file `source` holding `text` does not resolve.
fn file_error(text: &str, source: &str) -> ConfigError {
    let file = AgentArgs::parse_file(text).unwrap();
    AgentArgs::default()
        .resolve_with(&file, Some(Path::new(source)))
        .unwrap_err()
}

/// Every key documented in the shipped /etc/cella/agent.toml, uncommented, is one
/// the agent accepts, and the file resolves as it is.
#[test]
fn the_shipped_file_documents_known_keys() {
    let text = include_str!("../../../systemd/agent.toml");
    let keys: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')))
        .map(|l| format!("{l}\n"))
        .collect();
    let file = AgentArgs::parse_file(&keys).unwrap_or_else(|e| panic!("{keys}\n{e}"));
    assert_eq!(file.log_level.as_deref(), Some("info"));
    assert!(file.task_user.is_some() && !file.allow_volumes.is_empty());
    let shipped = AgentArgs::parse_file(text).expect("agent.toml parses");
    let config = AgentArgs::default()
        .resolve_with(&shipped, Some(Path::new("agent.toml")))
        .expect("agent.toml resolves");
    assert_eq!(config.master, DEFAULT_MASTER);
    assert_eq!(
        config.reload_log_level_from.as_deref(),
        Some(Path::new("agent.toml"))
    );
}

#[test]
fn resource_strings() {
    let spec = parse_resources("cpus:4;mem:8GiB;disk:20GiB", false).unwrap();
    assert_eq!(spec.cpus, Some(MilliCpus(4000)));
    assert_eq!(spec.mem_bytes, Some(8 << 30));
    assert_eq!(spec.disk_bytes, Some(20 << 30));
    let spec = parse_resources(" mem : 512MiB ", false).unwrap();
    assert_eq!(spec.mem_bytes, Some(512 << 20));
    assert_eq!(spec.cpus, None);
    assert_eq!(parse_resources("", false).unwrap(), ResourceSpec::default());
    let spec = parse_resources("cpus:0;mem:0;disk:1GiB", true).unwrap();
    assert_eq!(spec.cpus, Some(MilliCpus(0)));
    assert_eq!(spec.mem_bytes, Some(0));
    for bad in [
        "cpus",
        "cpus:x",
        "cpus:0",
        "gpus:1",
        "mem:1;mem:2",
        "mem:-1",
        "disk:10XB",
    ] {
        let err = parse_resources(bad, false).unwrap_err();
        assert!(!err.is_empty(), "{bad:?}");
    }
    assert!(
        parse_resources("gpus:1", false)
            .unwrap_err()
            .contains("cpus, mem and disk")
    );
}

#[test]
fn attributes() {
    assert_eq!(
        parse_attributes("rack=r1,zone=z1").unwrap(),
        vec![("rack".into(), "r1".into()), ("zone".into(), "z1".into())]
    );
    assert!(parse_attributes("").unwrap().is_empty());
    for bad in ["rack", "=x", "a=1,a=2", "a b=1"] {
        assert!(parse_attributes(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
    for bad in ["", "0", "1x", "-1s", "s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn flags_win_over_the_file() {
    let file = AgentArgs::parse_file(
        r#"
master = "https://master.example:5050"
work_dir = "/srv/agent"
resources = "cpus:2"
attributes = { rack = "r9" }
usage_interval = "5s"
"#,
    )
    .unwrap();
    let args = AgentArgs {
        work_dir: Some("/tmp/w".into()),
        http_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let c = args.resolve_with(&file, Some(Path::new("a.toml"))).unwrap();
    assert_eq!(c.master, "https://master.example:5050");
    assert_eq!(c.work_dir, PathBuf::from("/tmp/w"));
    assert_eq!(c.resources.cpus, Some(MilliCpus(2000)));
    assert_eq!(c.attributes, vec![("rack".into(), "r9".into())]);
    assert_eq!(c.usage_interval, Duration::from_secs(5));
    assert_eq!(c.http_listen.port(), 0);
    assert_eq!(c.reserve.mem_bytes, Some(256 << 20));
}

#[test]
fn errors_name_the_field() {
    let err = file_error("resources = \"cpus:lots\"", "/etc/a.toml");
    assert_eq!(err.field, "resources (in /etc/a.toml)");
    let err = flags_error(AgentArgs {
        master: Some("http://x:1".into()),
        ..Default::default()
    });
    assert_eq!(err.field, "--master");
    assert!(err.message.contains("https://"));
    assert_eq!(
        flags_error(AgentArgs {
            http_listen: Some("localhost".into()),
            ..Default::default()
        })
        .field,
        "--http-listen"
    );
    assert!(AgentArgs::parse_file("wrok_dir = \"/x\"").is_err());
    // Flags only: the file cannot name another file nor use the negated switch.
    for key in ["config = \"/x\"", "no_strict = true"] {
        assert!(AgentArgs::parse_file(key).is_err(), "{key}");
    }
    // Attributes from the flag are checked and named as the flag; from the file, as
    // the key and its file.
    let err = flags_error(AgentArgs {
        attributes: Some("rack".parse().unwrap()),
        ..Default::default()
    });
    assert_eq!(err.field, "--attributes");
    let err = file_error("attributes = { \"\" = \"r1\" }", "agent.toml");
    assert_eq!(err.field, "attributes (in agent.toml)");
    let err = flags_error(AgentArgs {
        recover: Some("restart".into()),
        ..Default::default()
    });
    assert_eq!(err.field, "--recover");
}

#[test]
fn task_policy_settings() {
    let c = AgentArgs::default()
        .resolve_with(&AgentArgs::default(), None)
        .unwrap();
    assert_eq!(c.tasks, TaskPolicy::default());
    assert_eq!(c.tasks.task_user, "nobody");
    let file = AgentArgs::parse_file(
        r#"
task_user = "1000"
allow_root_tasks = true
allow_volumes = ["/srv/data:rw", "/srv/ref"]
allow_rootfs = ["/srv/rootfs"]
allow_devices = ["/dev/fuse"]
acl = "/etc/cella/agent-acl.toml"
credentials = "/etc/cella/agent-credentials.toml"
"#,
    )
    .unwrap();
    let c = AgentArgs::default().resolve_with(&file, None).unwrap();
    assert_eq!(c.tasks.task_user, "1000");
    assert!(c.tasks.allow_root);
    assert_eq!(
        c.tasks.volumes,
        vec![
            VolumeAllow {
                prefix: "/srv/data".into(),
                read_write: true
            },
            VolumeAllow {
                prefix: "/srv/ref".into(),
                read_write: false
            }
        ]
    );
    assert_eq!(c.tasks.rootfs, vec![PathBuf::from("/srv/rootfs")]);
    assert_eq!(c.tasks.devices, vec![PathBuf::from("/dev/fuse")]);
    let err = flags_error(AgentArgs {
        allow_devices: vec!["/etc/passwd".into()],
        ..Default::default()
    });
    assert_eq!(err.field, "--allow-device");
    assert_eq!(c.acl, Some(PathBuf::from("/etc/cella/agent-acl.toml")));
    // Flags win over the file.
    let args = AgentArgs {
        allow_volumes: vec!["/scratch:rw".into()],
        ..Default::default()
    };
    let c = args.resolve_with(&file, None).unwrap();
    assert_eq!(c.tasks.volumes.len(), 1);
    let err = flags_error(AgentArgs {
        allow_volumes: vec!["data".into()],
        ..Default::default()
    });
    assert_eq!(err.field, "--allow-volume");
    let err = file_error("allow_volumes = [\"rel\"]", "a.toml");
    assert_eq!(err.field, "allow_volumes (in a.toml)");
    assert_eq!(
        flags_error(AgentArgs {
            task_user: Some("a:b:c".into()),
            ..Default::default()
        })
        .field,
        "--task-user"
    );
}

#[test]
fn recovery_flags() {
    let c = AgentArgs::default()
        .resolve_with(&AgentArgs::default(), None)
        .unwrap();
    assert_eq!(c.recover, RecoverMode::Reconnect);
    assert!(c.strict);
    assert_eq!(c.gc_delay, Duration::from_secs(3600));
    let args = AgentArgs {
        recover: Some("cleanup".into()),
        no_strict: true,
        gc_delay: Some("10m".into()),
        ..Default::default()
    };
    let c = args.resolve_with(&AgentArgs::default(), None).unwrap();
    assert_eq!(c.recover, RecoverMode::Cleanup);
    assert!(!c.strict);
    assert_eq!(c.gc_delay, Duration::from_secs(600));
    let file = AgentArgs::parse_file("strict = false").unwrap();
    assert!(
        !AgentArgs::default()
            .resolve_with(&file, None)
            .unwrap()
            .strict
    );
}

proptest! {
    #[test]
    fn resource_parser_never_panics(s in "\\PC{0,40}") {
        let _ = parse_resources(&s, false);
        let _ = parse_resources(&s, true);
        let _ = parse_attributes(&s);
        let _ = parse_duration(&s);
    }

    #[test]
    fn resource_parser_structured(key in "(cpus|mem|disk|x)", value in "[0-9.]{0,8}[A-Za-z]{0,3}") {
        let _ = parse_resources(&format!("{key}:{value}"), false);
        let _ = parse_resources(&format!("{key}:{value};{key}:{value}"), true);
    }

    #[test]
    fn toml_parser_never_panics(s in "\\PC{0,80}") {
        let _ = AgentArgs::parse_file(&s);
    }

    #[test]
    fn toml_values_never_panic(key in "(master|resources|reserve|attributes|http_listen|usage_interval|hostname)", value in "[ -~]{0,20}") {
        let text = format!("{key} = {value:?}");
        if let Ok(file) = AgentArgs::parse_file(&text) {
            let _ = AgentArgs::default().resolve_with(&file, None);
        }
    }
}

#[test]
fn default_task_limits() {
    let c = AgentArgs::default()
        .resolve_with(&AgentArgs::default(), None)
        .unwrap();
    assert_eq!(c.tasks.default_pids, 4096);
    assert_eq!(c.tasks.default_disk_bytes, 10 << 30);
    let file = AgentArgs::parse_file("default_pids_limit = 100\ndefault_disk = \"1GiB\"").unwrap();
    let c = AgentArgs::default().resolve_with(&file, None).unwrap();
    assert_eq!(
        (c.tasks.default_pids, c.tasks.default_disk_bytes),
        (100, 1 << 30)
    );
    // A task that sets neither gets them; one that sets them keeps its own.
    let mut info = cella_proto::v1::TaskInfo::default();
    c.tasks.apply_defaults(&mut info);
    assert_eq!(info.pids_limit, 100);
    assert_eq!(info.resources.unwrap().disk_bytes, 1 << 30);
    let mut info = cella_proto::v1::TaskInfo {
        pids_limit: 7,
        resources: Some(cella_proto::v1::Resources {
            disk_bytes: 5,
            ..Default::default()
        }),
        ..Default::default()
    };
    c.tasks.apply_defaults(&mut info);
    assert_eq!(
        (info.pids_limit, info.resources.unwrap().disk_bytes),
        (7, 5)
    );
    // 0 would mean unlimited: refused, naming the setting.
    let err = flags_error(AgentArgs {
        default_pids_limit: Some(0),
        ..Default::default()
    });
    assert_eq!(err.field, "--default-pids-limit");
    let err = file_error("default_disk = \"0\"", "a.toml");
    assert_eq!(err.field, "default_disk (in a.toml)");
    let err = flags_error(AgentArgs {
        default_disk: Some("lots".into()),
        ..Default::default()
    });
    assert_eq!(err.field, "--default-disk");
}
