//! `cella exec --image`: the image is prepared in the node's store (pulled if
//! needed) and held by a lease named after the task while it runs; the task's
//! writable layer lives in a sandbox of its own, removed once the task has ended
//! (see `exec_sandbox`).

use std::path::PathBuf;

use cella_image::{ImageReference, ImageStore, LeaseHolder, PrepareOptions, RunSettings};

use super::exec::{EXIT_CELLA_FAILED, EXIT_USAGE, ExecArgs, run_with, task_id};
use crate::image_store::{StoreArgs, progress_printer};

/// An image ready for the task.
pub struct ImageTask<'a> {
    /// The store and the lease that holds the image.
    pub store: &'a ImageStore,
    pub lease: String,
    /// Unpacked layers, lowest first.
    pub layers: Vec<PathBuf>,
    pub settings: RunSettings,
    /// Holds the overlay's upper and work directories.
    pub sandbox: PathBuf,
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
    // Named with this process: a `kill -9` of it leaves a lease that counts as
    // released (the shim then ends the task too).
    let holder = match LeaseHolder::this_process() {
        Ok(holder) => holder,
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
    let code = match task_for(&args, image, &store, &lease) {
        Ok(task) => run_with(args, Some(task)),
        Err((code, message)) => {
            eprintln!("cella: {message}");
            code
        }
    };
    if let Err(e) = store.release(&lease) {
        eprintln!("cella: releasing the image: {e}");
    }
    // The sandbox goes now that its lease is released, off the path to the exit code.
    super::exec_sandbox::tidy_later(&store);
    code
}

fn task_for<'a>(
    args: &ExecArgs,
    image: cella_image::PreparedImage,
    store: &'a ImageStore,
    lease: &str,
) -> Result<ImageTask<'a>, (i32, String)> {
    let settings = image
        .config
        .run_settings(
            &image.reference,
            &args.command,
            &args.env,
            args.user.as_deref(),
        )
        .map_err(|e| (EXIT_USAGE, e.to_string()))?;
    let sandbox = super::exec_sandbox::take(store, lease).map_err(|e| {
        (
            EXIT_CELLA_FAILED,
            format!("creating the task's sandbox: {e}"),
        )
    })?;
    Ok(ImageTask {
        store,
        lease: lease.to_owned(),
        layers: image.layers,
        settings,
        sandbox,
    })
}
