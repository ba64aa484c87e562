//! Lets gRPC clients that name a Unix socket by its path reach the Workload API.
//!
//! grpc C-core (Python's `grpcio`, so py-spiffe; also grpc-java, Bazel, Swift) sends the
//! percent-encoded socket path (`%2Frun%2Fmeshguard%2Fagent.sock`) or the raw path as the
//! HTTP/2 `:authority` of a `unix:` target (grpc/grpc#38142). The h2 crate under tonic refuses
//! such a request with a stream reset, as RFC 9113 lets it (hyperium/h2#487), so those clients
//! could only connect with a relative socket path. [`AuthorityFix`] sits between the socket
//! and h2 on the agent's listener: it reads the client's frames, decodes every header block
//! (HPACK, stateful), replaces an `:authority` that is not a valid URI authority with
//! `localhost` (what grpc-go sends for Unix sockets), and re-encodes the block without the
//! dynamic table, so h2 sees only literal headers and the two HPACK states never drift. The
//! authority means nothing on a Unix socket: who a caller is comes from the kernel (peer
//! credentials), which this layer passes through untouched. Anything that is not HTTP/2 is
//! passed through as it is, for h2 to refuse. A malformed or oversized header block closes the
//! connection (fail closed).

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload the peer accepts without a SETTINGS change (RFC 9113 §4.2); the
/// re-encoded blocks are split at this size.
const MAX_FRAME: usize = 16_384;
/// The HPACK dynamic table size h2 allows by default (it does not advertise another).
const TABLE_SIZE: usize = 4096;
/// A header block, compressed or decoded, larger than this closes the connection. Workload
/// API requests carry a handful of short headers.
pub const MAX_BLOCK: usize = 64 * 1024;

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("malformed HTTP/2 header block: {0}")]
    Hpack(String),
    #[error("HTTP/2 header block larger than {MAX_BLOCK} bytes")]
    TooLarge,
    #[error("HTTP/2 protocol error: {0}")]
    Protocol(&'static str),
}

enum Phase {
    /// Bytes of the preface seen so far.
    Preface(usize),
    /// Not HTTP/2 (or not from the start): everything passes.
    Passthrough,
    /// Frame by frame; `Some(n)`: n payload bytes of a passed-through frame still to come.
    Frames(Option<usize>),
}

/// A header block being collected from a HEADERS frame and its CONTINUATIONs.
struct Block {
    stream: u32,
    end_stream: bool,
    fragment: Vec<u8>,
}

/// The byte-level rewriter (no I/O): feed it what the client sent, take what h2 should read.
pub struct Rewriter {
    phase: Phase,
    pending: Vec<u8>,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Rewriter {
            phase: Phase::Preface(0),
            pending: Vec::new(),
            block: None,
            decoder,
            rewritten: 0,
        }
    }
}

