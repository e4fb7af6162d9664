//! `cella images`: a node's image store: list, pull, remove, GC. With `--agent URL`
//! through that agent's API (a client certificate with the permissions, no root on
//! the node); otherwise the store directory itself (`--image-store`).

use std::io::Write as _;
use std::path::PathBuf;

use cella_image::{GcReport, ImageInfo, ImageReference, LeaseHolder, PrepareOptions};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::image_store::{StoreArgs, progress_printer};
use crate::profile::ClusterArgs;

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// The agent whose store to use, through its API (https://HOST:PORT, its
    /// --http-listen); without it, the store directory is opened directly.
    #[arg(long, value_name = "URL", env = "CELLA_AGENT")]
    agent: Option<String>,
    /// With --agent: the directory with ca.pem, client.pem, client-key.pem (default:
    /// $CELLA_TLS_DIR, then the profile's).
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: Option<ImagesCommand>,
}

#[derive(Subcommand, Debug)]
enum ImagesCommand {
    /// List the images: references, digest, size, last use, tasks using them (default).
    Ls,
    /// Pull an image into the store (with progress).
    Pull {
        /// The image reference.
        reference: String,
    },
    /// Remove a reference, or an image by digest (sha256:…), unless a task uses it.
    Rm {
        /// References or digests.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Remove images no task uses, least recently used first, until the store takes
    /// at most SIZE (default 0: every unused image; with --agent, the agent's
    /// --image-store-size).
    Gc {
        #[arg(long, value_name = "SIZE", value_parser = super::exec::parse_size_arg)]
        max_size: Option<u64>,
    },
    /// Removes the sandboxes of `cella exec --image` tasks that have ended and makes
    /// empty ones ahead (started by `cella exec` after a task).
    #[command(hide = true)]
    TidySandboxes,
}

pub fn run(args: ImagesArgs) -> i32 {
    // The sandboxes are `cella exec`'s, in the store directory: never an agent's.
    let agent = match args.command {
        Some(ImagesCommand::TidySandboxes) => None,
        _ => args.agent.clone(),
    };
    match agent {
        Some(agent) => super::tasks::block_on(async move { through_agent(args, &agent).await }),
        None => local(args).map_or_else(
            |e| {
                eprintln!("cella: {e:#}");
                1
            },
            |()| 0,
        ),
    }
}

/// The commands against an agent's `/api/v1/images`.
async fn through_agent(args: ImagesArgs, agent: &str) -> anyhow::Result<i32> {
    let agent = agent.trim_end_matches('/');
    if !agent.starts_with("https://") {
        anyhow::bail!(
            "--agent {agent:?}: write it as https://HOST:PORT (the agent's --http-listen)"
        );
    }
    let tls = ClusterArgs {
        master: None,
        tls_dir: args.tls_dir.clone(),
    }
    .agent_tls()?;
    let url = |path: &str| format!("{agent}/api/v1/images{path}");
    match args.command.unwrap_or(ImagesCommand::Ls) {
        ImagesCommand::Ls => {
            let images: Vec<ImageInfo> = cella_proto::tls::https_get_json(&url(""), &tls).await?;
            print_list(&images);
        }
        ImagesCommand::Pull { reference } => {
            let body = json!({ "reference": reference });
            let image: ImageInfo =
                cella_proto::tls::https_post_json(&url("/pull"), &body, &tls).await?;
            let name = image.references.first().cloned().unwrap_or(reference);
            outln!("{name} {}", image.digest);
        }
        ImagesCommand::Rm { references } => {
            for reference in references {
                let body = json!({ "reference": reference });
                let removed: Vec<cella_image::Digest> =
                    cella_proto::tls::https_post_json(&url("/remove"), &body, &tls).await?;
                print_removed(&reference, &removed);
            }
        }
        ImagesCommand::Gc { max_size } => {
            // Without a size the agent keeps its store within its own size.
            let body = match max_size {
                Some(max_bytes) => json!({ "max_bytes": max_bytes }),
                None => json!({}),
            };
            let report: GcReport =
                cella_proto::tls::https_post_json(&url("/gc"), &body, &tls).await?;
            print_gc(&report);
        }
        ImagesCommand::TidySandboxes => {
            anyhow::bail!("tidy-sandboxes works on the store directory: drop --agent")
        }
    }
    Ok(0)
}

/// The commands against the store directory.
fn local(args: ImagesArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    match args.command.unwrap_or(ImagesCommand::Ls) {
        ImagesCommand::Ls => print_list(&store.list()?),
        ImagesCommand::Pull { reference } => {
            let parsed = ImageReference::parse(&reference, &args.store.default_registry)?;
            let lease = format!("cella-images-pull-{}", std::process::id());
            let options = PrepareOptions {
                credentials: StoreArgs::env_credentials(),
                progress: Some(progress_printer()),
                // A pull killed half-way leaves a lease that counts as released.
                holder: LeaseHolder::this_process().ok(),
                ..PrepareOptions::default()
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let image = runtime.block_on(store.prepare(&parsed, &lease, &options));
            store.release(&lease)?;
            let image = image?;
            outln!("{} {}", image.reference, image.digest);
        }
        ImagesCommand::Rm { references } => {
            for reference in references {
                let removed = store.remove(&reference)?;
                print_removed(&reference, &removed);
            }
        }
        ImagesCommand::Gc { max_size } => print_gc(&store.gc(max_size.unwrap_or(0))?),
        ImagesCommand::TidySandboxes => super::exec_sandbox::tidy(&store)?,
    }
    Ok(())
}

fn print_list(images: &[ImageInfo]) {
    let mut out = std::io::stdout().lock();
    let now = cella_proto::time::now_ns() / 1_000_000;
    // A closed pipe (`| head`) ends the listing quietly.
    let _ = writeln!(
        out,
        "{:<50} {:<19} {:>10} {:>10}  TASKS",
        "REFERENCE", "DIGEST", "SIZE", "LAST USED"
    );
    for image in images {
        let name = image
            .references
            .first()
            .cloned()
            .unwrap_or_else(|| "<none>".to_owned());
        let digest = image.digest.to_string();
        let short = digest.get(..19).unwrap_or(&digest);
        let ago = now.saturating_sub(image.last_used_ms) / 1000;
        let line = writeln!(
            out,
            "{name:<50} {short:<19} {:>10} {:>9}s  {}",
            cella_containerizer::units::format_bytes(image.size_bytes),
            ago,
            image.leases.join(",")
        );
        if line.is_err() {
            break;
        }
    }
}

fn print_removed(reference: &str, removed: &[cella_image::Digest]) {
    outln!("removed {reference}");
    for digest in removed {
        outln!("deleted {digest}");
    }
}

fn print_gc(report: &GcReport) {
    for digest in &report.removed {
        outln!("deleted {digest}");
    }
    outln!(
        "{} images removed, {} kept in use; {} → {}",
        report.removed.len(),
        report.kept_leased.len(),
        cella_containerizer::units::format_bytes(report.bytes_before),
        cella_containerizer::units::format_bytes(report.bytes_after)
    );
}
