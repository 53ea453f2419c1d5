//! A client connection whose writes stall is cut off: a client that sends a request and then
//! stops reading (a slow-read attack, or a dead peer behind a full window) would otherwise hold
//! its connection, its slot and the response's buffers for good; so would one that reads a
//! byte now and then.
//!
//! Contract: [`WriteDeadline`] wraps a stream. When a write, flush or shutdown finds the peer's
//! window full, a window of `timeout` opens; if fewer than [`MIN_PROGRESS`] bytes have been
//! written when it ends and the stream is still blocked, the write fails with `TimedOut`,
//! which ends the connection. A window closes once that much got through (or when a write
//! goes through after it ended: the peer reads again). So a client may stall for at most the
//! timeout at a time and must read at least `MIN_PROGRESS` per timeout while it is behind
//! (~1 KB/s at the proxy's default 30 s). Reads are untouched (the header read timeout covers
//! slow senders).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Bytes a blocked client must take per timeout to keep its connection (32 KiB).
pub const MIN_PROGRESS: usize = 32 << 10;

/// A stream whose writes may stall for at most a timeout.
pub struct WriteDeadline<T> {
    inner: T,
    timeout: Duration,
    window: Option<Window>,
}

/// A window opened by a blocked write: its end, and the bytes written since it opened.
struct Window {
    ends: Pin<Box<Sleep>>,
    written: usize,
}

impl<T> WriteDeadline<T> {
    /// Wraps `inner`; its writes may stall for at most `timeout`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tokio::io::AsyncWriteExt;
    /// let (a, _b) = tokio::io::duplex(64);
    /// let mut a = herdwise_proxy::stall::WriteDeadline::new(a, std::time::Duration::from_millis(50));
    /// // nobody reads `_b`: the second write would wait for good, and fails instead
    /// a.write_all(&[0; 64]).await.unwrap();
    /// assert!(a.write_all(&[0; 64]).await.is_err());
    /// # }
    /// ```
    pub fn new(inner: T, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            window: None,
        }
    }

    /// Blocked: opens a window if none is open; fails once it has ended.
    fn stall<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let timeout = self.timeout;
        let window = self.window.get_or_insert_with(|| Window {
            ends: Box::pin(tokio::time::sleep(timeout)),
            written: 0,
        });
        match window.ends.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// `written` bytes went through: the window (if any) closes once enough did, or if it
    /// already ended (the peer is reading again).
    fn wrote(&mut self, written: usize) {
        if let Some(w) = &mut self.window {
            w.written = w.written.saturating_add(written);
            if w.written >= MIN_PROGRESS || w.ends.is_elapsed() {
                self.window = None;
            }
        }
    }

    fn written(
        &mut self,
        r: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                self.wrote(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.stall(cx),
        }
    }

    /// A flush or shutdown: moves no bytes, so it never closes a window early.
    fn done(&mut self, r: Poll<io::Result<()>>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match r {
            Poll::Ready(r) => {
                self.wrote(0);
                Poll::Ready(r)
            }
            Poll::Pending => self.stall(cx),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.written(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.written(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.done(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.done(r, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes `total` bytes through a 4 KiB pipe whose reader takes `chunk` bytes every
    /// `every`; whether the writer got through.
    async fn send(total: usize, chunk: usize, every: Duration, timeout: Duration) -> bool {
        let (a, mut b) = tokio::io::duplex(4096);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0; chunk];
            loop {
                match b.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => tokio::time::sleep(every).await,
                }
            }
        });
        let mut a = WriteDeadline::new(a, timeout);
        let ok = a.write_all(&vec![7; total]).await.is_ok();
        drop(a);
        let _ = reader.await;
        ok
    }

    #[tokio::test]
    async fn a_client_that_reads_a_trickle_is_cut_off() {
        // 64 bytes every 5 ms: ~1.3 KB in a 100 ms window, far below MIN_PROGRESS.
        let ok = send(
            64 << 10,
            64,
            Duration::from_millis(5),
            Duration::from_millis(100),
        )
        .await;
        assert!(!ok, "a trickle kept the connection");
    }

    #[tokio::test]
    async fn a_client_that_reads_steadily_is_not() {
        // 4 KiB every ms: hundreds of KiB per 200 ms window.
        let ok = send(
            512 << 10,
            4096,
            Duration::from_millis(1),
            Duration::from_millis(200),
        )
        .await;
        assert!(ok, "a steady reader was cut off");
    }

    #[tokio::test]
    async fn a_pause_between_responses_does_not_count() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = WriteDeadline::new(a, Duration::from_millis(50));
        // Blocked once (a window opens), then drained by a reader that goes away.
        let drain = tokio::spawn(async move {
            let mut buf = [0; 256];
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = b.read(&mut buf).await;
            let _ = b.read(&mut buf).await;
            tokio::time::sleep(Duration::from_millis(120)).await;
            // The next response, long after the window ended: read promptly.
            let mut got = 0;
            while got < 128 {
                match b.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            got
        });
        a.write_all(&[1; 100]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.write_all(&[2; 100]).await.unwrap();
        drop(a);
        assert!(drain.await.unwrap() >= 100);
    }
}