impl Rewriter {
    /// How many `:authority` values were replaced so far.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Takes `input` (what the client sent next) and appends to `out` what h2 should read.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        while !input.is_empty() {
            match self.phase {
                Phase::Passthrough => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                Phase::Preface(seen) => {
                    let want = &PREFACE[seen..];
                    let n = want.len().min(input.len());
                    out.extend_from_slice(&input[..n]);
                    self.phase = if input[..n] != want[..n] {
                        Phase::Passthrough
                    } else if n == want.len() {
                        Phase::Frames(None)
                    } else {
                        Phase::Preface(seen + n)
                    };
                    input = &input[n..];
                }
                Phase::Frames(Some(left)) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.phase = Phase::Frames((left > n).then_some(left - n));
                }
                Phase::Frames(None) => {
                    self.pending.extend_from_slice(input);
                    input = &[];
                    self.frames(out)?;
                }
            }
        }
        Ok(())
    }

    /// Handles the complete frames in `pending`; a passed-through frame's header goes out at
    /// once and its payload streams.
    fn frames(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        loop {
            let Some(h) = self.pending.get(..FRAME_HEADER) else {
                return Ok(());
            };
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let is_block = kind == HEADERS || kind == CONTINUATION;
            if self.block.is_some() && kind != CONTINUATION {
                return Err(RewriteError::Protocol(
                    "a frame other than CONTINUATION inside a header block",
                ));
            }
            if !is_block {
                out.extend_from_slice(&self.pending[..FRAME_HEADER]);
                let rest = self.pending.split_off(FRAME_HEADER);
                self.pending.clear();
                let n = len.min(rest.len());
                out.extend_from_slice(&rest[..n]);
                if n < len {
                    self.phase = Phase::Frames(Some(len - n));
                    return Ok(());
                }
                self.pending = rest[n..].to_vec();
                continue;
            }
            if len > MAX_BLOCK {
                return Err(RewriteError::TooLarge);
            }
            let Some(payload) = self.pending.get(FRAME_HEADER..FRAME_HEADER + len) else {
                return Ok(()); // wait for the rest of the frame
            };
            let fragment = if kind == HEADERS {
                if self.block.is_some() {
                    return Err(RewriteError::Protocol("HEADERS inside a header block"));
                }
                let mut p = payload;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    let (&n, rest) = p
                        .split_first()
                        .ok_or(RewriteError::Protocol("PADDED HEADERS without a length"))?;
                    pad = usize::from(n);
                    p = rest;
                }
                if flags & PRIORITY != 0 {
                    p = p
                        .get(5..)
                        .ok_or(RewriteError::Protocol("short PRIORITY fields"))?;
                }
                let end = p
                    .len()
                    .checked_sub(pad)
                    .ok_or(RewriteError::Protocol("padding longer than the frame"))?;
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    fragment: Vec::new(),
                });
                &p[..end]
            } else {
                match &self.block {
                    Some(b) if b.stream == stream => payload,
                    _ => {
                        return Err(RewriteError::Protocol(
                            "CONTINUATION outside its stream's header block",
                        ))
                    }
                }
            };
            let block = self
                .block
                .as_mut()
                .ok_or(RewriteError::Protocol("no header block"))?;
            if block.fragment.len() + fragment.len() > MAX_BLOCK {
                return Err(RewriteError::TooLarge);
            }
            block.fragment.extend_from_slice(fragment);
            self.pending.drain(..FRAME_HEADER + len);
            if flags & END_HEADERS != 0 {
                let b = self
                    .block
                    .take()
                    .ok_or(RewriteError::Protocol("no header block"))?;
                self.emit(&b, out)?;
            }
        }
    }

    /// Decodes a whole block, fixes its `:authority`, and writes it as HEADERS (+ CONTINUATION)
    /// frames of literal fields.
    fn emit(&mut self, b: &Block, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let mut encoded = Vec::with_capacity(b.fragment.len() + 16);
        let mut decoded_len = 0usize;
        let mut fixed = false;
        self.decoder
            .decode_with_cb(&b.fragment, |name: Cow<[u8]>, value: Cow<[u8]>| {
                decoded_len += name.len() + value.len() + 32; // RFC 7541 §4.1 entry size
                if decoded_len > MAX_BLOCK {
                    return;
                }
                let value: &[u8] = if &*name == b":authority" && !valid_authority(&value) {
                    fixed = true;
                    b"localhost"
                } else {
                    &value
                };
                encoded.push(0x00); // literal header field without indexing, new name
                encode_string(&name, &mut encoded);
                encode_string(value, &mut encoded);
            })
            .map_err(|e| RewriteError::Hpack(e.to_string()))?;
        if decoded_len > MAX_BLOCK {
            return Err(RewriteError::TooLarge);
        }
        if fixed {
            self.rewritten += 1;
        }
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        // An empty block is still one HEADERS frame.
        let empty: &[u8] = &[];
        let mut next = chunks.next().unwrap_or(empty);
        loop {
            let last = chunks.peek().is_none();
            let mut flags = if last { END_HEADERS } else { 0 };
            let kind = if first {
                if b.end_stream {
                    flags |= END_STREAM;
                }
                HEADERS
            } else {
                CONTINUATION
            };
            let len = next.len();
            out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
            out.extend_from_slice(&b.stream.to_be_bytes());
            out.extend_from_slice(next);
            first = false;
            match chunks.next() {
                Some(c) => next = c,
                None => return Ok(()),
            }
        }
    }
}

