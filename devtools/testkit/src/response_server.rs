//! A local stand-in for CloudFormation's pre-signed ResponseURL: records every answer PUT to it.
//!
//! Listens on a free loopback port; can refuse its first requests with HTTP 500 to test
//! retries.

use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;

use crate::http::{read_request, write_response};

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
                    let Some(request) = read_request(&mut stream).await else { return };
                    let accepted = {
                        let mut log = log.lock().expect("lock");
                        let accepted = log.len() >= refuse_first;
                        log.push(Received {
                            method: request.method.clone(),
                            path: request.path.clone(),
                            content_type: request.header("content-type").map(str::to_owned),
                            body: String::from_utf8_lossy(&request.body).to_string(),
                            accepted,
                        });
                        accepted
                    };
                    write_response(&mut stream, if accepted { 200 } else { 500 }, &[], b"").await;
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
