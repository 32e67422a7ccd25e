//! CPU from /proc/cpuinfo, memory from /proc/meminfo (sysinfo as the live fallback).

use std::collections::BTreeSet;

use landfall_proto::inventory::{Cpu, Memory};

use super::Root;

pub(super) fn detect(root: &Root, cpuinfo: Option<&str>) -> Cpu {
    let mut cpu = cpuinfo.map(parse_cpuinfo).unwrap_or_default();
    if cpu.threads == 0 && root.live {
        // /proc unreadable on the live system: ask sysinfo (which reads the
        // same kernel interfaces, with its own fallbacks).
        let threads = std::thread::available_parallelism().map_or(0, |n| n.get() as u32);
        let sys = sysinfo::System::new();
        cpu.threads = threads;
        cpu.cores = sys.physical_core_count().map_or(threads, |n| n as u32);
    }
    cpu
}

/// Parse /proc/cpuinfo (x86 layout; other architectures fill what they have).
pub(super) fn parse_cpuinfo(text: &str) -> Cpu {
    let mut cpu = Cpu::default();
    let mut threads = 0u32;
    let mut cores: BTreeSet<(String, String)> = BTreeSet::new();
    let mut flags: BTreeSet<&'static str> = BTreeSet::new();

    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut physical_id = None;
        let mut core_id = None;
        let mut is_processor = false;
        for line in block.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            match key {
                "processor" => is_processor = true,
                "model name" | "cpu model" if cpu.model.is_none() && !value.is_empty() => {
                    cpu.model = Some(value.to_string())
                }
                "vendor_id" | "vendor" if cpu.vendor.is_none() && !value.is_empty() => {
                    cpu.vendor = Some(value.to_string())
                }
                "physical id" => physical_id = Some(value.to_string()),
                "core id" => core_id = Some(value.to_string()),
                "flags" => {
                    for f in value.split_whitespace() {
                        match f {
                            "vmx" => {
                                flags.insert("vmx");
                            }
                            "svm" => {
                                flags.insert("svm");
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if is_processor {
            threads += 1;
            if let (Some(p), Some(c)) = (physical_id, core_id) {
                cores.insert((p, c));
            }
        }
    }
    cpu.threads = threads;
    // Physical cores: distinct (physical id, core id) pairs; without
    // topology lines (some VMs, non-x86) every thread counts as a core.
    cpu.cores = if cores.is_empty() {
        threads
    } else {
        cores.len() as u32
    };
    cpu.virtualization_flags = flags.into_iter().map(String::from).collect();
    cpu
}

/// True when the "hypervisor" CPU flag is set (we run under some hypervisor).
pub(super) fn has_hypervisor_flag(cpuinfo: &str) -> bool {
    cpuinfo.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim() == "flags" && v.split_whitespace().any(|f| f == "hypervisor")
        })
    })
}

pub(super) fn memory(root: &Root) -> Memory {
    let from_proc = root
        .read_string("proc/meminfo")
        .and_then(|t| parse_meminfo_total(&t));
    let total_bytes = match from_proc {
        Some(b) => b,
        None if root.live => {
            let mut sys = sysinfo::System::new();
            sys.refresh_memory();
            sys.total_memory()
        }
        None => 0,
    };
    Memory { total_bytes }
}

/// MemTotal from /proc/meminfo, in bytes.
pub(super) fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    let mult = match parts.next() {
        Some("kB") | Some("KB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    // A value past u64 is not a real machine's: unknown, not a panic.
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_SOCKETS_HT: &str = "\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu vme vmx sse

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu vme vmx sse

processor\t: 2
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
physical id\t: 1
core id\t\t: 0
flags\t\t: fpu vme vmx sse

processor\t: 3
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
physical id\t: 1
core id\t\t: 0
flags\t\t: fpu vme vmx sse
";

    #[test]
    fn cores_are_distinct_socket_core_pairs() {
        let cpu = parse_cpuinfo(TWO_SOCKETS_HT);
        assert_eq!(cpu.threads, 4);
        assert_eq!(cpu.cores, 2, "same core id on two sockets is two cores");
        assert_eq!(cpu.vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!(
            cpu.model.as_deref(),
            Some("Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz")
        );
        assert_eq!(cpu.virtualization_flags, vec!["vmx".to_string()]);
    }

    #[test]
    fn without_topology_cores_fall_back_to_threads() {
        let cpu = parse_cpuinfo("processor : 0\nflags : svm hypervisor\n\nprocessor : 1\n");
        assert_eq!((cpu.threads, cpu.cores), (2, 2));
        assert_eq!(cpu.virtualization_flags, vec!["svm".to_string()]);
        assert!(has_hypervisor_flag(
            "processor : 0\nflags : svm hypervisor\n"
        ));
        assert!(!has_hypervisor_flag("processor : 0\nflags : svm\n"));
    }

    #[test]
    fn meminfo_total_is_in_bytes() {
        let t = "MemTotal:       16318480 kB\nMemFree:         1234 kB\n";
        assert_eq!(parse_meminfo_total(t), Some(16318480 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
    }
}
