//! Brokers in network namespaces of their own, joined by a bridge, so that a test can cut one
//! off from the others with firewall rules inside its namespace (the network partitions of
//! Kafka's failure model; `tc netem` does not exist on the test machine). Root only.
//!
//! Layout for a test process `pid` (names fit the kernel's 15 characters): bridge `sp<pid>b` in
//! the test's own namespace, holding `10.<a>.<b>.1/24` (from the pid: tests running at once get
//! different subnets); per node `n` a namespace `sp<pid>n<n>`, with loopback up and a veth pair
//! `sp<pid>h<n>` (on the bridge) to `sp<pid>v<n>` (inside, `10.<a>.<b>.<10+n>/24`). The test
//! reaches every broker through the bridge; a cut drops, inside the node's namespace, every
//! packet to or from the other nodes' addresses, so clients (the bridge's address) still reach
//! it: a zombie that clients see and its peers do not. Everything is removed when the value is
//! dropped, even after a failed assertion.

use std::process::{Command, Stdio};

/// The namespaces of one test's nodes and the bridge between them.
pub struct Netns {
    prefix: String,
    subnet: String,
    nodes: Vec<u16>,
}

/// The nftables table a cut lives in, inside a node's namespace.
const CUT_TABLE: &str = "spate_cut";

impl Netns {
    /// Namespaces for nodes `nodes`, or why they cannot be made here (not root, no `ip` or
    /// `nft`).
    pub fn create(nodes: &[u16]) -> Result<Netns, String> {
        for tool in ["ip", "nft"] {
            let found =
                (Command::new(tool).arg("-V")).stdout(Stdio::null()).stderr(Stdio::null()).status();
            if !found.is_ok_and(|s| s.success()) {
                return Err(format!("{tool} is not installed (apt-get install iproute2 nftables)"));
            }
        }
        let pid = std::process::id();
        let subnet = format!("10.{}.{}", 100 + (pid / 250) % 100, pid % 250);
        let netns = Netns { prefix: format!("sp{pid}"), subnet, nodes: nodes.to_vec() };
        // Left by an earlier process of the same pid, or by a test process killed before its
        // cleanup ran (its pid no longer runs): gone first.
        netns.remove();
        remove_stale();
        let bridge = netns.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &format!("{}.1/24", netns.subnet), "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for &n in nodes {
            let (ns, host, inside) = (netns.namespace(n), netns.host_end(n), netns.inside_end(n));
            run("ip", &["netns", "add", &ns])?;
            run("ip", &["link", "add", &host, "type", "veth", "peer", "name", &inside])?;
            run("ip", &["link", "set", &inside, "netns", &ns])?;
            run("ip", &["link", "set", &host, "master", &bridge, "up"])?;
            let address = format!("{}/24", netns.address(n));
            in_namespace(&ns, "ip", &["addr", "add", &address, "dev", &inside])?;
            in_namespace(&ns, "ip", &["link", "set", &inside, "up"])?;
            in_namespace(&ns, "ip", &["link", "set", "lo", "up"])?;
        }
        Ok(netns)
    }

    /// Node `n`'s address.
    pub fn address(&self, n: u16) -> String {
        format!("{}.{}", self.subnet, 10 + n)
    }

    /// Node `n`'s namespace, for `ip netns exec`.
    pub fn namespace(&self, n: u16) -> String {
        format!("{}n{n}", self.prefix)
    }

    /// Cuts node `n` off from every other node: inside its namespace, packets from or to their
    /// addresses are dropped (connections stall, as behind a failed switch port: nothing is
    /// refused or reset).
    pub fn cut(&self, n: u16) -> Result<(), String> {
        let others: Vec<String> =
            self.nodes.iter().filter(|o| **o != n).map(|o| self.address(*o)).collect();
        let others = others.join(", ");
        let rules = format!(
            "table inet {CUT_TABLE} {{\n\
             chain input {{ type filter hook input priority 0; ip saddr {{ {others} }} drop; }}\n\
             chain output {{ type filter hook output priority 0; ip daddr {{ {others} }} drop; }}\n\
             }}\n"
        );
        let rules_file = std::env::temp_dir().join(format!("{}-cut-{n}.nft", self.prefix));
        std::fs::write(&rules_file, rules).map_err(|e| e.to_string())?;
        let loaded =
            in_namespace(&self.namespace(n), "nft", &["-f", &rules_file.to_string_lossy()]);
        let _ = std::fs::remove_file(&rules_file);
        loaded
    }

    /// Ends node `n`'s cut.
    pub fn heal(&self, n: u16) -> Result<(), String> {
        in_namespace(&self.namespace(n), "nft", &["delete", "table", "inet", CUT_TABLE])
    }

    fn bridge(&self) -> String {
        format!("{}b", self.prefix)
    }

    fn host_end(&self, n: u16) -> String {
        format!("{}h{n}", self.prefix)
    }

    fn inside_end(&self, n: u16) -> String {
        format!("{}v{n}", self.prefix)
    }

    /// Removes the namespaces and the bridge (the veth pairs go with the namespaces), ignoring
    /// what is not there.
    fn remove(&self) {
        for &n in &self.nodes {
            let _ = run("ip", &["netns", "del", &self.namespace(n)]);
            let _ = run("ip", &["link", "del", &self.host_end(n)]);
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes the namespaces and bridges of test processes that no longer run (a run killed with
/// SIGKILL cleans up nothing): named `sp<pid>n<n>` and `sp<pid>b`.
fn remove_stale() {
    let gone = |name: &str, suffix: char| {
        let pid = name.strip_prefix("sp").and_then(|rest| rest.split(suffix).next());
        pid.and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    let listed = |args: &[&str]| {
        let output = Command::new("ip").args(args).output().ok();
        output.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    for line in listed(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.contains('n') && gone(name, 'n') {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
    for line in listed(&["-o", "link", "show", "type", "bridge"]).lines() {
        // "7: sp1234b: <BROADCAST,...": the name is the second field, before its colon.
        let name = line.split_whitespace().nth(1).unwrap_or_default().trim_end_matches(':');
        if name.ends_with('b') && gone(name, 'b') {
            let _ = run("ip", &["link", "del", name]);
        }
    }
}

fn run(tool: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(tool).args(args).output().map_err(|e| format!("{tool}: {e}"))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

fn in_namespace(ns: &str, tool: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["netns", "exec", ns, tool];
    all.extend_from_slice(args);
    run("ip", &all)
}
