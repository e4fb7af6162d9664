//! Re-attaching to tasks after the launcher (the agent) went away: real shims, real
//! cgroups, a launcher that is dropped without collecting its task.

mod common;

use std::time::{Duration, Instant};

use cella_containerizer::{Containerizer, Recovered, TaskConfig, TaskId};

/// A launcher: a workspace of its own whose containerizers launch tasks and go away.
struct Launcher {
    ws: common::Workspace,
}

impl Launcher {
    fn new() -> Self {
        Self {
            ws: common::Workspace::new("r"),
        }
    }

    /// A fresh containerizer on the same runtime dir: what an agent restart creates.
    fn containerizer(&self) -> Containerizer {
        self.ws.containerizer()
    }

    /// Launches task `name` running `script`, then the containerizer that launched it
    /// goes away as a dying agent's does: nothing is collected, the shim and the task
    /// go on.
    fn launch_and_leave(&self, name: &str, script: &str) -> Left {
        let (id, config) = self.task(name, script);
        let first = self.containerizer();
        let running = first.launch(&id, &config).expect("launch");
        let left = Left {
            task_pid: running.pid,
            shim_pid: running.shim_pid(),
            shim_start_time: running.shim_start_time(),
            id,
            config,
        };
        drop(running);
        drop(first);
        left
    }

    fn task(&self, name: &str, script: &str) -> (TaskId, TaskConfig) {
        self.ws.sh_task(name, script)
    }
}

/// A task whose launcher went away.
struct Left {
    id: TaskId,
    config: TaskConfig,
    task_pid: i32,
    shim_pid: i32,
    shim_start_time: u64,
}

#[test]
fn a_running_task_is_re_attached_and_can_be_killed() {
    let l = Launcher::new();
    let t = l.launch_and_leave("t-running", "echo up; exec sleep 1000");
    let shim = (t.shim_pid, t.shim_start_time);
    assert!(shim.1 > 0, "the shim's start time is known");

    let second = l.containerizer();
    // A checkpoint that names another shim: this run directory is not the task's.
    match second.recover(&t.id, &t.config, Some((shim.0, shim.1 + 1))) {
        Recovered::Unknown(why) => assert!(why.contains("not the task's own"), "{why}"),
        _ => panic!("re-attached to a shim the checkpoint does not name"),
    }
    let Recovered::Running(mut running) = second.recover(&t.id, &t.config, Some(shim)) else {
        panic!("a live task must be re-attached");
    };
    assert_eq!(running.shim_start_time(), shim.1);
    assert_eq!(running.pid, t.task_pid, "the same task, not a new one");
    assert!(
        !second.wait(&mut running, Duration::from_millis(200)),
        "the task still runs"
    );
    let usage = second.sample(&mut running);
    assert!(
        usage.pids_current.is_some_and(|n| n >= 1),
        "usage still measured: {usage:?}"
    );
    second.kill(&running).expect("kill");
    let end = second.finish(running);
    assert_eq!(
        end.status.signal,
        Some(9),
        "killed by SIGKILL: {:?}",
        end.status
    );
    let out = std::fs::read_to_string(l.ws.dir.path().join("t-running/stdout")).expect("stdout");
    assert_eq!(out, "up\n");
}

/// The launcher may die right after starting the shim, before the shim has written
/// its pid: the shim's lock (inherited from the launcher) tells recovery to wait for
/// it instead of taking the task for gone.
#[test]
fn a_shim_that_has_not_written_its_pid_yet_is_waited_for() {
    let l = Launcher::new();
    let t = l.launch_and_leave("t-starting", "exec sleep 1000");

    // Only the shim holds the lock; the task did not inherit it.
    let run = l.ws.dir.path().join("run/tasks/t-starting");
    let holds_lock = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == run.join("spec.json")))
    };
    assert!(
        holds_lock(t.shim_pid),
        "the shim holds the lock on spec.json"
    );
    assert!(
        !holds_lock(t.task_pid),
        "the task must not inherit the lock on spec.json"
    );

    // As if the shim had not written its pid yet: it appears 300 ms into recovery. (The
    // pause is the scenario, a shim slow to start, not a wait for something.)
    let pid_file = run.join("shim.pid");
    let hidden = run.join("shim.pid.hidden");
    std::fs::rename(&pid_file, &hidden).expect("hiding shim.pid");
    let restore = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::rename(&hidden, &pid_file).expect("restoring shim.pid");
    });
    let second = l.containerizer();
    let recovered = second.recover(&t.id, &t.config, None);
    restore.join().expect("restore thread");
    let Recovered::Running(running) = recovered else {
        panic!("a starting shim (its lock held) was taken for gone");
    };
    assert_eq!(running.shim_pid(), t.shim_pid);
    second.kill(&running).expect("kill");
    let end = second.finish(running);
    assert_eq!(end.status.signal, Some(9), "{:?}", end.status);
}

