//! Fewer wake-ups for a long upload: `SO_RCVLOWAT` on the connection's
//! socket while a body of known length arrives.
//!
//! Without it the kernel wakes the reader for every segment that lands,
//! 64 KiB at a time on loopback and often less from a network, and each
//! wake-up is a context switch, an `epoll_wait` and a pass through the
//! runtime, hyper and the handler. A camera's 10 s segment (5 MB at
//! 4 Mbit/s) arriving alone was about 80 of them, and at one camera's
//! rate they cost the cloud three times the CPU per byte that the same
//! uploads cost when many arrive at once. With a low-water mark of 1 MiB
//! the socket is reported readable once a mebibyte waits (or the peer
//! closes), and the reads that follow drain it.
//!
//! The mark must never exceed what is still to come, or the reader waits
//! for bytes that never arrive: it is held `MARGIN` below the bytes of the
//! body not yet handed to the handler (hyper and TLS may hold some of
//! those already), dropped to 1 for the tail, put back to 1 when the body
//! is done, and dropped to 1 as well if a chunk takes longer than `STALL`
//! (a slow sender gains nothing from it, and a wrong estimate costs at
//! most that pause).

use std::os::fd::RawFd;
use std::time::Duration;

/// The connection's socket, in a request's extensions (plain and TLS
/// connections alike).
///
/// A raw descriptor, used only while the request's handler is polled:
/// hyper runs the handler inside the connection's own future, which owns
/// the socket, so the descriptor is open and is this connection's
/// whenever the handler runs. (The reset on drop may run after the socket
/// is closed; it sets the kernel's default, harmless to any socket.)
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnSocket(pub(crate) RawFd);

/// The highest mark: the reads after a wake-up take it in hyper-sized
/// pieces (`max_buf_size`), and the kernel grows the receive buffer to
/// twice the mark so the sender is not held back by it.
const MAX: u64 = 1 << 20;
/// Body bytes that may have left the socket but not reached the handler:
/// hyper's read buffer and the chunk in its body channel (each at most
/// about twice `max_buf_size`, 64 KiB), TLS records in flight.
const MARGIN: u64 = 256 << 10;
/// A falling mark below this is 1: the tail is read as it comes.
const FLOOR: u64 = 64 << 10;
/// A chunk slower than this drops the mark for the rest of the body.
pub(crate) const STALL: Duration = Duration::from_secs(1);

/// Bodies whose mark was dropped by a stall (a slow sender, or a margin
/// too small: the tests check that it stays 0 on loopback).
pub(crate) static STALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The mark for one body; back to 1 when dropped.
pub(crate) struct Lowat {
    fd: RawFd,
    set: u64,
    off: bool,
    /// The stall watch: one timer for the whole body, pushed on only when
    /// it fires (see `next`).
    watch: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// When the wait for the current chunk began.
    last: tokio::time::Instant,
}

impl Lowat {
    pub(crate) fn new(sock: Option<ConnSocket>) -> Option<Lowat> {
        sock.map(|s| Lowat { fd: s.0, set: 1, off: false, watch: None, last: tokio::time::Instant::now() })
    }

    /// Whether the mark is above 1 (a stalled chunk then turns it off).
    pub(crate) fn raised(&self) -> bool {
        self.set > 1
    }

    /// `left`: the body's bytes the handler has not had yet. The mark is
    /// raised on the first call, then only falls, following the tail in
    /// halves (a few `setsockopt` calls for the last mebibyte, not one per
    /// chunk; lower than needed only wakes the reader sooner); below
    /// `FLOOR` it is 1, and once at 1 it stays there for this body.
    pub(crate) fn left(&mut self, left: u64) {
        if self.off {
            return;
        }
        let want = left.saturating_sub(MARGIN).clamp(1, MAX);
        if self.set == 1 && want > 1 {
            self.apply(want);
        } else if want < self.set {
            self.apply(if want / 2 >= FLOOR { want / 2 } else { 1 });
        }
        if self.set == 1 {
            self.off = true;
        }
    }

    /// The mark at exactly `v` (at least 1) bytes, for a reader that knows
    /// what is still to come; nothing once a stall turned it off.
    pub(crate) fn exactly(&mut self, v: usize) {
        let v = (v as u64).clamp(1, MAX);
        if !self.off && v != self.set {
            self.apply(v);
        }
    }

    /// A chunk stalled: the mark stays at 1 for the rest of this body.
    pub(crate) fn stalled(&mut self) {
        STALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.off = true;
        self.apply(1);
    }

    fn apply(&mut self, v: u64) {
        let val = v as libc::c_int;
        // SAFETY: `fd` is the connection's socket (see `ConnSocket`); the
        // option is an int read from a valid pointer of the right size.
        let r = unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            self.set = v;
        } else {
            // Not a TCP socket after all, or an old kernel: stay at 1.
            self.off = true;
            self.set = 1;
        }
    }
}

/// The next item of a body's stream; a raised mark is dropped if no chunk
/// comes within `STALL` (and the wait goes on without it).
///
/// The watch is one timer per body, not one per chunk: a timer set sooner
/// than the runtime's next wake-up makes the runtime wake its driver
/// thread to take it in (an `eventfd` write and two context switches),
/// and a fresh `timeout` per chunk did that for every 64 KiB of a
/// recording. The timer keeps its deadline while chunks come; when it
/// fires it is pushed to `STALL` after the current wait began, or drops the mark
/// if the wait began `STALL` ago.
pub(crate) async fn next<S: futures_util::Stream + Unpin>(lw: Option<&mut Lowat>, s: &mut S) -> Option<S::Item> {
    use futures_util::StreamExt;
    let Some(l) = lw.filter(|l| l.raised()) else {
        return s.next().await;
    };
    l.last = tokio::time::Instant::now();
    loop {
        let watch = l.watch.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(l.last + STALL)));
        tokio::select! {
            biased;
            item = s.next() => return item,
            () = watch.as_mut() => {
                let due = l.last + STALL;
                if tokio::time::Instant::now() >= due {
                    l.stalled();
                    return s.next().await;
                }
                watch.as_mut().reset(due);
            }
        }
    }
}

