//! What processes killed with SIGKILL left behind: files and directories named
//! `<prefix><pid>-...` (a group's segment in `/dev/shm`, a kernel's or a pool relay's
//! directory in `/tmp`) whose process is gone. Such a process removes nothing itself; the
//! next ranch process on the same host does, when it makes its own.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Removes the entries of `dir` named `<prefix><pid>-...` whose process `pid` no longer
/// runs on this host and that this user owns. Returns how many were removed.
pub fn remove_stale(dir: &Path, prefix: &str) -> usize {
    // Without /proc every process would look gone.
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    // SAFETY: a plain system call without arguments.
    let me = unsafe { geteuid() };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix).and_then(|r| r.split('-').next()?.parse::<u32>().ok()) else { continue };
        let gone = !Path::new("/proc").join(pid.to_string()).exists();
        // `DirEntry::metadata` does not follow a link: a link is removed, never what it names.
        let Ok(meta) = entry.metadata() else { continue };
        if gone && meta.uid() == me {
            let path = entry.path();
            let done = if meta.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed += usize::from(done.is_ok());
        }
    }
    removed
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_gone_process_of_this_user_left_is_removed() {
        let dir = std::env::temp_dir().join(format!("ranch-stale-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let gone = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            child.wait().unwrap();
            child.id()
        };
        let live = std::process::id();
        std::fs::create_dir_all(dir.join(format!("ranch-pool-{gone}-abc/inner"))).unwrap();
        std::fs::write(dir.join(format!("ranch-pool-{gone}-seg")), "x").unwrap();
        std::fs::create_dir(dir.join(format!("ranch-pool-{live}-abc"))).unwrap();
        std::fs::write(dir.join(format!("ranch-other-{gone}-x")), "x").unwrap();
        std::fs::write(dir.join("ranch-pool-notapid-x"), "x").unwrap();
        assert_eq!(remove_stale(&dir, "ranch-pool-"), 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut kept = [format!("ranch-other-{gone}-x"), "ranch-pool-notapid-x".to_string(), format!("ranch-pool-{live}-abc")];
        kept.sort();
        assert_eq!(left, kept);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
