//! A local stand-in for CloudFormation's pre-signed ResponseURL: records every answer PUT to it.
//!
//! Listens on a free loopback port; can refuse its first requests with HTTP 500 to test
//! retries. Each request is read whole (headers, then `Content-Length` bytes) and answered
//! with `Connection: close`.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// The `Content-Type` header as sent (`Some("")` when sent empty).
    pub content_type: Option<String>,
    pub body: String,
    /// Whether it was answered 200 (the others were refused on purpose).
    pub accepted: bool,
}

#[derive(Clone)]
pub struct ResponseServer {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl ResponseServer {
    /// Starts a server that refuses its first `refuse_first` requests with HTTP 500.
    pub async fn start(refuse_first: usize) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/cloudformation-response?X-Amz-Signature=local", listener.local_addr()?);
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let Some(mut request) = read_request(&mut stream).await else {
                        return;
                    };
                    let accepted = {
                        let mut log = log.lock().expect("lock");
                        request.accepted = log.len() >= refuse_first;
                        log.push(request.clone());
                        request.accepted
                    };
                    let status = if accepted { "200 OK" } else { "500 Internal Server Error" };
                    let _ = stream
                        .write_all(
                            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
                        )
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(ResponseServer { url, received })
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The answers it accepted, parsed.
    pub fn accepted_answers(&self) -> Vec<serde_json::Value> {
        self.received().iter().filter(|r| r.accepted).filter_map(|r| serde_json::from_str(&r.body).ok()).collect()
    }
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
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
    let mut content_length = 0;
    let mut content_type = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.trim().parse().unwrap_or(0),
                "content-type" => content_type = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    while buffer.len() < head_end + content_length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = String::from_utf8_lossy(&buffer[head_end..]).to_string();
    Some(Received { method, path, content_type, body, accepted: false })
}
