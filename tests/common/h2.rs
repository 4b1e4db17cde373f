//! Raw HTTP/2 (prior knowledge, no TLS) on a socket: frames written exactly as a test wants
//! them, batched or one at a time, which no well-behaved client library allows; and a
//! well-behaved client on one connection, for many streams at once.
//!
//! Header blocks use only HPACK's indexed and literal-without-indexing forms (RFC 7541 §6.1,
//! §6.2.2), so no dynamic table state is shared with the server.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// RST_STREAM / GOAWAY error codes (RFC 9113 §7).
pub(crate) const CANCEL: u32 = 0x8;
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;
pub(crate) const REFUSED_STREAM: u32 = 0x7;
pub(crate) const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// One frame as read back from the server.
#[derive(Debug)]
pub(crate) struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM frame.
    pub(crate) fn reset_code(&self) -> Option<u32> {
        (self.kind == RST_STREAM && self.payload.len() == 4).then(|| {
            u32::from_be_bytes([
                self.payload[0],
                self.payload[1],
                self.payload[2],
                self.payload[3],
            ])
        })
    }

    /// The value of one setting in a (non-ACK) SETTINGS frame.
    pub(crate) fn setting(&self, id: u16) -> Option<u32> {
        if self.kind != SETTINGS {
            return None;
        }
        self.payload.chunks_exact(6).find_map(|s| {
            (u16::from_be_bytes([s[0], s[1]]) == id)
                .then(|| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
        })
    }

    /// The error code of a GOAWAY frame.
    pub(crate) fn goaway_code(&self) -> Option<u32> {
        (self.kind == GOAWAY && self.payload.len() >= 8).then(|| {
            u32::from_be_bytes([
                self.payload[4],
                self.payload[5],
                self.payload[6],
                self.payload[7],
            ])
        })
    }
}

/// Everything the server sent until it closed the connection or went quiet.
#[derive(Debug)]
pub(crate) struct Received {
    pub frames: Vec<Frame>,
    pub closed: bool,
}

impl Received {
    pub(crate) fn goaway_code(&self) -> Option<u32> {
        self.frames.iter().find_map(Frame::goaway_code)
    }
}

/// A client connection speaking HTTP/2 frames directly.
pub(crate) struct RawH2 {
    stream: TcpStream,
    /// Bytes read but not yet parsed into a frame.
    unread: Vec<u8>,
}

impl RawH2 {
    /// Connects and sends the preface and an empty SETTINGS frame.
    pub(crate) async fn connect(addr: SocketAddr) -> RawH2 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut opening = PREFACE.to_vec();
        push_frame(&mut opening, SETTINGS, 0, 0, &[]);
        stream.write_all(&opening).await.expect("write preface");
        RawH2 {
            stream,
            unread: Vec::new(),
        }
    }

    /// Like [`RawH2::connect`], with the preface's first `split` bytes sent alone, `pause`
    /// before the rest (a client whose preface arrives in pieces).
    pub(crate) async fn connect_in_pieces(
        addr: SocketAddr,
        split: usize,
        pause: Duration,
    ) -> RawH2 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.write_all(&PREFACE[..split]).await.expect("write");
        tokio::time::sleep(pause).await;
        let mut rest = PREFACE[split..].to_vec();
        push_frame(&mut rest, SETTINGS, 0, 0, &[]);
        stream.write_all(&rest).await.expect("write");
        RawH2 {
            stream,
            unread: Vec::new(),
        }
    }

    /// Writes `bytes` in one call; `Err` once the server has closed the connection.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads frames until the server closes the connection or sends nothing for `quiet`.
    pub(crate) async fn read_until_quiet(&mut self, quiet: Duration) -> Received {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let closed = loop {
            while let Some(frame) = self.next_buffered() {
                frames.push(frame);
            }
            match tokio::time::timeout(quiet, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Err(_) => break false,
                Ok(Ok(n)) => self.unread.extend_from_slice(&buf[..n]),
            }
        };
        while let Some(frame) = self.next_buffered() {
            frames.push(frame);
        }
        Received { frames, closed }
    }

    /// Reads until the response on `stream` ends; true when it was answered (HEADERS seen) and
    /// not reset. False if the connection closed or went quiet for `quiet` first.
    pub(crate) async fn read_response(&mut self, stream: u32, quiet: Duration) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        let mut answered = false;
        loop {
            while let Some(frame) = self.next_buffered() {
                if frame.stream != stream {
                    continue;
                }
                match frame.kind {
                    RST_STREAM => return false,
                    HEADERS => answered = true,
                    _ => {}
                }
                if frame.flags & END_STREAM != 0 {
                    return answered;
                }
            }
            match tokio::time::timeout(quiet, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
                Ok(Ok(n)) => self.unread.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn next_buffered(&mut self) -> Option<Frame> {
        if self.unread.len() < 9 {
            return None;
        }
        let len = u32::from_be_bytes([0, self.unread[0], self.unread[1], self.unread[2]]) as usize;
        if self.unread.len() < 9 + len {
            return None;
        }
        let stream = u32::from_be_bytes([
            self.unread[5],
            self.unread[6],
            self.unread[7],
            self.unread[8],
        ]) & 0x7fff_ffff;
        let frame = Frame {
            kind: self.unread[3],
            flags: self.unread[4],
            stream,
            payload: self.unread[9..9 + len].to_vec(),
        };
        self.unread.drain(..9 + len);
        Some(frame)
    }
}

/// Appends a HEADERS frame for a bodiless request on `stream` (odd, increasing).
pub(crate) fn push_request(
    out: &mut Vec<u8>,
    stream: u32,
    method: &str,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) {
    let mut block = vec![
        match method {
            "GET" => 0x82,
            "POST" => 0x83,
            other => panic!("method {other} has no static index here"),
        },
        0x86, // :scheme http
    ];
    push_literal_indexed_name(&mut block, 4, path); // :path
    push_literal_indexed_name(&mut block, 1, authority); // :authority
    for (name, value) in headers {
        block.push(0x00);
        push_string(&mut block, name);
        push_string(&mut block, value);
    }
    push_frame(out, HEADERS, END_HEADERS | END_STREAM, stream, &block);
}

/// Appends a RST_STREAM frame with `code`.
pub(crate) fn push_reset(out: &mut Vec<u8>, stream: u32, code: u32) {
    push_frame(out, RST_STREAM, 0, stream, &code.to_be_bytes());
}

fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame length");
    assert!(len < 1 << 14, "frame over the default maximum size");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn push_literal_indexed_name(block: &mut Vec<u8>, index: u8, value: &str) {
    assert!(index < 16);
    block.push(index);
    push_string(block, value);
}

/// A string literal without Huffman coding (short strings only: a one-byte length).
fn push_string(block: &mut Vec<u8>, text: &str) {
    let len = u8::try_from(text.len())
        .ok()
        .filter(|l| *l < 127)
        .expect("short header string");
    block.push(len);
    block.extend_from_slice(text.as_bytes());
}

/// A well-behaved HTTP/2 client (prior knowledge) on one connection to `addr`: clones of the
/// sender share that connection, so concurrent requests are streams of it.
pub(crate) async fn one_connection(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), {
            hyper_util::rt::TokioIo::new(stream)
        })
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}
