//! Just enough HTTP/1.1 to serve local stand-ins for AWS endpoints (a ResponseURL, the Lambda APIs) on loopback.
//!
//! Read the head and `Content-Length` bytes of body, answer; by default with
//! `Connection: close` (clients reconnect as needed), or keeping the connection open.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path, query string included.
    pub path: String,
    /// Lowercase names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Reads one request; `None` when the peer closed the connection or sent no HTTP.
pub async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(position) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break position + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Some(Request { method, path, headers, body: buffer[head_end..].to_vec() })
}

/// Writes a whole response and closes the connection.
pub async fn write_response(stream: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    write_response_keeping(stream, status, headers, body, false).await;
}

/// Writes a whole response; with `keep_alive` the connection stays open for the next
/// request (as AWS endpoints do), else it is closed.
pub async fn write_response_keeping(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) {
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut head =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: {connection}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // One write: a head and a body in two small writes would wait on Nagle and delayed ACKs.
    let mut whole = head.into_bytes();
    whole.extend_from_slice(body);
    let _ = stream.set_nodelay(true);
    let _ = stream.write_all(&whole).await;
    if !keep_alive {
        let _ = stream.shutdown().await;
    }
}
