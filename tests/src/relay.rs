//! A TCP relay between a role and a server, to cut the connection the way a
//! network failure would, without touching the server other tests share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpRelay {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpRelay {
    /// Listens on 127.0.0.1 and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        listener.set_nonblocking(true).expect("non-blocking");
        Self::serving(listener, target)
    }

    /// Forwards every connection `listener` (non-blocking) accepts to
    /// `target`.
    pub fn serving(listener: std::net::TcpListener, target: SocketAddr) -> Self {
        let listener = TcpListener::from_std(listener).expect("a listener in the runtime");
        let addr = listener.local_addr().expect("relay address");
        let open = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let task = tokio::spawn(accept(listener, target, open.clone(), generation.clone()));
        Self {
            addr,
            open,
            generation,
            task,
        }
    }

    /// A relay in front of the server `url` names (`scheme://[user@]ip:port/...`),
    /// and `url` rewritten to reach that server through the relay.
    pub fn in_front_of(url: &str) -> (Self, String) {
        let (server, _) = readdress(url, "");
        let relay = Self::start(server);
        let (_, relayed) = readdress(url, &relay.addr.to_string());
        (relay, relayed)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every relayed connection, and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// The server `url` names (`scheme://[user@]ip:port/...`), and `url` with
/// `host_and_port` in its place.
pub fn readdress(url: &str, host_and_port: &str) -> (SocketAddr, String) {
    let host_start = url.find("://").map_or(0, |i| i + 3);
    let host_end = url[host_start..]
        .find('/')
        .map_or(url.len(), |i| host_start + i);
    let host_start = url[host_start..host_end]
        .rfind('@')
        .map_or(host_start, |i| host_start + i + 1);
    let server = url[host_start..host_end]
        .parse()
        .unwrap_or_else(|_| panic!("{url:?} names no ip:port"));
    let readdressed = format!("{}{host_and_port}{}", &url[..host_start], &url[host_end..]);
    (server, readdressed)
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    open: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        if !open.load(Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        let mut cut = generation.subscribe();
        cut.mark_unchanged();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cut.changed() => {}
            }
        });
    }
}
