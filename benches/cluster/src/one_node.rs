//! A cluster of one master and one real agent (containerizer, cella-shim), each a
//! `cluster-node` process, on fresh certificates, directories and cgroup root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::{
    AgentOpts, Proc, TempDir, certs, cgroup_leftovers_and_remove, free_port,
    processes_mentioning, runtime_dir, shim_path, spawn_agent, spawn_master,
};

/// The processes and directories of one run. Fields drop in order: the processes
/// stop before their directories go.
pub struct OneNode {
    pub master: Proc,
    pub agent: Proc,
    /// The master's URL, `https://127.0.0.1:<port>`.
    pub url: String,
    /// The certificates (`ca.pem`, `client.pem`…).
    pub tls: PathBuf,
    /// The agent's runtime directory (shim run directories).
    pub runtime: PathBuf,
    /// The agent's cgroup root, `/cella-bench-<pid>`.
    pub cgroup_root: String,
    _runtime_dir: Option<TempDir>,
    pub dir: TempDir,
}

/// What a run left behind.
pub struct Leftovers {
    /// Processes whose command line mentions the runtime directory (shims, tasks).
    pub processes: Vec<u32>,
    /// Cgroups under the cgroup root (the root itself is removed).
    pub cgroups: Vec<PathBuf>,
}

impl Leftovers {
    /// What is left of an agent's run: processes mentioning `runtime`, cgroups under
    /// `cgroup_root` (whose empty roots are removed).
    pub fn of(runtime: &Path, cgroup_root: &str) -> Leftovers {
        Leftovers {
            processes: processes_mentioning(&runtime.display().to_string()),
            cgroups: cgroup_leftovers_and_remove(cgroup_root),
        }
    }

    /// How many processes and cgroups are left; names them on stderr if any are.
    pub fn report(&self) -> usize {
        if !self.processes.is_empty() || !self.cgroups.is_empty() {
            eprintln!(
                "LEFTOVERS: processes {:?}, cgroups {:?}",
                self.processes, self.cgroups
            );
        }
        self.processes.len() + self.cgroups.len()
    }
}

impl OneNode {
    /// Starts the master, then an agent offering `resources` with
    /// `launch_concurrency` (None: the agent's default), in `TempDir::new(tag)`.
    pub fn start(
        node: &Path,
        tag: &str,
        resources: &str,
        launch_concurrency: Option<usize>,
    ) -> Result<OneNode> {
        let dir = TempDir::new(tag)?;
        let tls = dir.path().join("tls");
        certs(&tls)?;
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let master = spawn_master(node, &tls, port, &dir.path().join("master.log"))?;
        let cgroup_root = format!("/cella-bench-{}", std::process::id());
        let (runtime, runtime_dir) = runtime_dir(&dir)?;
        let agent = spawn_agent(
            node,
            &AgentOpts {
                master_url: &url,
                tls_dir: &tls,
                work_dir: &dir.path().join("work"),
                runtime_dir: &runtime,
                resources,
                cgroup_root: &cgroup_root,
                launch_concurrency,
                shim: &shim_path(),
                log: &dir.path().join("agent.log"),
            },
        )?;
        Ok(OneNode {
            master,
            agent,
            url,
            tls,
            runtime,
            cgroup_root,
            _runtime_dir: runtime_dir,
            dir,
        })
    }

    /// Stops the agent (SIGKILL after `agent_grace`) and the master; returns how long
    /// the agent took to stop and what the run left behind (its cgroup roots removed).
    pub fn stop(&mut self, agent_grace: Duration) -> (Duration, Leftovers) {
        let agent_stop = self.agent.stop(agent_grace);
        self.master.stop(Duration::from_secs(10));
        (agent_stop, Leftovers::of(&self.runtime, &self.cgroup_root))
    }
}
