//! `ranch-kernel install` / `uninstall`: the kernelspec that Jupyter finds.

use anyhow::{Context, bail};
use serde_json::json;
use std::path::{Path, PathBuf};

pub const KERNEL_NAME: &str = "ranch";
pub const DISPLAY_NAME: &str = "Rust (ranch)";

const LOGO_32: &[u8] = include_bytes!("../assets/logo-32x32.png");
const LOGO_64: &[u8] = include_bytes!("../assets/logo-64x64.png");

/// Where a kernelspec goes, as `jupyter kernelspec install` names the choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    User,
    SysPrefix,
    Prefix(PathBuf),
}

impl Location {
    /// The `kernels/` directory for this location.
    pub fn kernels_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(match self {
            Location::User => user_data_dir()?.join("kernels"),
            Location::SysPrefix => sys_prefix()?.join("share/jupyter/kernels"),
            Location::Prefix(p) => p.join("share/jupyter/kernels"),
        })
    }
}

/// Jupyter's user data dir: `$JUPYTER_DATA_DIR`, else `$XDG_DATA_HOME/jupyter`, else
/// `~/.local/share/jupyter` (Linux) / `~/Library/Jupyter` (macOS).
fn user_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("JUPYTER_DATA_DIR") {
        return Ok(PathBuf::from(d));
    }
    if cfg!(target_os = "macos") {
        return Ok(home()?.join("Library/Jupyter"));
    }
    match std::env::var_os("XDG_DATA_HOME") {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d).join("jupyter")),
        _ => Ok(home()?.join(".local/share/jupyter")),
    }
}

fn home() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set")
}

/// The Python environment to install into: the active virtualenv/conda env, or the venv
/// this binary was copied into (`<venv>/bin/ranch-kernel`).
fn sys_prefix() -> anyhow::Result<PathBuf> {
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
    }
    let exe = std::env::current_exe()?;
    if let Some(prefix) = exe.parent().and_then(Path::parent)
        && prefix.join("pyvenv.cfg").exists()
    {
        return Ok(prefix.to_path_buf());
    }
    bail!("--sys-prefix needs an active Python environment (VIRTUAL_ENV or CONDA_PREFIX); activate one or use --prefix PATH")
}

/// Set in kernel.json: the directories where `cargo` and `rustc` were found at install time.
pub const TOOLCHAIN_PATH_ENV: &str = "RANCH_TOOLCHAIN_PATH";

/// The kernel.json contents. Written with `json!` so no key is ever `null`
/// (jupyter_client rejects a spec with `"metadata": null` and then lists no kernels at all).
/// `env` is what the kernel is started with on top of the frontend's environment.
pub fn kernel_json(exe: &Path, env: &serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    json!({
        "argv": [exe.to_string_lossy(), "--connection-file", "{connection_file}"],
        "display_name": DISPLAY_NAME,
        "language": "rust",
        "interrupt_mode": "message",
        "env": env,
        "metadata": {},
    })
}

/// The toolchain this install found, for a kernel started without a login shell (a desktop
/// launcher, VS Code, a JupyterHub spawner), whose `PATH` often lacks `~/.cargo/bin`: where
/// `cargo` and `rustc` are ([`TOOLCHAIN_PATH_ENV`], which the kernel adds to the end of its
/// `PATH` when they are not on it), and rustup's active toolchain (`RUSTUP_TOOLCHAIN`), so
/// the kernel builds cells with the toolchain it was installed with.
pub fn toolchain_env(path: Option<&std::ffi::OsStr>) -> serde_json::Map<String, serde_json::Value> {
    let mut env = serde_json::Map::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for tool in ["cargo", "rustc"] {
        if let Some(dir) = path.into_iter().flat_map(std::env::split_paths).find(|d| d.join(tool).is_file())
            && !dirs.contains(&dir)
        {
            dirs.push(dir);
        }
    }
    if let Ok(joined) = std::env::join_paths(&dirs)
        && !dirs.is_empty()
    {
        env.insert(TOOLCHAIN_PATH_ENV.into(), joined.to_string_lossy().into());
    }
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok().filter(|t| !t.is_empty()).or_else(|| {
        let out = std::process::Command::new("rustup").args(["show", "active-toolchain"]).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        out.status.success().then(|| text.split_whitespace().next().map(str::to_string)).flatten()
    });
    if let Some(t) = toolchain {
        env.insert("RUSTUP_TOOLCHAIN".into(), t.into());
    }
    env
}

