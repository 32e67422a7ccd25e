//! Physical network interfaces from /sys/class/net.

use std::collections::HashMap;
use std::net::IpAddr;

use landfall_proto::inventory::Nic;

use super::{link_name, read_attr, Root};

pub(super) fn detect(root: &Root) -> Vec<Nic> {
    let addresses = if root.live {
        live_addresses()
    } else {
        HashMap::new()
    };
    root.list("sys/class/net")
        .into_iter()
        .filter_map(|name| {
            let dir = root.path(&format!("sys/class/net/{name}"));
            // Physical interfaces have a bus device; lo, bridges, bonds,
            // veth, tun, ifb do not.
            if !dir.join("device").exists() {
                return None;
            }
            let operstate = read_attr(&dir.join("operstate"));
            let carrier = read_attr(&dir.join("carrier"));
            Some(Nic {
                mac: read_attr(&dir.join("address"))
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                driver: link_name(&dir.join("device/driver")),
                link_up: operstate.as_deref() == Some("up") || carrier.as_deref() == Some("1"),
                speed_mbps: read_attr(&dir.join("speed")).and_then(|s| parse_speed(&s)),
                addresses: addresses.get(&name).cloned().unwrap_or_default(),
                name,
            })
        })
        .collect()
}

/// The `speed` attribute: Mb/s, or -1 (or an error on read) when unknown.
pub(super) fn parse_speed(s: &str) -> Option<u32> {
    let v: i64 = s.trim().parse().ok()?;
    u32::try_from(v).ok().filter(|v| *v > 0)
}

/// Addresses of this machine's interfaces in CIDR form, by interface name.
fn live_addresses() -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return map;
    };
    for ifa in addrs {
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let ip_and_prefix =
            if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                Some((IpAddr::V4(a.ip()), u32::from(m.ip()).count_ones()))
            } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                Some((IpAddr::V6(a.ip()), u128::from(m.ip()).count_ones()))
            } else {
                None
            };
        if let Some((ip, prefix)) = ip_and_prefix {
            map.entry(ifa.interface_name)
                .or_default()
                .push(format!("{ip}/{prefix}"));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_unknown_is_none() {
        assert_eq!(parse_speed("1000\n"), Some(1000));
        assert_eq!(parse_speed("-1"), None);
        assert_eq!(parse_speed("0"), None);
        assert_eq!(parse_speed(""), None);
    }
}
