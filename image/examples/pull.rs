//! Pulls one image into a store and prints where its layers are: the benchmark's
//! Cella side (`benches/image/run.sh`), and a way to try the library by hand.
//!
//! ```text
//! cargo run --release -p cella-image --example pull -- STORE REFERENCE [--insecure HOST:PORT] [--ca-file PEM]
//! ```

use std::time::Instant;

use cella_image::{ImageReference, ImageStore, PrepareOptions, RegistrySettings, StoreSettings};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("pull: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: pull STORE REFERENCE [--insecure HOST:PORT] [--ca-file PEM]";
    let store_dir = args.next().ok_or(usage)?;
    let reference = args.next().ok_or(usage)?;
    let mut registries = RegistrySettings::default();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(usage)?;
        match flag.as_str() {
            "--insecure" => registries.insecure_registries.push(value),
            "--ca-file" => registries.ca_file = Some(value.into()),
            _ => return Err(usage.into()),
        }
    }
    let start = Instant::now();
    let store = ImageStore::open(
        &store_dir,
        StoreSettings {
            registries,
            ..StoreSettings::default()
        },
    )?;
    let reference =
        ImageReference::parse(&reference, &store.settings().registries.default_registry)?;
    let image = store
        .prepare(&reference, "pull-example", &PrepareOptions::default())
        .await?;
    store.release("pull-example")?;
    eprintln!(
        "{} {} layers in {:.3} s",
        image.digest,
        image.layers.len(),
        start.elapsed().as_secs_f64()
    );
    for layer in image.layers {
        println!("{}", layer.display());
    }
    Ok(())
}
