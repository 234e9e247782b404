//! The hub's calls to the SNA's API (`POST /api/v1/discover`, `POST /api/v1/backup/start`).
//!
//! HTTP client: hyper-util's legacy `Client` over plain HTTP/1.1. hyper and hyper-util already
//! serve our API, so this adds no crate; the SNA is one plain-HTTP address at the end of the SSH
//! tunnel (the tunnel is the encryption), so reqwest's conveniences (TLS, redirects, cookies,
//! proxies) would buy nothing here and add some forty crates to build.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::CONTENT_TYPE;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// An inventory of many VMs is large, but not this large.
const MAX_ANSWER: usize = 64 << 20;
/// How much of a refusal's body goes into the error message.
const MAX_MESSAGE: usize = 500;

pub struct SnaClient {
    base: String,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// `http://host:port` with nothing after it but an optional `/`.
pub fn check_url(url: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Config(format!("sna_url {url:?}: {why}")));
    let Some(rest) = url.strip_prefix("http://") else {
        return bad("must start with http:// (the SSH tunnel carries plain HTTP)");
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return bad("must be http://host:port without a path");
    }
    match format!("http://{authority}/").parse::<hyper::Uri>() {
        Ok(_) => Ok(()),
        Err(e) => bad(&e.to_string()),
    }
}

impl SnaClient {
    pub fn new(url: &str, timeout: Duration) -> Result<SnaClient> {
        check_url(url)?;
        Ok(SnaClient {
            base: url.trim_end_matches('/').to_owned(),
            timeout,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// POST `body` as JSON to `path`; a 200 or 202 answer is decoded as `R`. Anything else — no
    /// connection, no whole answer within the timeout, another status, a body that does not
    /// decode — is an [`Error::Upstream`] with the SNA's own message. The strings in `hide` (the
    /// password sent) are cut out of that message, whatever the SNA echoes.
    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        hide: &[&str],
    ) -> Result<R> {
        let url = format!("{}{path}", self.base);
        let call = async {
            let json =
                serde_json::to_vec(body).map_err(|e| format!("encoding the request: {e}"))?;
            let req = Request::post(url.as_str())
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(json)))
                .map_err(|e| format!("building the request: {e}"))?;
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("no answer from the SNA at {}: {e}", self.base))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the SNA's answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(format!(
                "the SNA did not answer POST {path} within {} s",
                self.timeout.as_secs_f64()
            )),
            Ok(Err(message)) => Err(message),
            Ok(Ok((status, bytes))) if status.as_u16() == 200 || status.as_u16() == 202 => {
                serde_json::from_slice::<R>(&bytes)
                    .map_err(|e| format!("the SNA's answer to POST {path} does not decode: {e}"))
            }
            Ok(Ok((status, bytes))) => Err(format!(
                "the SNA answered {status} to POST {path}: {}",
                snippet(&bytes)
            )),
        };
        outcome.map_err(|message| Error::Upstream(scrub(&message, hide)))
    }
}

/// The start of a refusal's body as one line of text.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE)
        .collect();
    if line.is_empty() {
        "(empty answer)".to_owned()
    } else {
        line
    }
}

fn scrub(message: &str, hide: &[&str]) -> String {
    hide.iter()
        .filter(|h| !h.is_empty())
        .fold(message.to_owned(), |m, h| m.replace(h, "***"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for ok in [
            "http://127.0.0.1:9081",
            "http://localhost:9081/",
            "http://[::1]:9081",
        ] {
            check_url(ok).unwrap();
        }
        for bad in [
            "https://x:1",
            "127.0.0.1:9081",
            "http://",
            "http://x:1/api",
            "http://a b",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_are_one_line_without_secrets() {
        assert_eq!(snippet(b"  bad\npassword s3cret\n"), "bad password s3cret");
        assert_eq!(snippet(b""), "(empty answer)");
        assert_eq!(
            scrub("bad password s3cret", &["s3cret", ""]),
            "bad password ***"
        );
    }

    #[tokio::test]
    async fn refusals_and_silence_are_upstream_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and never answers.
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let client = SnaClient::new(&format!("http://{addr}"), Duration::from_millis(200)).unwrap();
        let err = client
            .post::<_, serde_json::Value>("/api/v1/discover", &serde_json::json!({}), &[])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Upstream(m) if m.contains("did not answer")),
            "{err}"
        );
        let closed = SnaClient::new("http://127.0.0.1:1", Duration::from_secs(2)).unwrap();
        let err = closed
            .post::<_, serde_json::Value>("/x", &serde_json::json!({}), &[])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Upstream(m) if m.contains("no answer")),
            "{err}"
        );
    }
}
