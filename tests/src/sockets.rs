//! Reads socket options of this process's own TCP connections, as the
//! kernel holds them: the socket is found through `/proc/self/fd` and
//! `/proc/net/tcp`, duplicated with `pidfd_getfd` and asked with
//! `getsockopt`, so a test checks what a client library really set.

use std::collections::HashSet;

use rustix::net::sockopt;
use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

/// `TCP_NODELAY` of every open TCP connection of this process to
/// 127.0.0.1:`port`.
pub fn nodelay_of_connections_to(port: u16) -> Vec<bool> {
    let inodes = socket_inodes_to(port);
    let pidfd = pidfd_open(getpid(), PidfdFlags::empty()).expect("pidfd_open (Linux 5.6+)");
    let mut options = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Ok(entry) = entry else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|inode| inode.parse::<u64>().ok())
        else {
            continue;
        };
        if !inodes.contains(&inode) {
            continue;
        }
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // The descriptor may have closed since the listing: skip it then.
        if let Ok(copy) = pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()) {
            options.push(sockopt::tcp_nodelay(&copy).expect("getsockopt TCP_NODELAY"));
        }
    }
    options
}

/// Inodes of established TCP sockets (IPv4) whose remote port is `port`.
fn socket_inodes_to(port: u16) -> HashSet<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields.get(2)?.rsplit_once(':')?.1;
            let established = *fields.get(3)? == "01";
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            (established && u16::from_str_radix(remote_port, 16).ok()? == port).then_some(inode)
        })
        .collect()
}
