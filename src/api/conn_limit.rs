//! Bounded accepted connections, with file descriptors kept for the log.
//!
//! Every accepted connection holds a descriptor. Without a bound, idle
//! connections can take the last ones, and the next segment roll then
//! fails with EMFILE, which the storage must treat as fatal. So each
//! listener accepts at most its share of the descriptors left after a
//! reserve for the log, Raft and outgoing peer connections, and never one
//! that would eat into the reserve (the log's own descriptors grow with
//! it); a connection beyond is closed at once (said in the log at most
//! once a second), never queued. The soft descriptor limit is raised to the hard one at
//! start, as Go's runtime does, so a generous hard limit is used.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// Descriptors kept free beyond what is open (the log's next segments, a
/// snapshot, outgoing peer connections): at least this many, or an eighth
/// of the limit.
const RESERVED_FDS: u64 = 16;

/// Per-listener connection bounds, from the process's descriptor limit.
#[derive(Clone, Debug)]
pub struct ConnBudget {
    /// The soft descriptor limit, and what is kept for the rest.
    limit: u64,
    reserve: u64,
}

impl ConnBudget {
    /// Raises the soft descriptor limit to the hard one, keeps a reserve
    /// for the log, Raft and outgoing peer connections, and shares the rest
    /// between the listeners.
    pub fn from_rlimit() -> ConnBudget {
        let limit = raise_nofile();
        let reserve = RESERVED_FDS.max(limit / 8);
        tracing::debug!(nofile = limit, reserve, "connection bounds");
        ConnBudget { limit, reserve }
    }

    /// One listener's share of what is left after the reserve, in
    /// eighths: the client and HTTP ports 2 each, the health port 1, the
    /// peer port 4 (every other member keeps a connection to it). Shares
    /// add up to more than the whole on purpose: every admission also
    /// checks that the reserve is still free (see [`ListenerLimit::admit`]).
    pub fn listener(&self, name: &'static str, eighths: u64) -> ListenerLimit {
        let max = (self.limit.saturating_sub(self.reserve) * eighths / 8).clamp(4, 1 << 20) as usize;
        ListenerLimit {
            name,
            permits: Arc::new(Semaphore::new(max)),
            max,
            limit: self.limit,
            reserve: self.reserve,
            last_warned: None,
        }
    }
}

/// Descriptors this process has open (Linux; `None` elsewhere).
fn fds_in_use() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64)
}

/// The soft RLIMIT_NOFILE after raising it to the hard limit (where the
/// hard limit is infinite, a generous finite value).
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        let want = if r.rlim_max == libc::RLIM_INFINITY {
            1 << 20
        } else {
            r.rlim_max
        };
        if r.rlim_cur != libc::RLIM_INFINITY && r.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r.rlim_cur = want;
            }
        }
    }
    if r.rlim_cur == libc::RLIM_INFINITY {
        1 << 20
    } else {
        r.rlim_cur
    }
}

/// The connection bound of one listener.
pub struct ListenerLimit {
    name: &'static str,
    permits: Arc<Semaphore>,
    max: usize,
    limit: u64,
    reserve: u64,
    last_warned: Option<tokio::time::Instant>,
}

impl ListenerLimit {
    /// A permit for one more connection, or `None` (then close it).
    pub fn admit(&mut self, remote: std::net::SocketAddr) -> Option<OwnedSemaphorePermit> {
        let mut permit = self.permits.clone().try_acquire_owned().ok();
        // The log's own descriptors grow with it (two per segment): the
        // reserve must still be free, whatever the shares say. Counted only
        // where running out is plausible (a /proc read per connection).
        if permit.is_some() && self.limit <= 1 << 16 && fds_in_use().is_some_and(|n| n + self.reserve > self.limit) {
            permit = None;
        }
        if permit.is_none() && self.last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            self.last_warned = Some(tokio::time::Instant::now());
            tracing::warn!(
                listener = self.name,
                peer = %remote,
                limit = self.max,
                "too many open connections on this port; closing new ones (the limit follows the descriptor limit, ulimit -n)"
            );
        }
        permit
    }
}

/// An accept error, said at most once a second; EMFILE and ENFILE wait a
/// little longer before the next accept, since only a closed connection
/// helps.
pub async fn accept_failed(e: &io::Error, last_warned: &mut Option<tokio::time::Instant>) {
    if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
        *last_warned = Some(tokio::time::Instant::now());
        tracing::warn!(cause = %e, "accept failed");
    }
    let pause = match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => Duration::from_millis(200),
        _ => Duration::from_millis(50),
    };
    tokio::time::sleep(pause).await;
}

/// A connection that gives its listener's permit back when it closes.
pub struct Limited<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
}

impl<T> Limited<T> {
    pub fn new(io: T, permit: OwnedSemaphorePermit) -> Self {
        Limited { io, _permit: permit }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Limited<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
