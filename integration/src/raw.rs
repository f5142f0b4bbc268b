//! Raw-byte HTTP/1 for tests that must control exactly what goes over the wire (framing
//! shapes a client library would never write) and see exactly what comes back.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until `buf` holds a blank line; returns the head's length (None: closed first).
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        buf.reserve(16384);
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// Reads until `buf` holds `upto` bytes.
pub async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, upto: usize) -> Option<()> {
    while buf.len() < upto {
        buf.reserve(65536);
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
    Some(())
}

/// The value of the first `name` header of a head.
pub fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

/// A final answer as the client read it (interim 1xx answers skipped).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        header_of(&self.head, name)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Reads one final answer framed by `Content-Length` (or by the close).
pub async fn read_answer<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<Answer> {
    loop {
        let n = read_head(s, buf).await?;
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        buf.drain(..n);
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        if (100..200).contains(&status) {
            continue;
        }
        let body = match header_of(&head, "content-length") {
            Some(len) => {
                let len: usize = len.parse().ok()?;
                fill(s, buf, len).await?;
                buf.drain(..len).collect()
            }
            None => {
                let _ = s.read_to_end(buf).await;
                std::mem::take(buf)
            }
        };
        return Some(Answer { status, head, body });
    }
}

/// Whether the peer closes `s` (nothing more arrives; bounded at 10 s).
pub async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Sends `bytes` on a new connection to 127.0.0.1:`port` and reads one answer; the
/// connection comes back too (to see whether it closes).
pub async fn exchange(port: u16, bytes: &[u8]) -> (Option<Answer>, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut buf = Vec::new();
    let a = read_answer(&mut s, &mut buf).await;
    (a, s)
}
