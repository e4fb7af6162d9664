//! `cella images`: the node's image store: list, pull, remove, GC.

use cella_image::{ImageReference, PrepareOptions};
use clap::{Args, Subcommand};

use crate::image_store::{StoreArgs, progress_printer};

#[derive(Args, Debug)]
pub struct ImagesArgs {
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
    /// at most SIZE (default 0: every unused image).
    Gc {
        #[arg(long, value_name = "SIZE", value_parser = super::exec::parse_size_arg)]
        max_size: Option<u64>,
    },
}

pub fn run(args: ImagesArgs) -> i32 {
    match run_inner(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cella: {e:#}");
            1
        }
    }
}

fn run_inner(args: ImagesArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let store = args.store.open()?;
    let mut out = std::io::stdout().lock();
    match args.command.unwrap_or(ImagesCommand::Ls) {
        ImagesCommand::Ls => {
            let images = store.list()?;
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
        ImagesCommand::Pull { reference } => {
            let parsed = ImageReference::parse(&reference, &args.store.default_registry)?;
            let lease = format!("cella-images-pull-{}", std::process::id());
            let options = PrepareOptions {
                credentials: StoreArgs::env_credentials(),
                progress: Some(progress_printer()),
                ..PrepareOptions::default()
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let image = runtime.block_on(store.prepare(&parsed, &lease, &options));
            store.release(&lease)?;
            let image = image?;
            let _ = writeln!(out, "{} {}", image.reference, image.digest);
        }
        ImagesCommand::Rm { references } => {
            for reference in references {
                let removed = store.remove(&reference)?;
                let _ = writeln!(out, "removed {reference}");
                for digest in removed {
                    let _ = writeln!(out, "deleted {digest}");
                }
            }
        }
        ImagesCommand::Gc { max_size } => {
            let report = store.gc(max_size.unwrap_or(0))?;
            for digest in &report.removed {
                let _ = writeln!(out, "deleted {digest}");
            }
            let _ = writeln!(
                out,
                "{} images removed, {} kept in use; {} → {}",
                report.removed.len(),
                report.kept_leased.len(),
                cella_containerizer::units::format_bytes(report.bytes_before),
                cella_containerizer::units::format_bytes(report.bytes_after)
            );
        }
    }
    Ok(())
}
