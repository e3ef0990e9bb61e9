//! The client side of `warmpool run` and `warmpool status`: plain HTTP/1 to the daemon.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

pub struct Client {
    base: String,
    token: Option<String>,
    http: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// A response with a body still to read.
pub struct Response {
    pub status: u16,
    /// Response headers (`Retry-After` on 429 and 503 tells a client when to come back).
    pub headers: hyper::HeaderMap,
    pub body: hyper::body::Incoming,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = self.http.request(req).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the warmpool daemon at {} ({e}); is `warmpool serve` running? (set --addr or WARMPOOL_ADDR)",
                self.base
            )
        })?;
        let (parts, body) = resp.into_parts();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

impl Response {
    pub async fn bytes(self) -> anyhow::Result<Bytes> {
        Ok(self.body.collect().await?.to_bytes())
    }

    /// The next chunk of a streamed body, `None` at its end.
    pub async fn chunk(&mut self) -> anyhow::Result<Option<Bytes>> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}
