//! A TCP relay between a role and a server, to cut the connection the way a
//! network failure would, or strand it the way a frozen server would,
//! without touching the server other tests share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct TcpRelay {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// What happens to the connections relayed so far, sent each time it
    /// is decided.
    ending: watch::Sender<Ending>,
    strands: Strands,
    task: tokio::task::JoinHandle<()>,
}

/// What ends the connections relayed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Both ends closed, as a reset would.
    Cut,
    /// The server's end closed, the client's left open and never answered.
    Strand,
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
        let (ending, _) = watch::channel(Ending::Cut);
        let strands = Strands {
            open: Arc::new(AtomicUsize::new(0)),
            gone: CancellationToken::new(),
        };
        let task = tokio::spawn(accept(
            listener,
            target,
            open.clone(),
            ending.clone(),
            strands.clone(),
        ));
        Self {
            addr,
            open,
            ending,
            strands,
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
        self.end(Ending::Cut);
    }

    /// Leaves every relayed connection as a frozen server would (a VM
    /// paused, storage hung), left behind by a failover: the client's end
    /// stays open, its kernel acknowledging and answering keepalives, and
    /// nothing ever comes back. The server's end is closed, so the server
    /// frees what those sessions held, as the failover's new primary never
    /// had it. New connections are relayed as before: the new primary.
    pub fn strand(&self) {
        self.end(Ending::Strand);
    }

    /// Stranded connections their client has not closed yet.
    pub fn stranded_open(&self) -> usize {
        self.strands.open.load(Ordering::SeqCst)
    }

    fn end(&self, ending: Ending) {
        self.ending.send_replace(ending);
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
        self.strands.gone.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    open: Arc<AtomicBool>,
    ending: watch::Sender<Ending>,
    strands: Strands,
) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        if !open.load(Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        let mut ended = ending.subscribe();
        ended.mark_unchanged();
        let strands = strands.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let ending = tokio::select! {
                _ = copy_bidirectional(&mut inbound, &mut outbound) => Ending::Cut,
                _ = ended.changed() => *ended.borrow(),
            };
            if ending == Ending::Strand {
                drop(outbound);
                strands.hold(inbound);
            }
        });
    }
}

/// What holds stranded connections.
#[derive(Clone)]
struct Strands {
    /// Those whose client has not closed its end yet.
    open: Arc<AtomicUsize>,
    /// The relay's end, which ends them all.
    gone: CancellationToken,
}

impl Strands {
    /// Takes in whatever the client sends and never answers, until the
    /// client closes its end or the relay goes.
    fn hold(&self, mut client: TcpStream) {
        self.open.fetch_add(1, Ordering::SeqCst);
        let strands = self.clone();
        tokio::spawn(async move {
            let mut taken_in = vec![0; 16 * 1024];
            let closed = async { while client.read(&mut taken_in).await.is_ok_and(|n| n > 0) {} };
            tokio::select! {
                () = closed => {}
                () = strands.gone.cancelled() => {}
            }
            strands.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}