/// What h2 accepts as `:authority`.
fn valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2).
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_int(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn encode_int(mut v: usize, n: u32, first_bits: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first_bits | v as u8);
        return;
    }
    out.push(first_bits | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A Unix stream whose client-to-server bytes go through a [`Rewriter`]; writes pass as they
/// are. Its connect info is the socket's, so the caller's kernel credentials still reach the
/// Workload API handlers.
pub struct AuthorityFix {
    inner: tokio::net::UnixStream,
    rewriter: Rewriter,
    /// Rewritten bytes not yet read by h2, from `start`.
    out: Vec<u8>,
    start: usize,
    failed: bool,
}

impl AuthorityFix {
    pub fn new(inner: tokio::net::UnixStream) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::default(),
            out: Vec::new(),
            start: 0,
            failed: false,
        }
    }
}

impl tonic::transport::server::Connected for AuthorityFix {
    type ConnectInfo = tonic::transport::server::UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for AuthorityFix {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        loop {
            if me.start < me.out.len() {
                let n = buf.remaining().min(me.out.len() - me.start);
                buf.put_slice(&me.out[me.start..me.start + n]);
                me.start += n;
                if me.start == me.out.len() {
                    me.out.clear();
                    me.start = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if me.failed {
                return Poll::Ready(Ok(())); // EOF after an error was reported
            }
            let mut raw = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut raw);
            match Pin::new(&mut me.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if got.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    let before = me.rewriter.rewritten();
                    if let Err(e) = me.rewriter.feed(got, &mut me.out) {
                        me.failed = true;
                        tracing::warn!(error = %e, "Workload API connection closed");
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            e,
                        )));
                    }
                    if before == 0 && me.rewriter.rewritten() > 0 {
                        tracing::debug!(
                            "replaced a socket-path :authority with localhost (grpc C-core client)"
                        );
                    }
                }
            }
        }
    }
}

