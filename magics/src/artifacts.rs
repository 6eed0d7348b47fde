//! The rank programs a session keeps built, one file per distinct program, so that running
//! the same cell again launches at once. Bounded in count and bytes; the least recently
//! used go first.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Built rank programs a session keeps, at most (count and bytes).
pub const ARTIFACTS_MAX: usize = 64;
pub const ARTIFACTS_MAX_BYTES: u64 = 1 << 30;

/// Marks a built program as used now (the bound evicts the least recently used). Its
/// access time says so: the modification time stays the time it was built.
pub fn touch(path: &Path) {
    let now = std::fs::FileTimes::new().set_accessed(SystemTime::now());
    let _ = File::options().append(true).open(path).and_then(|f| f.set_times(now));
}

/// Removes built programs in `dir` beyond the bounds, least recently used first. Returns
/// (programs, bytes) removed.
pub fn bound_artifacts(dir: &Path, max_count: usize, max_bytes: u64) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return (0, 0) };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.accessed().ok()?, m.len(), e.path()))
        })
        .collect();
    files.sort_by(|a, b| b.0.cmp(&a.0)); // most recently used first
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
        for i in 0..5 {
            let p = dir.join(format!("a{i}"));
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i);
            File::options().append(true).open(&p).unwrap().set_times(std::fs::FileTimes::new().set_accessed(t)).unwrap();
        }
        let built = std::fs::metadata(dir.join("a0")).unwrap().modified().unwrap();
        touch(&dir.join("a0")); // used just now: kept
        assert_eq!(std::fs::metadata(dir.join("a0")).unwrap().modified().unwrap(), built, "the build time stays");
        assert_eq!(bound_artifacts(&dir, 3, u64::MAX), (2, 200));
        let mut left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["a0", "a3", "a4"]);
        assert_eq!(bound_artifacts(&dir, 10, 150), (2, 200), "and by size");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
