//! `cella certs init DIR`: a cluster CA plus master, agent and client certificates.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Create a CA and master, agent and client certificates in DIR (refuses to overwrite).
    Init {
        /// The directory to create them in.
        dir: PathBuf,
        /// A DNS name or IP address the master is reached at (repeatable; default
        /// localhost, 127.0.0.1 and ::1).
        #[arg(long = "master-name", value_name = "NAME")]
        master_names: Vec<String>,
    },
}

pub fn run(args: CertsArgs) -> i32 {
    match args.command {
        CertsCommand::Init { dir, master_names } => {
            let names = if master_names.is_empty() {
                cella_proto::tls::default_master_sans()
            } else {
                master_names
            };
            match cella_proto::tls::init_dir(&dir, &names) {
                Ok(layout) => {
                    println!("created in {}:", layout.dir.display());
                    for file in layout.files() {
                        println!("  {}", file.display());
                    }
                    println!(
                        "the master uses ca.pem, master.pem, master-key.pem; each agent agent.pem and agent-key.pem; \
                         clients client.pem and client-key.pem (keep the *-key.pem files private)"
                    );
                    0
                }
                Err(e) => {
                    eprintln!("cella: {e}");
                    1
                }
            }
        }
    }
}