impl AsyncWrite for AuthorityFix {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn headers_of(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut d = loona_hpack::Decoder::new();
        let mut out = Vec::new();
        let mut i = PREFACE.len();
        let mut block = Vec::new();
        while i + FRAME_HEADER <= bytes.len() {
            let len = usize::from(bytes[i]) << 16
                | usize::from(bytes[i + 1]) << 8
                | usize::from(bytes[i + 2]);
            let (kind, flags) = (bytes[i + 3], bytes[i + 4]);
            let p = &bytes[i + FRAME_HEADER..i + FRAME_HEADER + len];
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(p);
                if flags & END_HEADERS != 0 {
                    out.extend(d.decode(&block).expect("valid HPACK"));
                    block.clear();
                }
            }
            i += FRAME_HEADER + len;
        }
        out
    }

    fn request(authority: &[u8], enc: &mut loona_hpack::Encoder) -> Vec<u8> {
        enc.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", authority),
            (b"workload.spiffe.io", b"true"),
        ])
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_across_split_reads() {
        let mut enc = loona_hpack::Encoder::new();
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let b1 = request(b"%2Frun%2Fmeshguard%2Fagent.sock", &mut enc);
        wire.extend(frame(HEADERS, END_HEADERS, 1, &b1));
        wire.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
                                                               // The second request reuses the dynamic table the first one filled.
        let b2 = request(b"/run/meshguard/agent.sock", &mut enc);
        let (a, b) = b2.split_at(b2.len() / 2);
        wire.extend(frame(HEADERS, END_STREAM, 3, a));
        wire.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        let b3 = request(b"localhost:1234", &mut enc);
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &b3));
        for step in [1, 3, 7, wire.len()] {
            let mut r = Rewriter::default();
            let mut out = Vec::new();
            for piece in wire.chunks(step) {
                r.feed(piece, &mut out).expect("feed");
            }
            let h = headers_of(&out);
            let auth: Vec<&[u8]> = h
                .iter()
                .filter(|(n, _)| n == b":authority")
                .map(|(_, v)| v.as_slice())
                .collect();
            assert_eq!(auth, [&b"localhost"[..], b"localhost", b"localhost:1234"]);
            assert_eq!(r.rewritten(), 2);
            assert_eq!(h.iter().filter(|(n, _)| n == b":path").count(), 3);
            assert!(
                out.ends_with(&frame(HEADERS, END_HEADERS | END_STREAM, 5, &{
                    let mut e = Vec::new();
                    for (n, v) in &h[10..] {
                        e.push(0);
                        encode_string(n, &mut e);
                        encode_string(v, &mut e);
                    }
                    e
                }))
            );
        }
    }

    #[test]
    fn padding_and_priority_are_dropped_not_misread() {
        let mut enc = loona_hpack::Encoder::new();
        let b = request(b"%2Fa.sock", &mut enc);
        let mut payload = vec![3u8];
        payload.extend([0, 0, 0, 0, 16]);
        payload.extend(&b);
        payload.extend([0, 0, 0]);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, END_HEADERS | PADDED | PRIORITY, 1, &payload));
        let mut out = Vec::new();
        Rewriter::default().feed(&wire, &mut out).expect("feed");
        let h = headers_of(&out);
        assert!(h.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
    }

    #[test]
    fn attacks_close_the_connection() {
        let mut wire = PREFACE.to_vec();
        // A header block that never ends and keeps growing.
        wire.extend(frame(HEADERS, 0, 1, &[0x82]));
        for _ in 0..5 {
            wire.extend(frame(CONTINUATION, 0, 1, &vec![0x82; 16_000]));
        }
        let mut out = Vec::new();
        assert!(matches!(
            Rewriter::default().feed(&wire, &mut out),
            Err(RewriteError::TooLarge)
        ));
        // A decompression bomb: one 4 KiB entry, then thousands of references to it.
        let mut enc = Vec::new();
        enc.push(0x40);
        encode_string(b"x-big", &mut enc);
        encode_string(&[b'a'; 4000], &mut enc);
        enc.extend(std::iter::repeat_n(0xbe, 8000)); // index 62: the entry just added
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, END_HEADERS, 1, &enc));
        assert!(matches!(
            Rewriter::default().feed(&wire, &mut Vec::new()),
            Err(RewriteError::TooLarge)
        ));
        // Garbage HPACK, a CONTINUATION with no HEADERS, an interleaved frame.
        for bad in [
            frame(
                HEADERS,
                END_HEADERS,
                1,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
            frame(CONTINUATION, END_HEADERS, 1, &[0x82]),
            [frame(HEADERS, 0, 1, &[0x82]), frame(0x0, 0, 1, b"x")].concat(),
        ] {
            let mut wire = PREFACE.to_vec();
            wire.extend(bad);
            assert!(Rewriter::default().feed(&wire, &mut Vec::new()).is_err());
        }
    }

    #[test]
    fn what_is_not_http2_passes_as_it_is() {
        let mut out = Vec::new();
        let mut r = Rewriter::default();
        r.feed(b"GET / HTTP/1.1\r\n", &mut out).expect("feed");
        r.feed(b"\0\0\x05\x01\x04garbage", &mut out).expect("feed");
        assert_eq!(out, b"GET / HTTP/1.1\r\n\0\0\x05\x01\x04garbage");
    }

    #[test]
    fn integers_encode_as_rfc_7541_shows() {
        let mut v = Vec::new();
        encode_int(1337, 5, 0, &mut v);
        assert_eq!(v, [31, 154, 10]);
        v.clear();
        encode_int(10, 5, 0, &mut v);
        assert_eq!(v, [10]);
    }
}
