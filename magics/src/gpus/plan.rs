//! The pinning plan: a pure function from the machine's devices, the kernel's own
//! `CUDA_VISIBLE_DEVICES`, the rank count and the flags to each rank's environment.
//!
//! Ranks are given devices by UUID, never by index: a rank's `CUDA_VISIBLE_DEVICES`
//! replaces the kernel's, so an index there would be renumbered (a kernel started with
//! `CUDA_VISIBLE_DEVICES=2,3` that gave a rank `1` would hand it physical GPU 1).

use super::probe::Device;
use crate::args::{GpuVisibility, Gpus};

/// Each rank's environment, and what the user should know about the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub ranks: Vec<Vec<(String, String)>>,
    pub warning: Option<String>,
}

/// The devices the kernel itself may use, in its own ordinal order, as UUIDs (`GPU-…`, or
/// `MIG-…` for MIG instances named in `CUDA_VISIBLE_DEVICES`). As CUDA reads the variable:
/// unset is every device, empty is none, entries are indices (in PCI bus order, as
/// nvidia-smi numbers them) or UUIDs or unique UUID prefixes, and an entry that names
/// nothing hides itself and every entry after it.
pub fn kernel_visible(devices: &[Device], cuda_visible: Option<&str>) -> Vec<String> {
    let Some(list) = cuda_visible else {
        return devices.iter().map(|d| d.uuid.clone()).collect();
    };
    let mut seen = Vec::new();
    for entry in list.split(',').map(str::trim) {
        let found = if let Ok(i) = entry.parse::<usize>() {
            devices.get(i).map(|d| d.uuid.clone())
        } else if entry.starts_with("MIG-") && !devices.is_empty() {
            // MIG instances are not listed by discovery; the driver checks them.
            Some(entry.to_string())
        } else if entry.starts_with("GPU-") {
            let matches: Vec<&Device> = devices.iter().filter(|d| d.uuid.starts_with(entry)).collect();
            (matches.len() == 1).then(|| matches[0].uuid.clone())
        } else {
            None
        };
        match found {
            Some(id) if !seen.contains(&id) => seen.push(id),
            _ => break,
        }
    }
    seen
}

