//! The `ranch` runtime crate, embedded in the kernel binary so an installed kernel works
//! without the source checkout: unpacked once per version into the user's cache, and
//! added to notebook sessions as a path dependency.

use std::path::PathBuf;

/// (path inside the crate, contents)
const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../../runtime/Cargo.toml")),
    ("src/lib.rs", include_str!("../../../runtime/src/lib.rs")),
    ("src/info.rs", include_str!("../../../runtime/src/info.rs")),
    ("src/map.rs", include_str!("../../../runtime/src/map.rs")),
    ("src/shared.rs", include_str!("../../../runtime/src/shared.rs")),
    ("src/shared/host_copy.rs", include_str!("../../../runtime/src/shared/host_copy.rs")),
    ("src/candle.rs", include_str!("../../../runtime/src/candle.rs")),
    ("src/channel.rs", include_str!("../../../runtime/src/channel.rs")),
    ("src/net/mod.rs", include_str!("../../../runtime/src/net/mod.rs")),
    ("src/net/keepalive.rs", include_str!("../../../runtime/src/net/keepalive.rs")),
    ("src/net/listener.rs", include_str!("../../../runtime/src/net/listener.rs")),
    ("src/shard.rs", include_str!("../../../runtime/src/shard.rs")),
    ("src/stale.rs", include_str!("../../../runtime/src/stale.rs")),
    ("src/display.rs", include_str!("../../../runtime/src/display.rs")),
    ("src/__rt.rs", include_str!("../../../runtime/src/__rt.rs")),
    ("src/cuda/mod.rs", include_str!("../../../runtime/src/cuda/mod.rs")),
    ("src/cuda/nccl.rs", include_str!("../../../runtime/src/cuda/nccl.rs")),
    ("src/comm/mod.rs", include_str!("../../../runtime/src/comm/mod.rs")),
    ("src/comm/call.rs", include_str!("../../../runtime/src/comm/call.rs")),
    ("src/comm/error.rs", include_str!("../../../runtime/src/comm/error.rs")),
    ("src/comm/futex.rs", include_str!("../../../runtime/src/comm/futex.rs")),
    ("src/comm/host_share.rs", include_str!("../../../runtime/src/comm/host_share.rs")),
    ("src/comm/stream_copy.rs", include_str!("../../../runtime/src/comm/stream_copy.rs")),
    ("src/comm/reduce.rs", include_str!("../../../runtime/src/comm/reduce.rs")),
    ("src/comm/mpi.rs", include_str!("../../../runtime/src/comm/mpi.rs")),
    ("src/comm/pool.rs", include_str!("../../../runtime/src/comm/pool.rs")),
    ("src/comm/rendezvous.rs", include_str!("../../../runtime/src/comm/rendezvous.rs")),
    ("src/comm/shm.rs", include_str!("../../../runtime/src/comm/shm.rs")),
    ("src/comm/tcp/mod.rs", include_str!("../../../runtime/src/comm/tcp/mod.rs")),
    ("src/comm/tcp/hosts.rs", include_str!("../../../runtime/src/comm/tcp/hosts.rs")),
];

/// Where this version of the crate is unpacked.
pub fn dir() -> Result<PathBuf, String> {
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(FILES, &mut hasher);
    Ok(super::cache_dir::root()?.join(format!("runtime-{:016x}", std::hash::Hasher::finish(&hasher))))
}

/// Unpacks the crate (if this version is not there yet) and returns its directory.
pub fn unpack() -> std::io::Result<PathBuf> {
    let dir = dir().map_err(std::io::Error::other)?;
    if dir.join("Cargo.toml").exists() {
        return Ok(dir);
    }
    // Unpack beside the final place and rename, so a half-written crate is never used.
    let staging = dir.with_extension(format!("tmp{}", std::process::id()));
    for (path, text) in FILES {
        let target = staging.join(path);
        std::fs::create_dir_all(target.parent().expect("has a parent"))?;
        std::fs::write(target, text)?;
    }
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        Err(_) if dir.join("Cargo.toml").exists() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(dir)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runtime_source_file_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime");
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, root, out);
                } else {
                    out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let mut on_disk = Vec::new();
        walk(&root.join("src"), &root, &mut on_disk);
        on_disk.sort();
        let mut embedded: Vec<String> = FILES.iter().filter(|(p, _)| p.starts_with("src/")).map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "add new runtime files to FILES");
    }
}
