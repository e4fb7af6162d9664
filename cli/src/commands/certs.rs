//! `cella certs`: the cluster's CA directory — create it, issue a certificate per
//! agent node and per user, list what was issued, revoke.

use std::path::PathBuf;

use cella_proto::tls::{CaDir, DEFAULT_LEAF_DAYS, Identity, Validity};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

/// The CA directory of the commands that use one.
#[derive(Args, Debug)]
struct CaDirArg {
    /// The CA directory made by `cella certs init`.
    #[arg(long = "dir", value_name = "DIR", env = "CELLA_CA_DIR")]
    dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Create a CA, the master's certificate and an empty revocation list in DIR
    /// (refuses to overwrite).
    Init {
        /// The directory to create them in (mode 0700).
        dir: PathBuf,
        /// A DNS name or IP address the master is reached at (repeatable; localhost,
        /// 127.0.0.1 and ::1 are always included).
        #[arg(long = "master-name", value_name = "NAME")]
        master_names: Vec<String>,
    },
    /// Issue a certificate, written as a bundle to copy to the node or user:
    /// DIR/agents/NODE/ or DIR/users/NAME/.
    Issue {
        #[command(subcommand)]
        what: IssueWhat,
    },
    /// List the certificates issued, with their status (valid, expired, revoked).
    List {
        #[command(flatten)]
        ca: CaDirArg,
    },
    /// Revoke a certificate (by serial) or every certificate of a principal
    /// (`agent:NODE`, `user:NAME`), and re-sign DIR/crl.pem. Copy crl.pem to every
    /// node's TLS directory: daemons reload it within seconds.
    Revoke {
        /// A serial number (see `cella certs list`) or a principal.
        what: String,
        #[command(flatten)]
        ca: CaDirArg,
    },
}

#[derive(Subcommand, Debug)]
enum IssueWhat {
    /// The certificate of one agent node (CN=agent:NODE; serves the agent's API under
    /// the node's names, authenticates it to the master).
    Agent {
        /// The node's name (its DNS name).
        node: String,
        /// Another DNS name or IP address the agent's API is reached at (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Days it is valid.
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
        days: i64,
        #[command(flatten)]
        ca: CaDirArg,
    },
    /// The certificate of a person or a scheduler (CN=user:NAME, with its groups).
    User {
        name: String,
        /// A group the user is in, for the ACL (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Days it is valid.
        #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
        days: i64,
        #[command(flatten)]
        ca: CaDirArg,
    },
}

pub fn run(args: CertsArgs) -> i32 {
    match certs(args.command) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cella: {e}");
            1
        }
    }
}

fn certs(command: CertsCommand) -> Result<(), String> {
    match command {
        CertsCommand::Init { dir, master_names } => {
            let layout = cella_proto::tls::init_cluster_dir(&dir, &master_names)
                .map_err(|e| e.to_string())?;
            outln!("created in {}:", layout.dir.display());
            for file in [
                &layout.ca_cert,
                &layout.ca_key,
                &layout.master_cert,
                &layout.master_key,
                &layout.crl,
            ] {
                outln!("  {}", file.display());
            }
            outln!(
                "the master uses ca.pem, crl.pem, master.pem and master-key.pem; keep ca-key.pem \
                 here. Next: `cella certs issue agent NODE --dir {d}` for each node and `cella \
                 certs issue user NAME --dir {d}` for each user or scheduler",
                d = dir.display()
            );
            Ok(())
        }
        CertsCommand::Issue { what } => {
            let (identity, names, days, ca) = match what {
                IssueWhat::Agent {
                    node,
                    mut names,
                    days,
                    ca,
                } => {
                    let identity = Identity::agent(&node).map_err(|e| e.to_string())?;
                    names.insert(0, node);
                    (identity, names, days, ca)
                }
                IssueWhat::User {
                    name,
                    groups,
                    days,
                    ca,
                } => (
                    Identity::user(&name, &groups).map_err(|e| e.to_string())?,
                    Vec::new(),
                    days,
                    ca,
                ),
            };
            if days < 1 {
                return Err("--days: give at least 1".into());
            }
            let dir = CaDir::open(&ca.dir).map_err(|e| e.to_string())?;
            let issued = dir
                .issue(&identity, &names, Validity::days(days))
                .map_err(|e| e.to_string())?;
            let bundle = dir
                .write_bundle(&identity, &issued)
                .map_err(|e| e.to_string())?;
            outln!(
                "issued {} (serial {}, valid {days} days) in {}",
                identity.principal(),
                issued.serial,
                bundle.display()
            );
            outln!(
                "copy that directory to the {}'s --tls-dir; its key is private (mode 0600)",
                if identity.node().is_some() {
                    "node"
                } else {
                    "user"
                }
            );
            Ok(())
        }
        CertsCommand::List { ca } => {
            let dir = CaDir::open(&ca.dir).map_err(|e| e.to_string())?;
            let certs = dir.list().map_err(|e| e.to_string())?;
            outln!(
                "{:<34} {:<8} {:<12} {:<30} GROUPS",
                "SERIAL",
                "STATUS",
                "EXPIRES",
                "PRINCIPAL"
            );
            for c in certs {
                outln!(
                    "{:<34} {:<8} {:<12} {:<30} {}",
                    c.serial,
                    c.status(),
                    c.not_after.date(),
                    c.principal,
                    c.groups.join(",")
                );
            }
            Ok(())
        }
        CertsCommand::Revoke { what, ca } => {
            let dir = CaDir::open(&ca.dir).map_err(|e| e.to_string())?;
            let revoked = dir.revoke(&what).map_err(|e| e.to_string())?;
            if revoked.is_empty() {
                outln!("{what}: already revoked");
            }
            for c in &revoked {
                outln!("revoked {} (serial {})", c.principal, c.serial);
            }
            outln!(
                "{} is re-signed: copy it to every node's TLS directory (master and agents \
                 reload it within seconds, or at once on SIGHUP)",
                dir.layout.crl.display()
            );
            Ok(())
        }
    }
}
