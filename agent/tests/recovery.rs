//! Agent restarts: the `cella-agent` binary killed with SIGKILL and started again on
//! the same work directory, with a real in-process master, real shims and cgroups.
//! Needs root and `cella-shim` (`cargo build --workspace --bins`).

mod common;

use std::time::Duration;

use cella_agent::status_updates::RETRY_TICK;
use cella_agent::status_updates::queue::RETRY_MIN;
use cella_agent::store::Write;
use cella_agent::{Agent, AgentConfig, AgentError};
use cella_proto::time::now_ns;
use cella_proto::v1;
use common::restart::{Env, Launched, alive, processes, shim_pid, wait_until};
use common::{WAIT, task};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_reattaches_to_its_running_task() {
    let env = Env::new().await;
    let cmd = ["sleep", "1001"];
    let Launched {
        mut agent,
        mut s,
        agent_id,
        shim,
    } = env.launch_running("sleeper", &cmd).await;
    assert_eq!(processes(&cmd).len(), 1);

    agent.kill9();
    assert!(alive(shim), "the task's shim died with the agent");
    let agent = env.spawn(&[]);

    // The new agent re-attached: it samples the task (its own API shows usage).
    let url = format!("https://127.0.0.1:{}/api/v1/containers", agent.port);
    let tls = env.agent_tls();
    wait_until("usage of the recovered task", async || {
        let Ok(list) = cella_proto::tls::https_get_json::<serde_json::Value>(&url, &tls).await
        else {
            return false;
        };
        list.as_array().is_some_and(|l| {
            l.iter().any(|c| {
                c["task_id"] == "sleeper"
                    && c["state"] == "RUNNING"
                    && c["usage"]["mem_current_bytes"].is_u64()
            })
        })
    })
    .await;
    // The master shows it RUNNING, with usage, on the same agent.
    wait_until("the task RUNNING at the master with usage", async || {
        let t = env.master_task("sleeper").await;
        t["state"] == "RUNNING" && t["agent_id"] == agent_id.as_str() && t["usage"].is_object()
    })
    .await;
    assert_eq!(shim_pid(&env.run_dir("sleeper")), shim);
    assert!(alive(shim));
    assert_eq!(processes(&cmd).len(), 1, "a second copy runs");
    // Nothing but STARTING and RUNNING was ever reported (once the new agent has
    // nothing left to say).
    env.settle(&agent, &mut s).await;
    assert!(
        s.states("sleeper")
            .iter()
            .all(|st| matches!(st, v1::TaskState::TaskStarting | v1::TaskState::TaskRunning)),
        "{:?}\n{}",
        s.states("sleeper"),
        agent.log()
    );

    // The recovered task is monitored as usual: a kill ends it with KILLED.
    s.kill("sleeper");
    let end = s.wait_terminal("sleeper").await;
    assert_eq!(end.state(), v1::TaskState::TaskKilled, "{end:?}");
    env.stop_once_task_gone(agent, "sleeper", &cmd, shim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ended_while_the_agent_was_down_reports_its_exit_code_once() {
    let env = Env::new().await;
    let Launched { mut s, .. } = env
        .launch_running_then_kill9("exit3", &["sh", "-c", "sleep 1; exit 3"])
        .await;
    // The shim records the exit status while no agent runs.
    let exit_status = env.run_dir("exit3").exit_status();
    wait_until("the task to end while the agent is down", async || {
        exit_status.exists()
    })
    .await;
    let (agent, end) = env
        .respawn_until_end(&mut s, "exit3", v1::TaskState::TaskFailed)
        .await;
    assert_eq!(end.exit_code, Some(3), "{end:?}");
    assert_eq!(end.reason(), v1::Reason::CommandExited);
    assert_eq!(end.message, "exited with code 3");
    // Acknowledged (auto_ack): no further re-send, even after twice the first
    // re-send delay.
    env.settle(&agent, &mut s).await;
    let after_ack = s.updates["exit3"].len();
    s.drain_for(RETRY_MIN * 2 + RETRY_TICK).await;
    let terminal: Vec<&v1::TaskStatus> = s.updates["exit3"]
        .iter()
        .filter(|u| u.state() == v1::TaskState::TaskFailed)
        .collect();
    assert_eq!(
        s.updates["exit3"].len(),
        after_ack,
        "re-sent after acknowledgement"
    );
    assert!(terminal.iter().all(|u| u.uuid == end.uuid), "{terminal:?}");
    assert!(terminal.len() <= 2, "{terminal:?}");
    let t = env.master_task("exit3").await;
    assert_eq!(t["state"], "FAILED", "{t}");
    assert_eq!(t["exit_code"], 3, "{t}");
    // Nothing is left of it but its sandbox (until it is collected).
    assert!(common::restart::task_cgroups(&env.cgroup, "exit3").is_empty());
    assert!(!env.run_dir("exit3").path().exists());
    drop(agent);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_reboot_reports_lost_and_leaves_nothing_behind() {
    let env = Env::new().await;
    let cmd = ["sleep", "1003"];
    let Launched { mut s, shim, .. } = env.launch_running_then_kill9("rebooted", &cmd).await;

    // "Reboot": another boot id in the checkpoint, an empty runtime dir.
    let before = env
        .edit_checkpoint(|_| vec![Write::BootId("a-previous-boot".into())])
        .await;
    assert!(before.boot_id.is_some());
    std::fs::remove_dir_all(env.runtime_dir()).expect("empty the runtime dir");
    std::fs::create_dir_all(env.runtime_dir()).expect("runtime dir");

    let (agent, end) = env
        .respawn_until_end(&mut s, "rebooted", v1::TaskState::TaskLost)
        .await;
    assert_eq!(end.reason(), v1::Reason::AgentRestarted);
    assert_eq!(end.message, "the machine rebooted");
    env.assert_task_gone("rebooted", &cmd, shim).await;
    drop(agent);
    // The new boot id is stored.
    let cp = env.checkpoint().await;
    assert_eq!(cp.boot_id, cella_agent::recovery::boot_id());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_checkpoint_stops_a_strict_agent() {
    let env = Env::new().await;
    std::fs::create_dir_all(cella_agent::paths::meta_dir(&env.work_dir())).unwrap();
    let file = cella_agent::paths::checkpoint_file(&env.work_dir());
    std::fs::write(&file, vec![0x5a_u8; 8192]).unwrap();

    let err = Agent::start(env.in_process_config())
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(
        text.contains("--strict=false") && text.contains("aside"),
        "{text}"
    );
    assert_eq!(err.exit_code(), 1);

    // The binary says the same and exits with 1.
    let mut p = env.spawn(&[]);
    assert_eq!(p.wait_exit(WAIT), Some(1));
    assert!(p.log().contains("agent.redb"), "{}", p.log());

    let config = AgentConfig {
        strict: false,
        ..env.in_process_config()
    };
    let agent = Agent::start(config)
        .await
        .expect("starts with --strict=false");
    let url = format!("https://{}/metrics", agent.http_addr());
    // The API answers once the master's access policy arrived (the checkpoint that
    // held the last one was set aside).
    let mut text = String::new();
    wait_until("the agent's metrics", async || {
        let r =
            cella_proto::tls::https_request(axum::http::Method::GET, &url, None, &env.agent_tls())
                .await
                .unwrap();
        text = String::from_utf8_lossy(&r.body).to_string();
        r.status.is_success()
    })
    .await;
    assert!(
        text.contains("cella_agent_recovery_errors_total 1"),
        "{text}"
    );
    agent.shutdown(true).await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_work_dir_refuses_to_start() {
    let env = Env::new().await;
    let first = Agent::start(env.in_process_config()).await.expect("first");
    let err = Agent::start(env.in_process_config())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&err, AgentError::Locked { pid: Some(p), .. } if *p == i32::try_from(std::process::id()).unwrap()),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&env.work_dir().display().to_string()),
        "{text}"
    );
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    // The binary too.
    let mut p = env.spawn(&[]);
    assert_eq!(p.wait_exit(WAIT), Some(1));
    assert!(
        p.log().contains("is in use by another agent"),
        "{}",
        p.log()
    );
    first.shutdown(true).await.unwrap();
    // Free again.
    let again = Agent::start(env.in_process_config())
        .await
        .expect("after the first stopped");
    again.shutdown(true).await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_cleanup_kills_the_tasks_reports_them_and_exits() {
    let env = Env::new().await;
    let cmd = ["sleep", "1006"];
    let Launched { mut s, shim, .. } = env.launch_running_then_kill9("doomed", &cmd).await;
    let mut cleanup = env.spawn(&["--recover", "cleanup"]);
    let end = tokio::time::timeout(WAIT, s.wait_terminal("doomed"))
        .await
        .unwrap_or_else(|_| panic!("no end: {}", cleanup.log()));
    assert_eq!(
        end.state(),
        v1::TaskState::TaskKilled,
        "{end:?}\n{}",
        cleanup.log()
    );
    assert_eq!(end.reason(), v1::Reason::AgentRestarted);
    assert_eq!(cleanup.wait_exit(WAIT), Some(0), "{}", cleanup.log());
    env.assert_task_gone("doomed", &cmd, shim).await;
    env.stop().await;
}

/// A sandbox stays for `--gc-delay` after its task ended, then goes; the sandbox of
/// a running task stays however long it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_of_ended_tasks_are_collected_after_the_delay() {
    let delay = Duration::from_secs(1);
    // A work directory of its own, nearly empty: the host's disk, however full, does
    // not make the collector remove sandboxes early.
    let env = Env::on_small_work_fs("256m").await;
    let (agent, mut s, agent_id) = env.start_with_scheduler(&["--gc-delay", "1s"]).await;
    s.launch(
        &agent_id,
        vec![
            task("quick", &["true"], 16 << 20),
            task("stays", &["sleep", "1007"], 16 << 20),
        ],
    )
    .await;
    let end = s.wait_terminal("quick").await;
    s.wait_for("stays", WAIT, |st| st.state() == v1::TaskState::TaskRunning)
        .await;
    env.wait_sandbox_gone("quick").await;
    // Not before the delay: the end is stamped before it is reported.
    let gone_after = Duration::from_nanos(now_ns().saturating_sub(end.timestamp_ns));
    assert!(gone_after >= delay, "removed {gone_after:?} after the end");

    // A task that ends later goes after its own delay, by a later sweep; the running
    // task's sandbox has stayed through all of them.
    s.launch(&agent_id, vec![task("later", &["true"], 16 << 20)])
        .await;
    s.wait_terminal("later").await;
    env.wait_sandbox_gone("later").await;
    assert!(env.sandbox("stays").exists(), "{}", agent.log());
    s.kill("stays");
    s.wait_terminal("stays").await;
    drop(agent);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_run_directory_is_reported_lost_and_cleaned() {
    let env = Env::new().await;
    let cmd = ["sleep", "1008"];
    let Launched { mut s, shim, .. } = env.launch_running_then_kill9("no-rundir", &cmd).await;
    std::fs::remove_dir_all(env.run_dir("no-rundir").path()).expect("remove run dir");

    let (agent, end) = env
        .respawn_until_end(&mut s, "no-rundir", v1::TaskState::TaskLost)
        .await;
    assert_eq!(end.reason(), v1::Reason::AgentRestarted);
    assert!(end.message.contains("run directory"), "{}", end.message);
    env.stop_once_task_gone(agent, "no-rundir", &cmd, shim)
        .await;
}

/// A kill is checkpointed before it is delivered. Here the agent crashed in between
/// (the checkpoint says "kill requested", the task still runs): the restarted agent
/// kills it and reports KILLED by request, not a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_requested_before_a_crash_is_carried_out_after_it() {
    let env = Env::new().await;
    let cmd = ["sleep", "1005"];
    let Launched { mut s, shim, .. } = env.launch_running_then_kill9("doomed", &cmd).await;
    env.edit_checkpoint(|cp| {
        let (id, record) = cp
            .tasks
            .iter()
            .find(|(id, _)| id == "doomed")
            .expect("the task's record");
        assert!(!record.kill_requested);
        let mut record = record.clone();
        record.kill_requested = true;
        vec![Write::PutTask(id.clone(), Box::new(record))]
    })
    .await;
    assert!(alive(shim), "the task still runs");

    let (agent, end) = env
        .respawn_until_end(&mut s, "doomed", v1::TaskState::TaskKilled)
        .await;
    assert_eq!(end.reason(), v1::Reason::KilledByRequest, "{end:?}");
    env.stop_once_task_gone(agent, "doomed", &cmd, shim).await;
}

/// A checkpoint cut short (a disk that filled up, a bad copy): a strict agent stops
/// and touches nothing; `--strict=false` sets it aside and starts afresh, and the
/// task it can no longer account for is removed and reported LOST by the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_checkpoint_is_refused_or_set_aside() {
    let env = Env::new().await;
    let cmd = ["sleep", "1006"];
    let Launched { shim, .. } = env.launch_running_then_kill9("cut", &cmd).await;
    let file = cella_agent::paths::checkpoint_file(&env.work_dir());
    let len = std::fs::metadata(&file).expect("agent.redb").len();
    // Cut to its first page: the header stays, the tables are gone (where the live
    // pages are in a file redb grew depends on how many transactions it saw).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(len.min(4096)))
        .expect("truncating agent.redb");

    let mut strict = env.spawn(&[]);
    assert_eq!(strict.wait_exit(WAIT), Some(1), "{}", strict.log());
    assert!(strict.log().contains("agent.redb"), "{}", strict.log());
    assert!(alive(shim), "a refused start touches no task");

    // Set aside, the agent starts afresh (under a new agent id: the master reports
    // the old one's tasks LOST when its agent timeout passes) and removes the task
    // it can no longer account for.
    let lenient = env.spawn(&["--strict=false"]);
    env.assert_task_gone("cut", &cmd, shim).await;
    assert!(lenient.log().contains("moved aside"), "{}", lenient.log());
    assert!(
        env.damaged_checkpoint_kept(),
        "the damaged checkpoint is kept for inspection"
    );
    drop(lenient);
    env.stop().await;
}

/// The work directory's filesystem more than 90% full: sandboxes of ended tasks go
/// before their `--gc-delay`, oldest first, until it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_go_early_when_the_disk_is_almost_full() {
    // 16 MiB for the checkpoint (~0.1 MiB) and three sandboxes of 5 MiB of output
    // each: ~94% full.
    let env = Env::on_small_work_fs("16m").await;
    let (agent, mut s, agent_id) = env.start_with_scheduler(&["--gc-delay", "1h"]).await;
    for id in ["fill-1", "fill-2", "fill-3"] {
        let cmd = ["head", "-c", "5242880", "/dev/zero"];
        s.launch(&agent_id, vec![task(id, &cmd, 32 << 20)]).await;
        let end = s.wait_terminal(id).await;
        assert_eq!(end.state(), v1::TaskState::TaskFinished, "{end:?}");
    }
    eprintln!(
        "work directory {:.1}% full",
        env.work_fs_used_share() * 100.0
    );
    // The oldest goes early: its delay of an hour has not passed.
    env.wait_sandbox_gone("fill-1").await;
    assert!(
        env.sandbox("fill-2").exists() && env.sandbox("fill-3").exists(),
        "only as many as needed go, oldest first\n{}",
        agent.log()
    );
    let used = env.work_fs_used_share();
    assert!(used <= 0.9, "{used}");
    assert!(
        agent.log().contains("more than 90% full"),
        "the agent says why:\n{}",
        agent.log()
    );
    drop(agent);
    env.stop().await;
}

/// SIGTERM stops the agent (status 0) without killing its tasks: they keep running
/// under their shims, and the next agent re-attaches to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_agent_and_leaves_its_tasks_running() {
    let env = Env::new().await;
    let cmd = ["sleep", "1009"];
    let Launched {
        mut agent,
        mut s,
        shim,
        ..
    } = env.launch_running("stays-up", &cmd).await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(WAIT), Some(0), "{}", agent.log());
    assert!(
        agent.log().contains("tasks keep running"),
        "{}",
        agent.log()
    );
    assert!(alive(shim), "the task's shim died with the agent");
    assert_eq!(processes(&cmd).len(), 1);

    let agent = env.spawn(&[]);
    let tls = env.agent_tls();
    wait_until("the new agent to register", async || {
        agent
            .health(&tls)
            .await
            .is_some_and(|h| h["master_connected"] == true)
    })
    .await;
    s.kill("stays-up");
    let end = s.wait_terminal("stays-up").await;
    assert_eq!(
        (end.state(), end.reason()),
        (v1::TaskState::TaskKilled, v1::Reason::KilledByRequest),
        "{end:?}\n{}",
        agent.log()
    );
    env.stop_once_task_gone(agent, "stays-up", &cmd, shim).await;
}