/// `PATH` with the install's toolchain directories added at its end, when `cargo` is not on
/// it and is where the install found it (`None`: nothing to add, or nothing that would help;
/// so a kernel that starts again with the result never starts again a second time).
pub fn path_with_toolchain(path: Option<&std::ffi::OsStr>, recorded: Option<&std::ffi::OsStr>) -> Option<std::ffi::OsString> {
    let recorded: Vec<PathBuf> = std::env::split_paths(recorded.filter(|r| !r.is_empty())?).collect();
    let mut dirs: Vec<PathBuf> = path.map(|p| std::env::split_paths(p).collect()).unwrap_or_default();
    let has_cargo = |dirs: &[PathBuf]| dirs.iter().any(|d| d.join("cargo").is_file());
    if has_cargo(&dirs) || !has_cargo(&recorded) {
        return None;
    }
    dirs.extend(recorded);
    std::env::join_paths(dirs).ok()
}

/// Writes the kernelspec directory and returns its path.
pub fn install(location: &Location) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?.canonicalize()?;
    let dir = location.kernels_dir()?.join(KERNEL_NAME);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let env = toolchain_env(std::env::var_os("PATH").as_deref());
    let spec = serde_json::to_string_pretty(&kernel_json(&exe, &env))?;
    std::fs::write(dir.join("kernel.json"), spec + "\n")?;
    std::fs::write(dir.join("logo-32x32.png"), LOGO_32)?;
    std::fs::write(dir.join("logo-64x64.png"), LOGO_64)?;
    Ok(dir)
}

/// Removes the kernelspec; returns the removed directory, or `None` when there was none.
pub fn uninstall(location: &Location) -> anyhow::Result<Option<PathBuf>> {
    let dir = location.kernels_dir()?.join(KERNEL_NAME);
    if !dir.join("kernel.json").exists() {
        return Ok(None);
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_json_has_no_nulls_and_uses_message_interrupts() {
        let spec = kernel_json(Path::new("/opt/ranch-kernel"), &Default::default());
        let text = spec.to_string();
        assert!(!text.contains("null"), "{text}");
        assert_eq!(spec["interrupt_mode"], "message");
        assert_eq!(spec["argv"][2], "{connection_file}");
        assert_eq!(spec["language"], "rust");
    }

    #[test]
    fn the_toolchain_is_recorded_and_added_to_a_path_without_cargo() {
        let root = std::env::temp_dir().join(format!("ranch-toolchain-{}", std::process::id()));
        let (bin, other) = (root.join("cargo-bin"), root.join("usr-bin"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(bin.join("cargo"), "").unwrap();
        std::fs::write(bin.join("rustc"), "").unwrap();
        let path = std::env::join_paths([&other, &bin]).unwrap();
        let env = toolchain_env(Some(&path));
        assert_eq!(env[TOOLCHAIN_PATH_ENV], bin.to_str().unwrap());
        let recorded = std::ffi::OsString::from(bin.to_str().unwrap());
        let minimal = std::ffi::OsString::from(other.to_str().unwrap());
        let fixed = path_with_toolchain(Some(&minimal), Some(&recorded)).unwrap();
        assert_eq!(std::env::split_paths(&fixed).collect::<Vec<_>>(), [other.clone(), bin.clone()]);
        assert_eq!(path_with_toolchain(Some(&path), Some(&recorded)), None, "cargo is on PATH already");
        assert_eq!(path_with_toolchain(Some(&minimal), None), None);
        let gone = std::ffi::OsString::from(root.join("gone").to_str().unwrap());
        assert_eq!(path_with_toolchain(Some(&minimal), Some(&gone)), None, "no cargo where the install found it: nothing helps");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn prefix_location() {
        let dir = Location::Prefix("/p".into()).kernels_dir().unwrap();
        assert_eq!(dir, Path::new("/p/share/jupyter/kernels"));
    }

    #[test]
    fn logos_are_png() {
        assert!(LOGO_32.starts_with(b"\x89PNG") && LOGO_64.starts_with(b"\x89PNG"));
    }
}
