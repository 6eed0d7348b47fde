//! `%ranch_gpus`: what the machine has and what `--gpus` numbers mean in this kernel.

use super::plan::kernel_visible;
use super::probe::Discovery;
use crate::grid::{Cell, Grid, escape};
use serde_json::{Map, Value};

/// The devices as a table (text and HTML): the number `--gpus` uses for each (none when the
/// kernel's `CUDA_VISIBLE_DEVICES` hides it), name, UUID, PCI bus, memory, compute
/// capability.
pub fn listing(found: &Discovery, cuda_visible: Option<&str>) -> Map<String, Value> {
    let visible = kernel_visible(&found.devices, cuda_visible);
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    let mut rows: Vec<[String; 8]> = found
        .devices
        .iter()
        .map(|d| {
            let ordinal = visible.iter().position(|u| *u == d.uuid).map_or("-".to_string(), |i| i.to_string());
            let (major, minor) = d.compute_capability;
            [
                ordinal,
                d.name.clone(),
                d.uuid.clone(),
                d.pci_bus_id.clone(),
                gib(d.memory_bytes),
                d.memory_free_bytes.map_or("?".into(), gib),
                d.utilization_percent.map_or("?".into(), |u| format!("{u}%")),
                format!("{major}.{minor}"),
            ]
        })
        .collect();
    for (i, id) in visible.iter().enumerate().filter(|(_, id)| id.starts_with("MIG-")) {
        rows.push([
            i.to_string(),
            "MIG instance".into(),
            id.clone(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    rows.sort_by_key(|r| r[0].parse::<usize>().unwrap_or(usize::MAX));
    let mut notes = Vec::new();
    if found.devices.is_empty() {
        notes.push("No GPU: ranks run on CPUs (`ranch::gpu()` is None).".to_string());
    }
    if let Some(note) = &found.note {
        notes.push(format!("GPU discovery: {note}"));
    }
    if let Some(cvd) = cuda_visible {
        notes.push(format!("This kernel runs with CUDA_VISIBLE_DEVICES={cvd}; `--gpus` numbers the GPUs it leaves visible."));
    }
    if !found.devices.is_empty() && found.devices.iter().all(|d| d.utilization_percent.is_none()) {
        notes.push("Free memory and utilisation come from NVML (libnvidia-ml.so.1), which is not here.".to_string());
    }
    let mut table = Grid::new(&["--gpus", "name", "UUID", "PCI bus", "memory", "free", "busy", "compute"]);
    for r in rows {
        table.row(r.map(Cell::text));
    }
    let mut text = Vec::new();
    let mut html = String::new();
    if !table.is_empty() {
        text.push(table.text());
        html.push_str(&table.html());
    }
    text.extend(notes.iter().cloned());
    for n in &notes {
        html.push_str(&format!("<p>{}</p>", escape(n)));
    }
    let mut data = Map::new();
    data.insert("text/plain".into(), Value::String(text.join("\n")));
    data.insert("text/html".into(), Value::String(html));
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpus::Device;

    fn device(i: usize) -> Device {
        Device {
            index: i,
            name: format!("<GPU {i}>"),
            uuid: format!("GPU-{i}"),
            pci_bus_id: format!("0000:0{i}:00.0"),
            memory_bytes: 80 << 30,
            compute_capability: (9, 0),
            memory_free_bytes: Some(20 << 30),
            utilization_percent: Some(35),
        }
    }

    #[test]
    fn lists_what_gpus_numbers_mean_here() {
        let found = Discovery { devices: vec![device(0), device(1)], note: None };
        let t = listing(&found, Some("1"));
        let text = t["text/plain"].as_str().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("--gpus  name"), "{text}");
        assert!(lines[1].starts_with("0       <GPU 1>  GPU-1"), "{text}");
        assert!(lines[2].starts_with("-       <GPU 0>  GPU-0"), "{text}");
        assert!(text.contains("80.0 GiB") && text.contains("20.0 GiB") && text.contains("35%") && text.contains("CUDA_VISIBLE_DEVICES=1"));
        assert!(t["text/html"].as_str().unwrap().contains("&lt;GPU 1&gt;"));
    }

    #[test]
    fn no_gpu_says_so_and_why() {
        let found = Discovery { devices: vec![], note: Some("the CUDA driver did not start".into()) };
        let text = listing(&found, None)["text/plain"].as_str().unwrap().to_string();
        assert_eq!(text, "No GPU: ranks run on CPUs (`ranch::gpu()` is None).\nGPU discovery: the CUDA driver did not start");
    }
}
