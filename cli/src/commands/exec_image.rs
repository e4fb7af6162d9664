//! `cella exec --image`: the image is prepared in the node's store (pulled if
//! needed) and held by a lease named after the task while it runs; the task's
//! writable layer lives in a sandbox of its own, removed once the task has ended
//! (see `exec_sandbox`).

use std::path::{Path, PathBuf};

use cella_containerizer::paths::RunDir;
use cella_image::{ImageReference, ImageStore, LeaseHolder, PrepareOptions, RunSettings};

use super::exec::{EXIT_CELLA_FAILED, EXIT_USAGE, ExecArgs, RUNTIME_DIR, run_with, task_id};
use crate::image_store::{StoreArgs, progress_printer};

/// An image ready for the task.
pub struct ImageTask {
    /// Unpacked layers, lowest first.
    pub layers: Vec<PathBuf>,
    pub settings: RunSettings,
    /// Holds the overlay's upper and work directories.
    pub sandbox: PathBuf,
    /// What the sandbox holds at launch, when known without walking it.
    pub sandbox_bytes: Option<u64>,
}

pub fn run(args: ExecArgs) -> i32 {
    let Some(text) = args.image.clone() else {
        return run_with(args, None);
    };
    let store = match args.store.open_existing() {
        Ok(store) => store,
        Err(e) => {
            eprintln!("cella: {e:#}");
            return EXIT_CELLA_FAILED;
        }
    };
    let reference = match ImageReference::parse(&text, &args.store.default_registry) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cella: --image: {e}");
            return EXIT_USAGE;
        }
    };
    let lease = task_id();
    // Named with this process and the lock its shim inherits and holds for its whole
    // life (the run directory's `spec.json`, locked before the shim starts): the
    // lease, written once, holds the image until both are gone; a `kill -9` of this
    // process leaves it held while the shim ends the task.
    let shim_lock = RunDir::new(Path::new(RUNTIME_DIR), &lease).spec();
    let holder = match LeaseHolder::this_process() {
        Ok(holder) => holder.with_lock(shim_lock),
        Err(e) => {
            eprintln!("cella: {e}");
            return EXIT_CELLA_FAILED;
        }
    };
    let options = PrepareOptions {
        holder: Some(holder),
        credentials: StoreArgs::env_credentials(),
        progress: Some(progress_printer()),
        ..PrepareOptions::default()
    };
    // An image in the store needs no runtime: only a pull does.
    let prepared = match store.prepare_stored(&reference, &lease, &options) {
        Ok(Some(image)) => Ok(image),
        Ok(None) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the runtime: {e}"))
            .and_then(|runtime| {
                runtime
                    .block_on(store.prepare(&reference, &lease, &options))
                    .map_err(|e| e.to_string())
            }),
        Err(e) => Err(e.to_string()),
    };
    let image = match prepared {
        Ok(image) => image,
        Err(e) => {
            eprintln!("cella: {e}");
            return EXIT_CELLA_FAILED;
        }
    };
    let code = match task_for(&args, &image, &store) {
        Ok(task) => run_with(args, Some(task)),
        Err((code, message)) => {
            eprintln!("cella: {message}");
            code
        }
    };
    // The lease and the image's record as prepared: neither is read back.
    if let Err(e) = store.release_prepared(&image) {
        eprintln!("cella: releasing the image: {e}");
    }
    // The sandbox goes now that its lease is released, off the path to the exit code.
    super::exec_sandbox::tidy_later(&store);
    code
}

fn task_for(
    args: &ExecArgs,
    image: &cella_image::PreparedImage,
    store: &ImageStore,
) -> Result<ImageTask, (i32, String)> {
    let settings = image
        .config
        .run_settings(
            &image.reference,
            &args.command,
            &args.env,
            args.user.as_deref(),
        )
        .map_err(|e| (EXIT_USAGE, e.to_string()))?;
    let sandbox = super::exec_sandbox::take(store, &image.lease).map_err(|e| {
        (
            EXIT_CELLA_FAILED,
            format!("creating the task's sandbox: {e}"),
        )
    })?;
    Ok(ImageTask {
        layers: image.layers.clone(),
        settings,
        sandbox: sandbox.dir,
        sandbox_bytes: sandbox.bytes,
    })
}
