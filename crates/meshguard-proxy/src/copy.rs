//! Byte pumps between two streams: both directions at once, half-close kept, buffers that grow
//! only for bulk transfers, and an idle bound.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// First buffer of each copy direction: idle connections hold only this much.
pub(crate) const SMALL_BUF: usize = 4 * 1024;
/// Buffer once a read fills the small one (bulk transfer): four full TLS records.
pub(crate) const LARGE_BUF: usize = 64 * 1024;

/// One direction of a splice: an adaptive buffer that is small while traffic is small (an idle
/// connection costs little memory) and grows once a read fills it (bulk transfer).
pub(crate) struct Pump {
    buf: Vec<u8>,
    pos: usize,
    cap: usize,
    eof: bool,
    done: bool,
    /// Written since the last flush (a TLS writer may hold records until flushed).
    unflushed: bool,
    /// Writes so far (the idle timer restarts when it changes).
    moved: u64,
}

impl Pump {
    fn new() -> Pump {
        Pump {
            buf: vec![0u8; SMALL_BUF],
            pos: 0,
            cap: 0,
            eof: false,
            done: false,
            unflushed: false,
            moved: 0,
        }
    }

    /// Moves bytes from `r` to `w` until `r` is pending (flushing `w` first) or at EOF (then
    /// shuts `w` down, half-closing that direction).
    fn poll_pump<R, W>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        mut r: std::pin::Pin<&mut R>,
        mut w: std::pin::Pin<&mut W>,
    ) -> std::task::Poll<std::io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        use std::task::Poll;
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.pos == self.cap && !self.eof {
                let mut rb = tokio::io::ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        if self.unflushed {
                            std::task::ready!(w.as_mut().poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        self.pos = 0;
                        self.cap = n;
                        if n == 0 {
                            self.eof = true;
                        }
                    }
                }
            }
            while self.pos < self.cap {
                let n =
                    std::task::ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.unflushed = true;
                self.moved = self.moved.wrapping_add(1);
            }
            // A read that filled the buffer means bulk traffic: grow (only when empty).
            if self.cap == self.buf.len() && self.buf.len() < LARGE_BUF {
                self.buf.resize(LARGE_BUF, 0);
            }
            if self.eof {
                std::task::ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
            }
        }
    }
}

/// Copies both ways until both sides have closed, or either fails. The proxy's byte pump;
/// public so benchmarks build their baseline hops with the same loop.
pub async fn splice<A, B>(a: A, b: B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    splice_idle(a, b, None).await;
}

/// [`splice`] that also gives up once no byte has moved either way for `idle`. Returns whether
/// it stopped for idleness.
pub async fn splice_idle<A, B>(mut a: A, mut b: B, idle: Option<Duration>) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use std::pin::Pin;
    use std::task::Poll;
    let (mut ab, mut ba) = (Pump::new(), Pump::new());
    let mut timer = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
    let r = std::future::poll_fn(|cx| {
        let moved = ab.moved + ba.moved;
        let x = ab.poll_pump(cx, Pin::new(&mut a), Pin::new(&mut b))?;
        let y = ba.poll_pump(cx, Pin::new(&mut b), Pin::new(&mut a))?;
        if let (Poll::Ready(()), Poll::Ready(())) = (x, y) {
            return Poll::Ready(Ok::<bool, std::io::Error>(false));
        }
        if let Some((d, sleep)) = timer.as_mut() {
            if ab.moved + ba.moved != moved {
                sleep.as_mut().reset(tokio::time::Instant::now() + *d);
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(true));
            }
        }
        Poll::Pending
    })
    .await;
    matches!(r, Ok(true))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes cross intact both ways (sizes that make the buffer grow), and a half-close in one
    /// direction leaves the other direction working, as TCP allows.
    #[tokio::test]
    async fn splice_copies_both_ways_and_keeps_half_close() {
        let (mut client, proxy_a) = tokio::io::duplex(7 * 1024);
        let (proxy_b, mut server) = tokio::io::duplex(5 * 1024);
        tokio::spawn(super::splice(proxy_a, proxy_b));
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expect = up.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&up).await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.expect("read back");
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, expect);
        // The client has closed its sending side; the server can still answer.
        server.write_all(b"reply after EOF").await.expect("write");
        server.shutdown().await.expect("close");
        assert_eq!(writer.await.expect("join"), b"reply after EOF");
    }
}