impl Drop for Lowat {
    fn drop(&mut self) {
        if self.set != 1 {
            self.apply(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn mark(fd: RawFd) -> i32 {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let r = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, (&mut v as *mut libc::c_int).cast(), &mut len)
        };
        assert_eq!(r, 0);
        v
    }

    /// The mark follows the body: raised while much is to come, 1 for the
    /// tail and after; a reader waiting on a raised mark is woken once the
    /// mark's bytes are there, not before.
    #[tokio::test]
    async fn the_mark_follows_the_body_and_wakes_the_reader_once_it_is_reached() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut tx = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut rx, _) = l.accept().await.unwrap();
        let fd = rx.as_raw_fd();
        let mut buf = vec![0u8; 2 << 20];
        // A connection that has carried some bytes: its receive window has
        // grown (a window about to close wakes the reader whatever the
        // mark, so that the sender never waits on a reader that waits on
        // it; a fresh connection on loopback is in that state at once).
        let warm = tokio::spawn(async move {
            tx.write_all(&vec![0u8; 8 << 20]).await.unwrap();
            tx
        });
        let mut got = 0;
        while got < 8 << 20 {
            got += rx.read(&mut buf).await.unwrap();
        }
        let mut tx = warm.await.unwrap();
        let mut lw = Lowat::new(Some(ConnSocket(fd))).unwrap();
        lw.left(5_000_000);
        assert_eq!(mark(fd), MAX as i32);
        assert!(lw.raised());
        // Less than the mark: the reader sleeps.
        tx.write_all(&vec![1u8; 256 << 10]).await.unwrap();
        let early = tokio::time::timeout(Duration::from_millis(200), rx.read(&mut buf)).await;
        assert!(early.is_err(), "woken below the mark");
        // The rest of the mebibyte: woken, and everything is there.
        let rest = tokio::spawn(async move {
            tx.write_all(&vec![2u8; (1 << 20) - (256 << 10)]).await.unwrap();
            tx
        });
        let mut got = 0;
        while got < 1 << 20 {
            got += tokio::time::timeout(Duration::from_secs(5), rx.read(&mut buf)).await.unwrap().unwrap();
        }
        assert_eq!(got, 1 << 20);
        let _tx = rest.await.unwrap();
        // The tail (within the margin) and the end: back to 1.
        lw.left(MARGIN + MAX - 1);
        assert_eq!(mark(fd), (MAX - 1) as i32 / 2, "falls in halves");
        lw.left(MARGIN + MAX / 2 + 1);
        assert_eq!(mark(fd), (MAX - 1) as i32 / 2, "not for every chunk");
        lw.left(MARGIN + 1000);
        assert_eq!(mark(fd), 1);
        lw.left(MARGIN);
        assert_eq!(mark(fd), 1);
        assert!(!lw.raised());
        lw.left(3_000_000);
        assert_eq!(mark(fd), 1, "raised again after it fell");
        drop(lw);
        assert_eq!(mark(fd), 1);
    }

    #[tokio::test]
    async fn a_stall_or_a_drop_puts_the_mark_back() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _tx = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (rx, _) = l.accept().await.unwrap();
        let fd = rx.as_raw_fd();
        let mut lw = Lowat::new(Some(ConnSocket(fd))).unwrap();
        lw.left(10_000_000);
        assert_eq!(mark(fd), MAX as i32);
        lw.stalled();
        assert_eq!(mark(fd), 1);
        lw.left(9_000_000);
        assert_eq!(mark(fd), 1, "raised again after a stall");
        let mut lw = Lowat::new(Some(ConnSocket(fd))).unwrap();
        lw.left(10_000_000);
        assert_eq!(mark(fd), MAX as i32);
        drop(lw);
        assert_eq!(mark(fd), 1);
    }

    /// The watch drops the mark when a chunk is `STALL` late, and only
    /// then: chunks that keep coming, each well within `STALL`, for much
    /// longer than `STALL` in all leave it raised.
    #[tokio::test(start_paused = true)]
    async fn the_watch_drops_the_mark_for_a_late_chunk_only() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _tx = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (rx, _) = l.accept().await.unwrap();
        let fd = rx.as_raw_fd();
        let (send, recv) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let mut chunks = Box::pin(futures_util::stream::unfold(recv, |mut r| async { r.recv().await.map(|v| (v, r)) }));
        let mut lw = Lowat::new(Some(ConnSocket(fd))).unwrap();
        lw.left(10_000_000);
        let feeder = tokio::spawn(async move {
            for i in 0..10 {
                tokio::time::sleep(STALL * 4 / 10).await;
                send.send(i).unwrap();
            }
            tokio::time::sleep(STALL * 3 / 2).await;
            send.send(10).unwrap();
            send
        });
        for i in 0..10 {
            assert_eq!(next(Some(&mut lw), &mut chunks).await, Some(i));
            assert!(lw.raised(), "chunk {i} came in time, yet the mark was dropped");
        }
        assert_eq!(mark(fd), MAX as i32);
        assert_eq!(next(Some(&mut lw), &mut chunks).await, Some(10));
        assert!(!lw.raised(), "a chunk 1.5 × STALL late left the mark raised");
        assert_eq!(mark(fd), 1);
        drop(feeder.await.unwrap());
    }
}
