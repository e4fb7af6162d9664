//! Test images built here, from local files only: layers written with the `tar`
//! crate (malicious ones included), OCI layouts written by hand or by `umoci`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use cella_image::Digest;
use serde_json::{Value, json};

use super::registry::{require_tool, run};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One layer blob ready to be written into a layout.
#[derive(Clone)]
pub struct LayerBlob {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: Digest,
}

impl LayerBlob {
    pub fn digest(&self) -> Digest {
        Digest::of(&self.blob)
    }
}

/// Writes tar entries, including ones that `tar::Builder`'s checks would refuse
/// (`..`, absolute paths, devices): names are put into the header as raw bytes.
pub struct TarWriter {
    builder: tar::Builder<Vec<u8>>,
}

impl TarWriter {
    fn header(kind: tar::EntryType, path: &str, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_600_000_000);
        header.set_size(size);
        set_raw(&mut header.as_old_mut().name, path);
        header
    }

    fn append(&mut self, mut header: tar::Header, data: &[u8]) {
        header.set_cksum();
        self.builder.append(&header, data).expect("append to tar");
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let header = Self::header(tar::EntryType::Directory, path, mode, 0);
        self.append(header, &[]);
        self
    }

    pub fn file(&mut self, path: &str, content: &[u8], mode: u32) -> &mut Self {
        let header = Self::header(tar::EntryType::Regular, path, mode, content.len() as u64);
        self.append(header, content);
        self
    }

    /// A file with owner, mtime and PAX xattrs.
    pub fn file_with(
        &mut self,
        path: &str,
        content: &[u8],
        mode: u32,
        (uid, gid): (u64, u64),
        mtime: u64,
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        if !xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                .collect();
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .expect("pax");
        }
        let mut header = Self::header(tar::EntryType::Regular, path, mode, content.len() as u64);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(mtime);
        self.append(header, content);
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Symlink, path, 0o777, 0);
        set_raw(&mut header.as_old_mut().linkname, target);
        self.append(header, &[]);
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Link, path, 0o644, 0);
        set_raw(&mut header.as_old_mut().linkname, target);
        self.append(header, &[]);
        self
    }

    pub fn device(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut header = Self::header(kind, path, 0o666, 0);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        self.append(header, &[]);
        self
    }

    pub fn fifo(&mut self, path: &str) -> &mut Self {
        let header = Self::header(tar::EntryType::Fifo, path, 0o644, 0);
        self.append(header, &[]);
        self
    }
}

fn set_raw(slot: &mut [u8], value: &str) {
    assert!(
        value.len() < slot.len(),
        "name too long for a raw header: {value}"
    );
    slot.fill(0);
    slot[..value.len()].copy_from_slice(value.as_bytes());
}

/// A layer made of the entries `build` writes.
pub fn layer(compression: Compression, build: impl FnOnce(&mut TarWriter)) -> LayerBlob {
    let mut writer = TarWriter {
        builder: tar::Builder::new(Vec::new()),
    };
    build(&mut writer);
    let tar = writer.builder.into_inner().expect("finish tar");
    compress(tar, compression)
}

/// Compresses an uncompressed layer tar.
pub fn compress(tar: Vec<u8>, compression: Compression) -> LayerBlob {
    let diff_id = Digest::of(&tar);
    let (blob, media_type) = match compression {
        Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(&tar).unwrap();
            (
                encoder.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Compression::Zstd => (
            zstd::encode_all(tar.as_slice(), 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    };
    LayerBlob {
        blob,
        media_type,
        diff_id,
    }
}

/// Writes a blob into a layout and returns its descriptor.
fn put_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let digest = Digest::of(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(digest.hex()), bytes).unwrap();
    json!({"mediaType": media_type, "digest": digest.to_string(), "size": bytes.len()})
}

/// Adds `descriptor` to the layout's index.json under `tag` (replacing that tag).
fn tag_in_index(layout: &Path, tag: &str, mut descriptor: Value) {
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .unwrap();
    let index_path = layout.join("index.json");
    let mut index: Value = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}));
    let manifests = index["manifests"].as_array_mut().unwrap();
    manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
    descriptor["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    manifests.push(descriptor);
    std::fs::write(index_path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
}

/// Writes an image (config + manifest) for `arch` into the layout, tagged `tag`
/// unless `tag` is empty. Returns the manifest's descriptor.
pub fn write_image(
    layout: &Path,
    tag: &str,
    arch: &str,
    layers: &[LayerBlob],
    runtime: Value,
) -> Value {
    for l in layers {
        put_blob(layout, l.media_type, &l.blob);
    }
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
    });
    let config = put_blob(
        layout,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config).unwrap(),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest().to_string(), "size": l.blob.len()})).collect::<Vec<_>>(),
    });
    let descriptor = put_blob(
        layout,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    if !tag.is_empty() {
        tag_in_index(layout, tag, descriptor.clone());
    }
    descriptor
}