/// The plan for `n` ranks on this host (rank i is local rank i).
pub fn plan(devices: &[Device], cuda_visible: Option<&str>, gpus: &Gpus, visibility: GpuVisibility, n: usize) -> Result<Plan, String> {
    let visible = kernel_visible(devices, cuda_visible);
    let chosen: Vec<String> = match gpus {
        Gpus::None => vec![],
        Gpus::Auto => visible.clone(),
        Gpus::Devices(list) => {
            if let Some(bad) = list.iter().find(|&&d| d >= visible.len()) {
                return Err(match visible.len() {
                    0 => format!("--gpus {bad}: this kernel sees no GPU (use --gpus none or auto)"),
                    1 => format!("--gpus {bad}: there is no GPU {bad}; this kernel sees GPU 0 only"),
                    g => format!("--gpus {bad}: there is no GPU {bad}; this kernel sees GPUs 0..{}", g - 1),
                });
            }
            list.iter().map(|&d| visible[d].clone()).collect()
        }
    };
    if chosen.is_empty() {
        // `--gpus none` hides the GPUs a rank could otherwise see; with none there is nothing to hide.
        let hide = matches!(gpus, Gpus::None) && !visible.is_empty();
        let env = if hide { vec![("CUDA_VISIBLE_DEVICES".to_string(), String::new())] } else { vec![] };
        return Ok(Plan { ranks: vec![env; n], warning: None });
    }
    let g = chosen.len();
    let all = chosen.join(",");
    let ranks = (0..n)
        .map(|local| {
            let ordinal = local % g;
            let (visible_to_rank, gpu) = match visibility {
                GpuVisibility::Isolate => (chosen[ordinal].clone(), 0),
                GpuVisibility::All => (all.clone(), ordinal),
            };
            vec![
                ("CUDA_VISIBLE_DEVICES".to_string(), visible_to_rank),
                ("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()),
                ("RANCH_GPU".to_string(), gpu.to_string()),
            ]
        })
        .collect();
    let warning = (n > g).then(|| {
        format!(
            "{n} ranks share {g} GPU{}: rank i uses GPU i mod {g}. Ranks on one GPU share its memory, and NCCL cannot \
             put two ranks of one communicator on one GPU (use --gpus none for CPU-only ranks).",
            if g == 1 { "" } else { "s" }
        )
    });
    Ok(Plan { ranks, warning })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(n: usize) -> Vec<Device> {
        (0..n)
            .map(|i| Device {
                index: i,
                name: format!("GPU {i}"),
                uuid: format!("GPU-{i}{i}{i}{i}aaaa-0000"),
                pci_bus_id: format!("0000:{:02x}:00.0", i + 1),
                memory_bytes: 1 << 30,
                compute_capability: (9, 0),
                memory_free_bytes: None,
                utilization_percent: None,
            })
            .collect()
    }

    fn env(v: &[(String, String)], k: &str) -> Option<String> {
        v.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone())
    }

    fn visible_of(p: &Plan) -> Vec<String> {
        p.ranks.iter().map(|e| env(e, "CUDA_VISIBLE_DEVICES").unwrap()).collect()
    }

    #[test]
    fn no_gpus_pins_nothing() {
        let p = plan(&[], None, &Gpus::Auto, GpuVisibility::Isolate, 3).unwrap();
        assert!(p.ranks.iter().all(Vec::is_empty) && p.warning.is_none());
        let p = plan(&[], None, &Gpus::None, GpuVisibility::Isolate, 2).unwrap();
        assert!(p.ranks.iter().all(Vec::is_empty));
    }

    #[test]
    fn gpus_none_hides_the_gpus() {
        let p = plan(&devices(2), None, &Gpus::None, GpuVisibility::All, 2).unwrap();
        assert_eq!(visible_of(&p), ["", ""]);
        assert!(p.ranks.iter().all(|e| env(e, "RANCH_GPU").is_none()));
    }

    #[test]
    fn ranks_get_uuids_round_robin_with_a_warning() {
        let d = devices(2);
        let p = plan(&d, None, &Gpus::Auto, GpuVisibility::Isolate, 3).unwrap();
        assert_eq!(visible_of(&p), [d[0].uuid.clone(), d[1].uuid.clone(), d[0].uuid.clone()]);
        assert!(p.ranks.iter().all(|e| env(e, "RANCH_GPU").as_deref() == Some("0")));
        assert!(p.ranks.iter().all(|e| env(e, "CUDA_DEVICE_ORDER").as_deref() == Some("PCI_BUS_ID")));
        assert!(p.warning.unwrap().contains("3 ranks share 2 GPUs"));
        assert!(plan(&d, None, &Gpus::Auto, GpuVisibility::Isolate, 2).unwrap().warning.is_none());
    }

    #[test]
    fn visibility_all_shows_every_chosen_gpu_and_the_ordinal() {
        let d = devices(3);
        let p = plan(&d, None, &Gpus::Devices(vec![0, 2]), GpuVisibility::All, 2).unwrap();
        let both = format!("{},{}", d[0].uuid, d[2].uuid);
        assert_eq!(visible_of(&p), [both.clone(), both]);
        assert_eq!(env(&p.ranks[1], "RANCH_GPU").as_deref(), Some("1"));
    }

    #[test]
    fn the_kernels_own_cuda_visible_devices_is_respected_never_renumbered() {
        let d = devices(4);
        // A kernel under CUDA_VISIBLE_DEVICES=2,3: its GPU 1 is physical GPU 3.
        let p = plan(&d, Some("2,3"), &Gpus::Devices(vec![1]), GpuVisibility::Isolate, 1).unwrap();
        assert_eq!(visible_of(&p), [d[3].uuid.clone()]);
        // UUIDs, unique prefixes, MIG instances.
        assert_eq!(kernel_visible(&d, Some(&format!("{},GPU-0000", d[2].uuid))), [d[2].uuid.clone(), d[0].uuid.clone()]);
        assert_eq!(kernel_visible(&d, Some("MIG-abc,1")), ["MIG-abc".to_string(), d[1].uuid.clone()]);
        // Empty: none. An entry naming nothing hides the rest; an ambiguous prefix names nothing.
        assert!(kernel_visible(&d, Some("")).is_empty());
        assert_eq!(kernel_visible(&d, Some("1,7,0")), [d[1].uuid.clone()]);
        assert!(kernel_visible(&d, Some("GPU-")).is_empty());
        // Set on a machine without a driver: no GPU (not a phantom one).
        assert!(kernel_visible(&[], Some("0,1")).is_empty());
        assert!(kernel_visible(&[], Some("MIG-abc")).is_empty());
    }

    #[test]
    fn missing_gpus_are_a_usage_error() {
        assert!(plan(&[], None, &Gpus::Devices(vec![0]), GpuVisibility::Isolate, 1).unwrap_err().contains("sees no GPU"));
        assert!(plan(&devices(1), None, &Gpus::Devices(vec![3]), GpuVisibility::Isolate, 1).unwrap_err().contains("no GPU 3"));
        assert!(plan(&devices(4), Some("2,3"), &Gpus::Devices(vec![2]), GpuVisibility::Isolate, 1).unwrap_err().contains("GPUs 0..1"));
    }
}
