//! A small fleet of test hosts: one namespace per host, all joined through a bridge in a
//! switch namespace, with IPv4 and IPv6 addresses. Everything is removed on drop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use crate::netns::{Netns, sh};

/// One host on the fleet network.
pub struct Host {
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Host {
    pub fn addr(&self) -> IpAddr {
        self.v4.into()
    }
}

/// Hosts on one L2 segment, 10.240.1.0/24 and fd00:4b47::/64. Each host's interface is
/// `kgt0`. Hosts are dropped before the switch.
pub struct Fleet {
    pub hosts: Vec<Host>,
    _switch: Netns,
}

impl Fleet {
    /// Hosts get 10.240.1.<n> and fd00:4b47::<n> for n = 1, 2, … in the order given;
    /// a host named "client" also gets 10.240.1.200 as an extra (non-default) address.
    pub fn new(names: &[&str]) -> Fleet {
        crate::require_root();
        let switch = Netns::new("s");
        sh(switch
            .cmd("ip")
            .args(["link", "add", "br0", "type", "bridge"]));
        sh(switch.cmd("ip").args(["link", "set", "br0", "up"]));
        let mut hosts = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let n = i as u8 + 1;
            let ns = Netns::new(&name.chars().take(3).collect::<String>());
            let port = format!("p{n}");
            sh(Command::new("ip").args([
                "link",
                "add",
                "kgt0",
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &switch.name,
            ]));
            sh(switch
                .cmd("ip")
                .args(["link", "set", &port, "master", "br0", "up"]));
            let v4 = Ipv4Addr::new(10, 240, 1, n);
            let v6 = Ipv6Addr::new(0xfd00, 0x4b47, 0, 0, 0, 0, 0, u16::from(n));
            sh(ns
                .cmd("ip")
                .args(["addr", "add", &format!("{v4}/24"), "dev", "kgt0"]));
            sh(ns
                .cmd("ip")
                .args(["addr", "add", &format!("{v6}/64"), "dev", "kgt0", "nodad"]));
            if *name == "client" {
                sh(ns
                    .cmd("ip")
                    .args(["addr", "add", "10.240.1.200/24", "dev", "kgt0"]));
            }
            sh(ns.cmd("ip").args(["link", "set", "kgt0", "up"]));
            hosts.push(Host { ns, v4, v6 });
        }
        Fleet {
            hosts,
            _switch: switch,
        }
    }

    /// The host at `i` (the order given to `new`).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }
}
