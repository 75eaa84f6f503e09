//! A network of the tests' own on this machine: hosts in network namespaces,
//! joined to this one by veth pairs, and a hosts file that decides where a
//! process's names point.
//!
//! Pulling a host's link is what a vanished server looks like to its
//! clients: packets go nowhere and nothing answers, not even a reset. A
//! relay on the loopback cannot play that part, because the kernel under it
//! acknowledges what it is sent and answers keepalive probes.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::TestEnv;
use crate::servers::{ServerDir, run};

/// Namespaces are named `{NAMESPACE_PREFIX}{pid}-{n}`, so that one left
/// behind by a killed test process can be found and removed.
const NAMESPACE_PREFIX: &str = "wa-test-";

static HOSTS_MADE: AtomicU32 = AtomicU32::new(0);

/// A host of its own: a network namespace with one address, reached from
/// this one over a veth pair. Removed on drop.
pub struct RemoteHost {
    namespace: String,
    inner_link: String,
    pub address: Ipv4Addr,
}

impl RemoteHost {
    /// Needs root and iproute2 (`ip netns`, veth), as the development and
    /// CI machines have; panics naming the command that failed.
    pub fn create() -> Self {
        remove_left_behind();
        let pid = std::process::id();
        let n = HOSTS_MADE.fetch_add(1, Ordering::Relaxed);
        // Interface names have at most 15 bytes.
        let (outer_link, inner_link) = (format!("wa{pid:x}o{n}"), format!("wa{pid:x}i{n}"));
        let namespace = format!("{NAMESPACE_PREFIX}{pid}-{n}");
        let (outer, inner) = unused_link_addresses();
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        ip(&["netns", "add", &namespace]);
        let host = Self {
            namespace,
            inner_link,
            address: inner,
        };
        let (ns, inner_link) = (host.namespace.as_str(), host.inner_link.as_str());
        ip(&[
            "link",
            "add",
            &outer_link,
            "type",
            "veth",
            "peer",
            "name",
            inner_link,
            "netns",
            ns,
        ]);
        ip(&["addr", "add", &format!("{outer}/30"), "dev", &outer_link]);
        ip(&["link", "set", &outer_link, "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{inner}/30"),
            "dev",
            inner_link,
        ]);
        ip(&["-n", ns, "link", "set", inner_link, "up"]);
        host
    }

    /// A listener on `port` of this host's address. It is made on a thread
    /// that enters the namespace; the socket stays in the namespace it was
    /// made in, wherever it is used from.
    pub fn listen(&self, port: u16) -> std::net::TcpListener {
        let namespace = format!("/run/netns/{}", self.namespace);
        let address = SocketAddr::from((self.address, port));
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let namespace = std::fs::File::open(&namespace).expect("the namespace");
                    rustix::thread::move_into_link_name_space(
                        namespace.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .expect("enter the namespace");
                    let listener = std::net::TcpListener::bind(address)
                        .unwrap_or_else(|e| panic!("listen on {address}: {e}"));
                    listener.set_nonblocking(true).expect("non-blocking");
                    listener
                })
                .join()
                .expect("the listening thread")
        })
    }

    /// Takes the host's link down: from here on, whatever is sent to it is
    /// dropped without an answer.
    pub fn pull_link(&self) {
        self.set_link("down");
    }

    /// Puts the host's link back: the end of a partition.
    pub fn restore_link(&self) {
        self.set_link("up");
    }

    fn set_link(&self, state: &str) {
        run(Command::new("ip").args([
            "-n",
            &self.namespace,
            "link",
            "set",
            &self.inner_link,
            state,
        ]));
    }

    /// `program` run on this host: in its namespace, where its address is
    /// the only one.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace, program]);
        command
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .output();
    }
}

/// Both ends of a /30 in 198.18.0.0/15 (set aside for network tests), one
/// that no interface here uses yet.
fn unused_link_addresses() -> (Ipv4Addr, Ipv4Addr) {
    let in_use = run(Command::new("ip").args(["-4", "-o", "addr", "show"]));
    for _ in 0..100 {
        let block = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 4 * (rand::random::<u32>() % 32768);
        let (outer, inner) = (Ipv4Addr::from(block + 1), Ipv4Addr::from(block + 2));
        if !in_use.contains(&format!(" {outer}/")) && !in_use.contains(&format!(" {inner}/")) {
            return (outer, inner);
        }
    }
    panic!("no unused /30 in 198.18.0.0/15");
}

/// Removes the namespaces of test processes that no longer run (killed
/// before their hosts were dropped).
fn remove_left_behind() {
    let Ok(names) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for name in String::from_utf8_lossy(&names.stdout).lines() {
        let name = name.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(NAMESPACE_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// The line every hosts file here starts with.
const LOCALHOST: &str = "127.0.0.1 localhost\n";

/// A hosts file that processes started with [`HostsFile::command`] read as
/// their `/etc/hosts`, in a mount namespace of their own. A test moves a
/// name to another address the way a managed database's failover moves its
/// DNS name.
pub struct HostsFile {
    dir: ServerDir,
}

impl HostsFile {
    /// A file in which only `localhost` resolves.
    pub fn new() -> Self {
        let dir = ServerDir::new("hosts");
        dir.write("hosts", LOCALHOST);
        Self { dir }
    }

    /// From now on `name` resolves to `address` (and `localhost` still
    /// does). The file is rewritten in place: the bind mount follows the
    /// file, not its name.
    pub fn point(&self, name: &str, address: Ipv4Addr) {
        self.dir
            .write("hosts", &format!("{LOCALHOST}{address} {name}\n"));
    }

    /// `program args` on this test's servers (as [`TestEnv::process`]),
    /// with this file as its `/etc/hosts`.
    pub fn command(&self, env: &TestEnv, program: &str, args: &[&str]) -> tokio::process::Command {
        let hosts = self.dir.file("hosts");
        let hosts = hosts.to_str().expect("a UTF-8 temporary folder");
        let script = r#"mount --bind "$0" /etc/hosts && exec "$@""#;
        let mut wrapped = vec!["--mount", "--", "sh", "-c", script, hosts, program];
        wrapped.extend(args);
        env.process("unshare", &wrapped)
    }
}

impl Default for HostsFile {
    fn default() -> Self {
        Self::new()
    }
}
