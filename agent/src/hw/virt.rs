//! Virtualization, named as `systemd-detect-virt --vm` names it.
//!
//! systemd asks CPUID first, then DMI. CPUID is not readable from a captured
//! tree, so the paravirtual clocksource stands in for it (a KVM or Hyper-V
//! guest registers "kvm-clock" / "hyperv_clocksource_*"); then DMI, then
//! /sys/hypervisor/type (Xen), then the bare "hypervisor" CPU flag
//! ("vm-other"), else "none". Containers are not reported (we install VMs and
//! metal).

use landfall_proto::inventory::Dmi;

use super::{cpu, Root};

pub(super) fn detect(root: &Root, cpuinfo: Option<&str>, dmi: &Dmi) -> String {
    if cpuinfo.is_some_and(|c| c.contains("User Mode Linux")) {
        return "uml".into();
    }
    let clocksources = root
        .read_attr("sys/devices/system/clocksource/clocksource0/available_clocksource")
        .unwrap_or_default();
    let from_clock = from_clocksource(&clocksources);
    let from_dmi = [
        dmi.vendor.as_deref(),
        dmi.product.as_deref(),
        root.read_attr("sys/class/dmi/id/board_vendor").as_deref(),
        root.read_attr("sys/class/dmi/id/bios_vendor").as_deref(),
    ]
    .into_iter()
    .flatten()
    .find_map(from_dmi_string);

    // Like systemd: the CPUID-level answer wins, except that VirtualBox and
    // Amazon run on KVM paravirt and are better named by DMI.
    match (from_clock, from_dmi) {
        (_, Some(d @ ("oracle" | "amazon"))) => return d.into(),
        (Some(c), _) => return c.into(),
        (None, Some(d)) => return d.into(),
        (None, None) => {}
    }
    if root.read_attr("sys/hypervisor/type").as_deref() == Some("xen") {
        return "xen".into();
    }
    if cpuinfo.is_some_and(cpu::has_hypervisor_flag) {
        return "vm-other".into();
    }
    "none".into()
}

fn from_clocksource(list: &str) -> Option<&'static str> {
    list.split_whitespace().find_map(|c| match c {
        "kvm-clock" => Some("kvm"),
        "xen" => Some("xen"),
        c if c.starts_with("hyperv_clocksource") => Some("microsoft"),
        _ => None,
    })
}

/// systemd's DMI vendor table (src/basic/virt.c), first match wins.
pub(super) fn from_dmi_string(s: &str) -> Option<&'static str> {
    const TABLE: &[(&str, &str)] = &[
        ("KVM", "kvm"),
        ("OpenStack", "kvm"),
        ("KubeVirt", "kvm"),
        ("Amazon EC2", "amazon"),
        ("QEMU", "qemu"),
        ("VMware", "vmware"),
        ("VMW", "vmware"),
        ("innotek GmbH", "oracle"),
        ("VirtualBox", "oracle"),
        ("Oracle Corporation", "oracle"),
        ("Xen", "xen"),
        ("Bochs", "bochs"),
        ("Parallels", "parallels"),
        ("BHYVE", "bhyve"),
        ("Hyper-V", "microsoft"),
        ("Apple Virtualization", "apple"),
        ("Google Compute Engine", "google"),
    ];
    TABLE
        .iter()
        .find(|(prefix, _)| s.starts_with(prefix))
        .map(|(_, id)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmi_vendors_map_to_systemd_ids() {
        assert_eq!(from_dmi_string("QEMU"), Some("qemu"));
        assert_eq!(from_dmi_string("VMware, Inc."), Some("vmware"));
        assert_eq!(from_dmi_string("innotek GmbH"), Some("oracle"));
        assert_eq!(from_dmi_string("Dell Inc."), None);
        assert_eq!(from_clocksource("tsc kvm-clock acpi_pm"), Some("kvm"));
        assert_eq!(from_clocksource("tsc hpet acpi_pm"), None);
    }
}
