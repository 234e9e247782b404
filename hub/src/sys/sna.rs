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
use crate::sys::echo;

/// An inventory of many VMs is large, but not this large.
const MAX_ANSWER: usize = 64 << 20;

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
    /// decode — is an [`Error::Upstream`] with the SNA's own message, quoted only where it cannot
    /// hold the strings in `hide` (the password sent) in any encoding ([`echo::quote`]). Only the
    /// SNA's text is looked at: the path and status around it are the hub's and stay whole.
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
                // serde_json's message quotes the answer ("invalid type: string \"…\"").
                serde_json::from_slice::<R>(&bytes).map_err(|e| {
                    let why = echo::quote(e.to_string().as_bytes(), hide);
                    format!("the SNA's answer to POST {path} does not decode: {why}")
                })
            }
            Ok(Ok((status, bytes))) => Err(format!(
                "the SNA answered {status} to POST {path}: {}",
                echo::quote(&bytes, hide)
            )),
        };
        outcome.map_err(Error::Upstream)
    }
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

    /// An SNA on `127.0.0.1` that answers every request with `status` and `body`.
    async fn answering(status: &'static str, body: String) -> SnaClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 64 << 10];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
            }
        });
        SnaClient::new(&format!("http://{addr}"), Duration::from_secs(5)).unwrap()
    }

    #[derive(serde::Deserialize, Debug)]
    struct Count {
        #[allow(dead_code)]
        n: u64,
    }

    #[tokio::test]
    async fn echoed_passwords_are_withheld_and_the_path_stays_whole() {
        let odd = "pässwörd\"\\x-long";
        let escaped = serde_json::to_string(odd).unwrap();
        for (status, body, secret, shows) in [
            (
                "500 Internal Server Error",
                format!(r#"{{"error":{escaped}}}"#),
                odd,
                false,
            ),
            ("200 OK", format!(r#"{{"n":{escaped}}}"#), odd, false),
            (
                "400 Bad Request",
                "Validation failed: vm_path".into(),
                "p",
                false,
            ),
            (
                "400 Bad Request",
                "Validation failed: vm_path".into(),
                odd,
                true,
            ),
        ] {
            let client = answering(status, body).await;
            let err = client
                .post::<_, Count>("/api/v1/backup/start", &serde_json::json!({}), &[secret])
                .await
                .unwrap_err();
            let Error::Upstream(m) = &err else {
                panic!("{err}")
            };
            assert!(m.contains("POST /api/v1/backup/start"), "{m}");
            assert_eq!(m.contains("vm_path"), shows, "{m}");
            assert_eq!(m.contains(echo::WITHHELD), !shows, "{m}");
            for form in [odd, &escaped[1..escaped.len() - 1], "pässwörd"] {
                assert!(!m.contains(form), "{m}");
            }
        }
    }
}
