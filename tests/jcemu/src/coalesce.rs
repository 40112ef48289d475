//! Write coalescing for a connection: everything hyper writes during one poll of the connection task leaves in
//! one write to the socket (TLS stream), made by [`Flusher`] at the end of that poll.
//!
//! Why: h2 writes its frames round-robin over the streams that have something to send and flushes the socket
//! once per DATA payload it hands over by reference (anything over 256 bytes). With several responses ready
//! at once, the HEADERS frames of all of them go out in the first write and their DATA/END_STREAM frames in
//! later writes, so a client can read a response's status before the stream has ended. See `conn_exec` for
//! what a client that then drops the response does (RST_STREAM storms ending in "too_many_internal_resets").
//! Coalescing makes a response's HEADERS and body arrive together, as one read, for any body up to
//! [`HIGH_WATER`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held back before writes go through even within one poll (bounds memory; a full 100-user page fits).
pub const HIGH_WATER: usize = 256 * 1024;

struct Inner<I> {
    io: I,
    out: Vec<u8>,
}

impl<I: AsyncWrite + Unpin> Inner<I> {
    /// Writes out everything held back and flushes the stream.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.drain(..n);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// The stream handed to hyper. `poll_flush` only marks a point the [`Flusher`] will reach in the same poll
/// of the connection task; `poll_shutdown` writes everything out itself.
pub struct CoalescingIo<I> {
    inner: Arc<Mutex<Inner<I>>>,
}

/// Writes out what the connection wrote; poll it after the connection, in the same task.
pub struct Flusher<I> {
    inner: Arc<Mutex<Inner<I>>>,
}

pub fn wrap<I>(io: I) -> (CoalescingIo<I>, Flusher<I>) {
    let inner = Arc::new(Mutex::new(Inner {
        io,
        out: Vec::new(),
    }));
    (
        CoalescingIo {
            inner: inner.clone(),
        },
        Flusher { inner },
    )
}

impl<I: AsyncWrite + Unpin> Flusher<I> {
    /// Writes out what is held back. Never completes except with a write error (the connection is then dead).
    pub fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.inner.lock().poll_drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(e),
            Poll::Ready(Ok(())) | Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for CoalescingIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner.lock().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> CoalescingIo<I> {
    /// Makes room: over [`HIGH_WATER`], writes through (and waits for the socket when it is full).
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.inner.lock();
        if inner.out.len() >= HIGH_WATER {
            std::task::ready!(inner.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for CoalescingIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_room(cx))?;
        self.inner.lock().out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_room(cx))?;
        let mut inner = self.inner.lock();
        let mut n = 0;
        for b in bufs {
            inner.out.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The Flusher writes everything out once the connection task has done its work for this poll.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.inner.lock();
        std::task::ready!(inner.poll_drain(cx))?;
        Pin::new(&mut inner.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn holds_writes_until_the_flusher_runs() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let (mut io, mut flusher) = wrap(a);
        io.write_all(b"one ").await.unwrap();
        io.flush().await.unwrap();
        io.write_all(b"two").await.unwrap();
        let mut buf = [0u8; 16];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(20), b.read(&mut buf)).await;
        assert!(
            early.is_err(),
            "nothing reaches the peer before the flusher runs"
        );
        let out =
            std::future::poll_fn(|cx| Poll::Ready(flusher.poll_write_out(cx).is_pending())).await;
        assert!(out);
        let n = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"one two");
        // large writes go through without the flusher
        io.write_all(&vec![7u8; HIGH_WATER + 10]).await.unwrap();
        io.write_all(b"x").await.unwrap();
        let mut got = vec![0u8; HIGH_WATER + 10];
        b.read_exact(&mut got).await.unwrap();
        io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"x");
    }
}
