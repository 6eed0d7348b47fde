//! The rank programs a session keeps built, one file per distinct program, so that running
//! the same cell again launches at once (and their copies in the user's shared directory,
//! [`crate::ranks::launch::shared`]). Bounded in count and bytes; the least recently used go first.
//! Only files named as ranch names programs ([`file_name`]) are counted or removed: whatever
//! else is in the directory is not ranch's.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Built rank programs a session keeps, at most (count and bytes).
pub const ARTIFACTS_MAX: usize = 64;
pub const ARTIFACTS_MAX_BYTES: u64 = 1 << 30;

/// The name of the program whose key (a hash, in hex) is `hex`: `rank-<hex>`.
pub fn file_name(hex: &str) -> String {
    format!("{PREFIX}{hex}")
}

const PREFIX: &str = "rank-";

/// Whether `name` is one [`file_name`] makes.
fn is_program_name(name: &str) -> bool {
    name.strip_prefix(PREFIX).is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Marks a built program as used now (the bound evicts the least recently used). Its
/// access time says so: the modification time stays the time it was built.
pub fn touch(path: &Path) {
    let now = std::fs::FileTimes::new().set_accessed(SystemTime::now());
    let _ = File::options().append(true).open(path).and_then(|f| f.set_times(now));
}

/// Removes built programs in `dir` beyond the bounds, least recently used first; only
/// regular files named as programs are counted or removed. Returns (programs, bytes) removed.
pub fn bound_artifacts(dir: &Path, max_count: usize, max_bytes: u64) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return (0, 0) };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_program_name))
        .filter_map(|e| {
            let m = e.metadata().ok().filter(|m| m.is_file())?; // `DirEntry::metadata` follows no link
            Some((m.accessed().ok()?, m.len(), e.path()))
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0)); // most recently used first
    let (mut kept, mut bytes, mut removed, mut freed) = (0usize, 0u64, 0usize, 0u64);
    for (_, len, path) in files {
        if kept < max_count && bytes + len <= max_bytes {
            kept += 1;
            bytes += len;
        } else if std::fs::remove_file(&path).is_ok() {
            removed += 1;
            freed += len;
        }
    }
    (removed, freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_bounded_least_recently_used_first() {
        let dir = std::env::temp_dir().join(format!("ranch-artifacts-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), "not ranch's").unwrap();
        std::fs::write(dir.join("rank-"), "not ranch's either").unwrap();
        for i in 0..5 {
            let p = dir.join(file_name(&format!("a{i}")));
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i);
            File::options().append(true).open(&p).unwrap().set_times(std::fs::FileTimes::new().set_accessed(t)).unwrap();
        }
        let built = std::fs::metadata(dir.join("rank-a0")).unwrap().modified().unwrap();
        touch(&dir.join("rank-a0")); // used just now: kept
        assert_eq!(std::fs::metadata(dir.join("rank-a0")).unwrap().modified().unwrap(), built, "the build time stays");
        assert_eq!(bound_artifacts(&dir, 3, u64::MAX), (2, 200));
        let mut left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["notes.txt", "rank-", "rank-a0", "rank-a3", "rank-a4"]);
        assert_eq!(bound_artifacts(&dir, 10, 150), (2, 200), "and by size");
        assert_eq!(bound_artifacts(&dir, 0, 0), (1, 100), "other files are never removed");
        assert!(dir.join("notes.txt").exists() && dir.join("rank-").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
