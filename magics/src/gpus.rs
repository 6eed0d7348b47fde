//! Which GPU each rank gets.
//!
//! Discovery reads the NVIDIA driver's `/proc/driver/nvidia/gpus` (one entry per device)
//! and honours a `CUDA_VISIBLE_DEVICES` the kernel itself runs under, so it needs no CUDA
//! libraries and works the same on machines without GPUs.

use crate::args::{GpuVisibility, Gpus};

/// Device ordinals visible to this process.
pub fn visible() -> Vec<usize> {
    let installed = std::fs::read_dir("/proc/driver/nvidia/gpus").map(|d| d.count()).unwrap_or(0);
    visible_from(installed, std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref())
}

fn visible_from(installed: usize, cuda_visible: Option<&str>) -> Vec<usize> {
    match cuda_visible {
        // CUDA renumbers visible devices from 0.
        Some(list) if !list.trim().is_empty() => (0..list.split(',').filter(|s| !s.trim().is_empty()).count().min(installed.max(1))).collect(),
        Some(_) => vec![],
        None => (0..installed).collect(),
    }
}

/// Per-rank environment for `n` ranks: rank i gets device i mod G.
pub fn assign(gpus: &Gpus, visibility: GpuVisibility, n: usize) -> Result<Vec<Vec<(String, String)>>, String> {
    assign_from(&visible(), gpus, visibility, n)
}

fn assign_from(visible: &[usize], gpus: &Gpus, visibility: GpuVisibility, n: usize) -> Result<Vec<Vec<(String, String)>>, String> {
    let chosen: Vec<usize> = match gpus {
        Gpus::None => vec![],
        Gpus::Auto => visible.to_vec(),
        Gpus::Devices(list) => {
            if let Some(bad) = list.iter().find(|d| !visible.contains(d)) {
                return Err(match visible.len() {
                    0 => format!("--gpus {bad}: no GPU is visible on this machine (use --gpus none or auto)"),
                    g => format!("--gpus {bad}: there is no GPU {bad}; visible GPUs are 0..{}", g - 1),
                });
            }
            list.clone()
        }
    };
    if chosen.is_empty() {
        return Ok(vec![vec![]; n]);
    }
    let all = chosen.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    Ok((0..n)
        .map(|rank| {
            let device = chosen[rank % chosen.len()];
            match visibility {
                GpuVisibility::Pinned => vec![
                    ("CUDA_VISIBLE_DEVICES".to_string(), device.to_string()),
                    ("RANCH_GPU".to_string(), "0".to_string()),
                ],
                GpuVisibility::All => vec![
                    ("CUDA_VISIBLE_DEVICES".to_string(), all.clone()),
                    ("RANCH_GPU".to_string(), (rank % chosen.len()).to_string()),
                ],
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &[(String, String)], k: &str) -> Option<String> {
        v.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone())
    }

    #[test]
    fn no_gpus_pins_nothing() {
        let a = assign_from(&[], &Gpus::Auto, GpuVisibility::Pinned, 3).unwrap();
        assert!(a.iter().all(Vec::is_empty));
    }

    #[test]
    fn ranks_wrap_around_the_gpus() {
        let a = assign_from(&[0, 1], &Gpus::Auto, GpuVisibility::Pinned, 3).unwrap();
        let devs: Vec<_> = a.iter().map(|e| env(e, "CUDA_VISIBLE_DEVICES").unwrap()).collect();
        assert_eq!(devs, ["0", "1", "0"]);
        assert!(a.iter().all(|e| env(e, "RANCH_GPU").as_deref() == Some("0")));
    }

    #[test]
    fn visibility_all_keeps_every_chosen_device() {
        let a = assign_from(&[0, 1, 2], &Gpus::Devices(vec![0, 2]), GpuVisibility::All, 2).unwrap();
        assert_eq!(env(&a[1], "CUDA_VISIBLE_DEVICES").as_deref(), Some("0,2"));
        assert_eq!(env(&a[1], "RANCH_GPU").as_deref(), Some("1"));
    }

    #[test]
    fn missing_gpus_are_a_usage_error() {
        assert!(assign_from(&[], &Gpus::Devices(vec![0]), GpuVisibility::Pinned, 1).unwrap_err().contains("no GPU is visible"));
        assert!(assign_from(&[0], &Gpus::Devices(vec![3]), GpuVisibility::Pinned, 1).unwrap_err().contains("no GPU 3"));
        assert!(assign_from(&[0], &Gpus::None, GpuVisibility::Pinned, 2).unwrap().iter().all(Vec::is_empty));
    }

    #[test]
    fn cuda_visible_devices_limits_discovery() {
        assert_eq!(visible_from(4, Some("2,3")), vec![0, 1]);
        assert_eq!(visible_from(4, Some("")), Vec::<usize>::new());
        assert_eq!(visible_from(2, None), vec![0, 1]);
    }
}