/// Writes an index of `(manifest descriptor, architecture, variant)` tagged `tag`.
pub fn write_index(layout: &Path, tag: &str, entries: &[(Value, &str, Option<&str>)]) {
    let manifests: Vec<Value> = entries
        .iter()
        .map(|(descriptor, arch, variant)| {
            let mut d = descriptor.clone();
            d["platform"] = json!({"os": "linux", "architecture": arch});
            if let Some(v) = variant {
                d["platform"]["variant"] = json!(v);
            }
            d
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    let descriptor = put_blob(
        layout,
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&index).unwrap(),
    );
    tag_in_index(layout, tag, descriptor);
}

/// A one-layer image in its own layout (`oci:DIR:latest`).
pub fn single_layer_layout(dir: &Path, layer: LayerBlob) -> PathBuf {
    let layout = dir.join("layout");
    write_image(
        &layout,
        "latest",
        "amd64",
        &[layer],
        json!({"Cmd": ["/bin/sh"]}),
    );
    layout
}

/// A busybox image built with umoci from the host's busybox-static, three layers:
/// 1. busybox, its applets, /etc files, /data with two files, a hard link;
/// 2. /etc/removed-later deleted (a whiteout, made by `umoci repack`), /etc/added;
/// 3. /data made opaque with a new file (`umoci raw add-layer`).
///
/// Its configuration: entrypoint `/bin/sh -c`, cmd `echo hi`, env, working dir /data.
pub fn busybox_layout(dir: &Path, tag: &str) -> PathBuf {
    require_tool("umoci");
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing: run scripts/install-test-deps.sh (busybox-static)"
    );
    let layout = dir.join("busybox-layout");
    let bundle = dir.join("busybox-bundle");
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "etc", "data", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    let applets = run(Command::new(busybox).arg("--list"));
    for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    std::fs::write(rootfs.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::hard_link(rootfs.join("etc/hosts"), rootfs.join("etc/hosts.hardlink")).unwrap();
    std::fs::write(rootfs.join("etc/removed-later"), "gone in layer 2\n").unwrap();
    std::fs::write(rootfs.join("data/old1"), "old 1\n").unwrap();
    std::fs::write(rootfs.join("data/old2"), "old 2\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--refresh-bundle", "--image", &image])
        .arg(&bundle));
    std::fs::remove_file(rootfs.join("etc/removed-later")).unwrap();
    std::fs::write(rootfs.join("etc/added"), "added in layer 2\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    let opaque = layer(Compression::None, |t| {
        t.dir("data/", 0o755)
            .file("data/.wh..wh..opq", b"", 0o644)
            .file("data/new", b"new in layer 3\n", 0o644);
    });
    let opaque_tar = dir.join("opaque.tar");
    std::fs::write(&opaque_tar, &opaque.blob).unwrap();
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &image])
        .arg(&opaque_tar));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.entrypoint=/bin/sh",
        "--config.entrypoint=-c",
        "--config.cmd=echo hi",
        "--config.env=PATH=/bin",
        "--config.env=GREETING=hello",
        "--config.workingdir=/data",
        "--config.user=0:0",
    ]));
    std::fs::remove_dir_all(&bundle).unwrap();
    layout
}
