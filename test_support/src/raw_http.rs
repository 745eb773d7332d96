//! HTTP over a raw socket, for hostile-input tests: requests no well-behaved client would send (any method,
//! header bytes and framing), with the answer read while the body is still being written, so that an early
//! answer (a 413 before the body is read) is seen instead of a broken pipe. Also the checks those tests share.

use futures::StreamExt as _;
use serde_json::Value;
use std::borrow::Cow;
use std::future::Future;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A hostile request's body. Large bodies are described, not held, until they are sent.
#[derive(Debug, Clone)]
pub enum Payload {
    /// These bytes.
    Bytes(Vec<u8>),
    /// `len` copies of `byte`.
    Filled {
        /// The byte.
        byte: u8,
        /// How many.
        len: usize,
    },
    /// `prefix`, then `open` repeated `depth` times, then `close` repeated `close_depth` times.
    Nested {
        /// Written first.
        prefix: &'static str,
        /// The opening token (`[`, `{"a":`…).
        open: &'static str,
        /// How many openings.
        depth: usize,
        /// The closing token.
        close: &'static str,
        /// How many closings (fewer than `depth` makes it truncated).
        close_depth: usize,
    },
}

impl Payload {
    /// The bytes to send.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Bytes(b) => b.clone(),
            Self::Filled { byte, len } => vec![*byte; *len],
            Self::Nested {
                prefix,
                open,
                depth,
                close,
                close_depth,
            } => [
                prefix.as_bytes().to_vec(),
                open.repeat(*depth).into_bytes(),
                close.repeat(*close_depth).into_bytes(),
            ]
            .concat(),
        }
    }

    /// How many bytes [`Payload::bytes`] makes.
    pub fn len(&self) -> usize {
        match self {
            Self::Bytes(b) => b.len(),
            Self::Filled { len, .. } => *len,
            Self::Nested {
                prefix,
                open,
                depth,
                close,
                close_depth,
            } => prefix.len() + open.len() * depth + close.len() * close_depth,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A short description for failure messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Bytes(b) if b.len() <= 200 => format!("{:?}", String::from_utf8_lossy(b)),
            Self::Bytes(b) => format!("{} bytes starting {:?}", b.len(), String::from_utf8_lossy(&b[..200])),
            other => format!("{other:?}"),
        }
    }
}

/// Status and body of an answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body as received (the connection is closed after it).
    pub body: Vec<u8>,
}

impl Answer {
    /// The start of the body (300 bytes at most, lossily decoded), for failure messages.
    pub fn excerpt(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
    }
}

/// Sends every probe with `send`, `concurrency` at a time; the answers come back with the index of their probe,
/// in the order they arrived.
pub async fn send_all<'p, P, F, Fut>(
    probes: &'p [P],
    concurrency: usize,
    send: F,
) -> Vec<(usize, Result<Answer, String>)>
where
    F: Fn(&'p P) -> Fut,
    Fut: Future<Output = Result<Answer, String>> + 'p,
{
    futures::stream::iter(probes.iter().enumerate())
        .map(|(i, probe)| {
            let answer = send(probe);
            async move { (i, answer.await) }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// A request to send raw.
pub struct RawRequest<'a> {
    /// Method, as written on the request line.
    pub method: &'a str,
    /// Path and query, as written on the request line.
    pub path: &'a str,
    /// Extra headers, values as raw bytes.
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// The body.
    pub body: &'a [u8],
    /// Send the body with chunked transfer encoding instead of a `Content-Length`.
    pub chunked: bool,
}

/// Sends `request` to 127.0.0.1:`port` on a fresh connection (`Connection: close`); an `Err` is a refused or
/// dropped connection, or an answer that is not HTTP.
pub async fn send(port: u16, request: &RawRequest<'_>) -> Result<Answer, String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let framing = if request.chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {}", request.body.len())
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\nConnection: close\r\n",
        request.method, request.path
    )
    .into_bytes();
    for (name, value) in &request.headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let (mut reader, mut writer) = stream.split();
    let write = async {
        writer.write_all(&head).await?;
        if !request.chunked {
            writer.write_all(request.body).await?;
            return writer.flush().await;
        }
        for chunk in request.body.chunks(64 * 1024) {
            writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
            writer.write_all(chunk).await?;
            writer.write_all(b"\r\n").await?;
        }
        writer.write_all(b"0\r\n\r\n").await?;
        writer.flush().await
    };
    let mut raw = Vec::new();
    let (written, read) = tokio::join!(write, reader.read_to_end(&mut raw));
    read.map_err(|e| format!("read: {e}"))?;
    if raw.is_empty() {
        return Err(format!("connection closed without an answer (write: {written:?})"));
    }
    parse_response(&raw)
}

/// Status and body of a raw HTTP/1.1 response with a `Content-Length` (what axum sends for JSON).
pub fn parse_response(raw: &[u8]) -> Result<Answer, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("incomplete response {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok(Answer {
        status,
        body: raw[end + 4..].to_vec(),
    })
}

/// Whether `body` is the services' error body: `{"error": non-empty string, "message": non-empty string}`.
pub fn is_error_body(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| {
        ["error", "message"]
            .iter()
            .all(|k| v[k].as_str().is_some_and(|s| !s.is_empty()))
    })
}

/// Resident memory of this process, MiB (from `/proc/self/status`).
pub fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_split_into_status_and_body() {
        let answer = parse_response(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\n{}").expect("parsed");
        assert_eq!(answer.status, 413);
        assert_eq!(answer.body, b"{}");
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }

    #[test]
    fn a_payload_knows_its_length_without_being_built() {
        for payload in [
            Payload::Bytes(b"abc".to_vec()),
            Payload::Filled { byte: b'x', len: 5 },
            Payload::Nested {
                prefix: "{",
                open: "[",
                depth: 4,
                close: "]",
                close_depth: 2,
            },
        ] {
            assert_eq!(payload.len(), payload.bytes().len(), "{payload:?}");
        }
    }

    #[test]
    fn only_the_error_shape_is_an_error_body() {
        assert!(is_error_body(br#"{"error":"x","message":"y"}"#));
        assert!(!is_error_body(br#"{"error":"x"}"#));
        assert!(!is_error_body(b""));
    }
}
