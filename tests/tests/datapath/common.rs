//! Shared fixture of the kernel datapath tests: a test network with a client and a server
//! workload, the datapath installed on the network's parent cgroup under a per-test bpffs root,
//! and builders for map entries.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use bulkhead_tests::{netns::TestNet, workload::Workload};
use enforcer::datapath::{Datapath, DatapathOptions, DesiredMaps, pins, uninstall};
use enforcer_common::{
    DefaultKey, POLICY_KEY_FIXED_BITS, PolicyKey, PolicyValue, REASON_ALLOWED_BY_RULE,
    REASON_DEFAULT_DENY, REASON_DENIED_BY_RULE, TIME_UNBOUNDED_END, VERDICT_ALLOW, VERDICT_DENY,
    WorkloadValue,
};

pub const CLIENT: u32 = 256;
pub const SERVER: u32 = 257;

/// `true` when the test must be skipped (not root, no BPF); set
/// `BULKHEAD_REQUIRE_KERNEL_TESTS=1` to make that a failure instead.
pub fn skip() -> bool {
    bulkhead_tests::netns::skip_kernel_tests("kernel datapath")
}

/// Removes the pins (detaching the programs) when dropped.
pub struct PinGuard(pub PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(e) = uninstall(&self.0) {
            eprintln!("uninstall {}: {e}", self.0.display());
        }
    }
}

/// Field order is drop order: the datapath is removed before the network and cgroups.
pub struct Env {
    /// `None` between [`Env::stop`] and [`Env::adopt`] (no process holds the datapath).
    pub dp: Option<Datapath>,
    pub pins: PinGuard,
    pub client: Workload,
    pub server: Workload,
    pub net: TestNet,
}

impl Env {
    pub fn new(name: &str) -> Self {
        Self::with_options(name, &DatapathOptions::default())
    }

    /// The network and workloads only: nothing installed yet (the pins are still removed at the
    /// end, whoever made them).
    pub fn without_datapath(name: &str) -> Self {
        Self::build(name, None)
    }

    pub fn with_options(name: &str, options: &DatapathOptions) -> Self {
        Self::build(name, Some(options))
    }

    fn build(name: &str, options: Option<&DatapathOptions>) -> Self {
        let mut net = TestNet::new(name).expect("test network");
        let client = net
            .add_workload(
                "client",
                Ipv4Addr::new(10, 200, 0, 1),
                "fd00:200::1".parse().expect("v6"),
            )
            .expect("client workload");
        let server = net
            .add_workload(
                "server",
                Ipv4Addr::new(10, 200, 0, 2),
                "fd00:200::2".parse().expect("v6"),
            )
            .expect("server workload");
        let root = bpffs_root(&net);
        let pins = PinGuard(root.clone());
        let dp = options.map(|options| {
            Datapath::install_or_adopt_with(&root, net.cgroup_parent(), options).expect("install")
        });
        Self {
            dp,
            pins,
            client,
            server,
            net,
        }
    }

    pub fn dp(&mut self) -> &mut Datapath {
        self.dp
            .as_mut()
            .expect("datapath handle (adopt after stop)")
    }

    /// Drops the handle, as a process exit would: only the pins remain.
    pub fn stop(&mut self) {
        self.dp = None;
    }

    /// Installs or adopts again from the pins.
    pub fn adopt(&mut self) -> &mut Datapath {
        let dp = Datapath::install_or_adopt(&self.pins.0, self.net.cgroup_parent()).expect("adopt");
        self.dp.insert(dp)
    }

    /// Maps with both workloads and their addresses, no policy; revision `revision`.
    pub fn base(&self, revision: u64) -> DesiredMaps {
        let mut m = DesiredMaps {
            revision,
            ..DesiredMaps::default()
        };
        for (w, id) in [(&self.client, CLIENT), (&self.server, SERVER)] {
            m.workloads.insert(
                w.cgroup_id,
                WorkloadValue {
                    identity: id,
                    flags: 0,
                },
            );
            m.addresses
                .insert((w.ipv4.to_ipv6_mapped().octets(), 128), id);
            m.addresses.insert((w.ipv6.octets(), 128), id);
        }
        m
    }

    pub fn server_v4(&self) -> IpAddr {
        IpAddr::V4(self.server.ipv4)
    }

    pub fn server_v6(&self) -> IpAddr {
        IpAddr::V6(self.server.ipv6)
    }
}

pub fn bpffs_root(net: &TestNet) -> PathBuf {
    Path::new(pins::BPFFS_MOUNT).join(net.prefix())
}

/// A policy key for an exact port (prefix over all 96 bits) or a port block of `port_bits`
/// leading bits.
pub fn key(
    local: u32,
    peer: u32,
    direction: u8,
    protocol: u8,
    port: u16,
    port_bits: u32,
) -> (PolicyKey, u32) {
    let k = PolicyKey {
        local_identity: local,
        peer_identity: peer,
        direction,
        protocol,
        port_be: port.to_be_bytes(),
    };
    (k, POLICY_KEY_FIXED_BITS + port_bits)
}

pub fn value(verdict: u8, rule_id: u32) -> PolicyValue {
    let reason = if verdict == VERDICT_DENY {
        REASON_DENIED_BY_RULE
    } else {
        REASON_ALLOWED_BY_RULE
    };
    PolicyValue {
        verdict,
        reason,
        _pad: [0; 2],
        rule_id,
        not_before: 0,
        expires_at: TIME_UNBOUNDED_END,
    }
}

pub fn allow(rule_id: u32) -> PolicyValue {
    value(VERDICT_ALLOW, rule_id)
}

pub fn deny(rule_id: u32) -> PolicyValue {
    value(VERDICT_DENY, rule_id)
}

/// Isolates `local` in `direction` (default deny attributed to `rule_id`).
pub fn isolate(m: &mut DesiredMaps, local: u32, direction: u8, rule_id: u32) {
    let v = PolicyValue {
        reason: REASON_DEFAULT_DENY,
        ..deny(rule_id)
    };
    m.defaults.insert(
        DefaultKey {
            local_identity: local,
            direction,
            _pad: [0; 3],
        },
        v,
    );
}

/// The IPv4-mapped form of an address, as keys and events carry it.
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[allow(dead_code, reason = "used by some test files only")]
pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("v6 literal")
}
