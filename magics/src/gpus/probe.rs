//! Finding the machine's GPUs with the CUDA driver API (cudarc, loaded at run time).
//!
//! The driver is asked in a helper process: the hosting binary started again in the role
//! [`crate::role::GPU_PROBE`], which [`serve_probe`] answers with one JSON line and exits.
//! So the kernel never loads libcuda or creates a context (which would hold GPU memory for
//! the session's life), a driver that hangs or crashes costs a bounded wait, and the helper
//! sees every device: it runs without the kernel's `CUDA_VISIBLE_DEVICES`, which the plan
//! applies itself.

use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// How long the helper may take (a driver can take seconds to initialise many GPUs).
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_ANSWER: u64 = 1 << 20;

/// One GPU, as the driver describes it; `index` is its place in PCI bus order (what
/// nvidia-smi shows, and what CUDA numbers with `CUDA_DEVICE_ORDER=PCI_BUS_ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: usize,
    pub name: String,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`
    pub uuid: String,
    pub pci_bus_id: String,
    pub memory_bytes: u64,
    pub compute_capability: (i32, i32),
    /// From NVML, when it is there: free memory and the share of time a kernel ran lately.
    pub memory_free_bytes: Option<u64>,
    pub utilization_percent: Option<u32>,
}

/// The devices found, and why there are none when that is not simply "no GPU".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    pub devices: Vec<Device>,
    pub note: Option<String>,
}

/// The machine's GPUs, asked once per process (through the helper).
pub fn discover() -> &'static Discovery {
    static FOUND: OnceLock<Discovery> = OnceLock::new();
    FOUND.get_or_init(|| ask_helper().unwrap_or_else(|note| Discovery { devices: vec![], note: Some(note) }))
}

fn ask_helper() -> Result<Discovery, String> {
    let exe = std::env::current_exe().map_err(|e| format!("GPU discovery: cannot find this program: {e}"))?;
    let mut command = Command::new(exe);
    command
        .env(crate::role::ROLE_ENV, crate::role::GPU_PROBE)
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    let answer = crate::bounded_output::output_within(&mut command, PROBE_TIMEOUT, MAX_ANSWER)
        .map_err(|e| format!("GPU discovery: cannot start the helper: {e}"))?;
    let Some((status, text)) = answer else {
        return Err(format!("GPU discovery: the CUDA driver did not answer within {}s", PROBE_TIMEOUT.as_secs()));
    };
    if !status.success() {
        return Err(format!("GPU discovery: the helper failed ({status}); treating this machine as having no GPU"));
    }
    parse_answer(&text)
}

fn parse_answer(text: &str) -> Result<Discovery, String> {
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| format!("GPU discovery: unreadable answer: {e}"))?;
    let devices = v["devices"]
        .as_array()
        .ok_or("GPU discovery: no device list")?
        .iter()
        .map(|d| {
            Some(Device {
                index: d["index"].as_u64()? as usize,
                name: d["name"].as_str()?.to_string(),
                uuid: d["uuid"].as_str()?.to_string(),
                pci_bus_id: d["pci_bus_id"].as_str()?.to_string(),
                memory_bytes: d["memory_bytes"].as_u64()?,
                compute_capability: (d["cc"][0].as_i64()? as i32, d["cc"][1].as_i64()? as i32),
                memory_free_bytes: d["memory_free_bytes"].as_u64(),
                utilization_percent: d["utilization_percent"].as_u64().map(|u| u.min(100) as u32),
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("GPU discovery: a malformed device")?;
    Ok(Discovery { devices, note: v["note"].as_str().map(str::to_string) })
}

/// The helper process: answers and exits.
pub fn serve_probe() -> ! {
    let (devices, note) = match probe_here() {
        Ok(found) => found,
        Err(note) => (vec![], Some(note)),
    };
    let devices: Vec<Value> = devices
        .iter()
        .map(|d| {
            json!({"index": d.index, "name": d.name, "uuid": d.uuid, "pci_bus_id": d.pci_bus_id,
                   "memory_bytes": d.memory_bytes, "cc": [d.compute_capability.0, d.compute_capability.1],
                   "memory_free_bytes": d.memory_free_bytes, "utilization_percent": d.utilization_percent})
        })
        .collect();
    println!("{}", json!({"devices": devices, "note": note}));
    std::process::exit(0);
}

/// Asks the driver (in this process: only the helper calls it).
fn probe_here() -> Result<(Vec<Device>, Option<String>), String> {
    use cudarc::driver::{result, sys};
    // cudarc panics when libcuda is missing: ask first.
    // SAFETY: only tries to open the library.
    if !unsafe { sys::is_culib_present() } {
        return Ok((vec![], None));
    }
    if let Err(e) = result::init() {
        // No device (100) is the driver's way of saying "none"; anything else is worth saying.
        return if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
            Ok((vec![], None))
        } else {
            Ok((vec![], Some(format!("the CUDA driver did not start ({:?}): no GPU is used", e.0))))
        };
    }
    let count = result::device::get_count().map_err(|e| format!("cuDeviceGetCount: {:?}", e.0))?;
    let mut devices = Vec::new();
    for ordinal in 0..count {
        let dev = result::device::get(ordinal).map_err(|e| format!("cuDeviceGet({ordinal}): {:?}", e.0))?;
        let name = result::device::get_name(dev).map_err(|e| format!("cuDeviceGetName: {:?}", e.0))?;
        let mut uuid = sys::CUuuid { bytes: [0; 16] };
        // SAFETY: out-pointer to a live CUuuid; dev came from cuDeviceGet.
        unsafe { sys::cuDeviceGetUuid_v2(&mut uuid, dev) }.result().map_err(|e| format!("cuDeviceGetUuid: {:?}", e.0))?;
        let mut bus = [0 as std::ffi::c_char; 32];
        // SAFETY: the buffer's length is passed; the driver writes a NUL-terminated string.
        unsafe { sys::cuDeviceGetPCIBusId(bus.as_mut_ptr(), bus.len() as i32, dev) }
            .result()
            .map_err(|e| format!("cuDeviceGetPCIBusId: {:?}", e.0))?;
        // SAFETY: NUL-terminated (the driver's contract; the last byte is never written).
        let pci_bus_id = unsafe { std::ffi::CStr::from_ptr(bus.as_ptr()) }.to_string_lossy().into_owned();
        // SAFETY: dev came from cuDeviceGet.
        let memory_bytes = unsafe { result::device::total_mem(dev) }.map_err(|e| format!("cuDeviceTotalMem: {:?}", e.0))? as u64;
        let attr = |a| {
            // SAFETY: as above.
            unsafe { result::device::get_attribute(dev, a) }.unwrap_or(0)
        };
        let cc = (
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
        );
        let u = uuid.bytes.map(|b| b as u8);
        let hex = |r: std::ops::Range<usize>| u[r].iter().map(|b| format!("{b:02x}")).collect::<String>();
        let uuid = format!("GPU-{}-{}-{}-{}-{}", hex(0..4), hex(4..6), hex(6..8), hex(8..10), hex(10..16));
        devices.push(Device {
            index: 0,
            name,
            uuid,
            pci_bus_id,
            memory_bytes,
            compute_capability: cc,
            memory_free_bytes: None,
            utilization_percent: None,
        });
    }
    add_nvml_figures(&mut devices);
    // The helper runs with CUDA_DEVICE_ORDER=PCI_BUS_ID, but the order is made sure of here.
    devices.sort_by(|a, b| a.pci_bus_id.cmp(&b.pci_bus_id));
    for (i, d) in devices.iter_mut().enumerate() {
        d.index = i;
    }
    Ok((devices, None))
}

/// Free memory and utilisation from NVML, joined by UUID (NVML numbers devices its own
/// way). Without NVML (no `libnvidia-ml.so.1`) the figures stay unknown.
fn add_nvml_figures(devices: &mut [Device]) {
    let Ok(nvml) = nvml_wrapper::Nvml::init() else { return };
    for d in devices {
        let Ok(device) = nvml.device_by_uuid(d.uuid.as_str()) else { continue };
        d.memory_free_bytes = device.memory_info().ok().map(|m| m.free);
        d.utilization_percent = device.utilization_rates().ok().map(|u| u.gpu);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_back_and_garbage_is_a_note() {
        let text =
            r#"{"devices":[{"index":0,"name":"A","uuid":"GPU-1","pci_bus_id":"0000:01:00.0","memory_bytes":5,"cc":[9,0]}],"note":null}"#;
        let d = parse_answer(text).unwrap();
        assert_eq!(d.devices[0].uuid, "GPU-1");
        assert_eq!(d.devices[0].compute_capability, (9, 0));
        assert!(parse_answer("nonsense").unwrap_err().contains("unreadable"));
        assert!(parse_answer(r#"{"devices":[{"index":"x"}]}"#).unwrap_err().contains("malformed"));
    }
}