#[test]
fn a_task_that_ended_meanwhile_reports_its_real_exit_code() {
    let l = Launcher::new();
    let t = l.launch_and_leave("t-ended", "sleep 0.3; exit 7");
    // Wait for the shim to finish on its own (it records the exit status).
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(t.shim_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = l.containerizer();
    match second.recover(&t.id, &t.config, None) {
        Recovered::Ended(end) => assert_eq!(end.status.code, Some(7), "{:?}", end.status),
        Recovered::Running(_) => panic!("the task had ended"),
        Recovered::Unknown(why) => panic!("the exit status was recorded, yet: {why}"),
    }
    // Until the caller has recorded the outcome and destroys the task, a second
    // recovery (after another crash) finds the same outcome.
    match second.recover(&t.id, &t.config, None) {
        Recovered::Ended(end) => assert_eq!(end.status.code, Some(7), "{:?}", end.status),
        _ => panic!("the second recovery lost the outcome"),
    }
    second.destroy(&t.id);
    assert!(
        second.cgroups().list().unwrap_or_default().is_empty(),
        "its cgroups are gone"
    );
}

#[test]
fn a_missing_run_directory_or_a_reused_pid_is_not_taken_for_the_task() {
    let l = Launcher::new();
    let (id, config) = l.task("t-missing", "true");
    let c = l.containerizer();
    assert!(
        matches!(c.recover(&id, &config, None), Recovered::Unknown(_)),
        "no run directory: unknown"
    );

    // A run directory whose shim pid now belongs to an unrelated process (this test
    // process, with another start time): not ours.
    let run = l.ws.dir.path().join("run/tasks/t-missing");
    std::fs::create_dir_all(&run).expect("run dir");
    std::fs::write(run.join("shim.pid"), format!("{} 1\n", std::process::id())).expect("shim.pid");
    match c.recover(&id, &config, None) {
        Recovered::Unknown(why) => assert!(why.contains("exit status"), "{why}"),
        _ => panic!("a pid with another start time must not be re-attached"),
    }
    c.destroy(&id);
    assert!(!run.exists(), "the leftovers were removed");
}

/// A second launch under the id of a running task is refused before anything is
/// prepared: the running task keeps its run directory, cgroup and disk watcher.
#[test]
fn a_second_launch_of_a_running_id_is_refused_and_leaves_the_first_untouched() {
    let l = Launcher::new();
    let c = l.containerizer();
    let (id, config) = l.task("t-twice", "echo up; exec sleep 1000");
    let mut first = c.launch(&id, &config).expect("launch");
    let Err(err) = c.launch(&id, &config) else {
        panic!("a second task of the same id must be refused");
    };
    let text = err.to_string();
    assert!(
        matches!(err, cella_containerizer::LaunchError::Invalid(_)) && text.contains("task id"),
        "{text}"
    );
    assert!(
        first.run_dir().spec().exists(),
        "the first task's run directory stays"
    );
    assert!(
        !c.wait(&mut first, Duration::from_millis(100)),
        "the first task still runs"
    );
    assert!(
        c.sample(&mut first).pids_current.is_some_and(|n| n >= 1),
        "the first task's cgroup is still there"
    );
    c.kill(&first).expect("kill");
    let end = c.finish(first);
    assert_eq!(end.status.signal, Some(9), "{:?}", end.status);
    // Once it is gone, the id can be used again.
    let again = c.launch(&id, &config).expect("the id is free again");
    c.kill(&again).expect("kill");
    c.finish(again);
}

fn process_alive(pid: i32) -> bool {
    // A zombie (our dropped child) counts as ended.
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .and_then(|stat| stat.state())
        .is_ok_and(|state| state != procfs::process::ProcState::Zombie)
}
