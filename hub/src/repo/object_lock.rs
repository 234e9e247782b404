//! S3 Object Lock, for the calls object_store has no verb for: a bucket's lock configuration
//! (`GET /?object-lock`) and an object's retain-until date (`PUT /<key>?retention`), signed with
//! object_store's own SigV4 signer and sent through its HTTP client.
//!
//! A copy into a bucket with Object Lock gets a retain-until date on every object; the hub then
//! never asks to delete one before it (the bucket would refuse, and say so less clearly).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::Digest;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpConnector, ReqwestConnector};
use object_store::path::Path as Key;
use serde::Deserialize;
use time::OffsetDateTime;

use super::s3::Bucket;
use crate::error::{Error, Result};

/// What Object Lock does to objects: under `Governance` a user with the bypass permission may
/// still delete, under `Compliance` nobody may before the date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// A bucket's Object Lock: enabled, and the retention it gives new objects by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketLock {
    pub default_mode: Option<LockMode>,
    pub default_days: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ObjectLockConfiguration {
    object_lock_enabled: Option<String>,
    rule: Option<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Rule {
    default_retention: Option<DefaultRetention>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DefaultRetention {
    mode: Option<String>,
    days: Option<u32>,
    years: Option<u32>,
}

/// The lock configuration's XML; `None` when Object Lock is not enabled.
fn parse_lock(xml: &str) -> Result<Option<BucketLock>> {
    let conf: ObjectLockConfiguration = quick_xml::de::from_str(xml).map_err(|e| {
        Error::Upstream(format!(
            "the bucket's Object Lock configuration is not readable: {e}"
        ))
    })?;
    if conf.object_lock_enabled.as_deref() != Some("Enabled") {
        return Ok(None);
    }
    let retention = conf.rule.and_then(|r| r.default_retention);
    let default_mode = retention
        .as_ref()
        .and_then(|r| r.mode.as_deref())
        .map(|m| match m {
            "COMPLIANCE" => LockMode::Compliance,
            _ => LockMode::Governance,
        });
    let default_days =
        retention.and_then(|r| r.days.or_else(|| r.years.map(|y| y.saturating_mul(365))));
    Ok(Some(BucketLock {
        default_mode,
        default_days,
    }))
}

fn retention_xml(mode: LockMode, until: OffsetDateTime) -> String {
    let until = until
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a date formats");
    format!(
        "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode>\
         <RetainUntilDate>{until}</RetainUntilDate></Retention>",
        mode.as_str()
    )
}

impl Bucket {
    /// The URL of the bucket (`key` empty) or of one object, with `query`.
    fn url(&self, key: Option<&Key>, query: &str) -> String {
        let s = self.settings();
        let path = key.map(|k| k.to_string()).unwrap_or_default();
        if s.path_style {
            format!("{}/{}/{path}?{query}", s.endpoint, s.bucket)
        } else {
            let (scheme, host) = s
                .endpoint
                .split_once("://")
                .unwrap_or(("https", &s.endpoint));
            format!("{scheme}://{}.{host}/{path}?{query}", s.bucket)
        }
    }

    async fn send(
        &self,
        method: axum::http::Method,
        url: String,
        body: Vec<u8>,
        headers: &[(&'static str, String)],
    ) -> Result<(u16, String)> {
        let mut req = axum::http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let mut req = req
            .body(body.into())
            .map_err(|e| Error::Invalid(format!("S3 request {url}: {e}")))?;
        let credential = AwsCredential {
            key_id: self.settings().access_key_id.clone(),
            secret_key: self.secret().expose().to_owned(),
            token: None,
        };
        AwsAuthorizer::new(&credential, "s3", &self.settings().region)
            .try_authorize(&mut req, None)
            .map_err(|e| Error::Upstream(format!("signing {url}: {e}")))?;
        let client = ReqwestConnector::default()
            .connect(self.client_options())
            .map_err(|e| Error::Upstream(format!("S3 client: {e}")))?;
        let resp = client
            .execute(req)
            .await
            .map_err(|e| Error::Upstream(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .bytes()
            .await
            .map_err(|e| Error::Upstream(format!("{url}: {e}")))?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The bucket's Object Lock, `None` when it has none.
    pub async fn object_lock(&self) -> Result<Option<BucketLock>> {
        let (status, body) = self
            .send(
                axum::http::Method::GET,
                self.url(None, "object-lock"),
                Vec::new(),
                &[],
            )
            .await?;
        match status {
            200 => parse_lock(&body),
            // ObjectLockConfigurationNotFoundError: a bucket made without Object Lock; 501 and
            // 400: a store that has no Object Lock at all (Garage answers NotImplemented).
            404 if body.contains("ObjectLockConfigurationNotFound") => Ok(None),
            400 | 501 if body.contains("NotImplemented") => Ok(None),
            _ => Err(Error::Upstream(format!(
                "reading the Object Lock of {}: HTTP {status}: {}",
                super::s3::display(self.settings()),
                body.chars().take(300).collect::<String>()
            ))),
        }
    }

    /// Sets the object's retain-until date (never earlier than the bucket allows).
    pub async fn retain(&self, key: &Key, mode: LockMode, until: OffsetDateTime) -> Result<()> {
        let body = retention_xml(mode, until).into_bytes();
        let md5 = BASE64.encode(md5::Md5::digest(&body));
        let (status, text) = self
            .send(
                axum::http::Method::PUT,
                self.url(Some(key), "retention"),
                body,
                &[
                    ("content-md5", md5),
                    ("content-type", "application/xml".into()),
                ],
            )
            .await?;
        if status / 100 == 2 {
            return Ok(());
        }
        Err(Error::Upstream(format!(
            "setting the retention of {key}: HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_configurations() {
        let ns = "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"";
        let plain = format!(
            "<ObjectLockConfiguration {ns}><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>"
        );
        assert_eq!(
            parse_lock(&plain).unwrap(),
            Some(BucketLock {
                default_mode: None,
                default_days: None
            })
        );
        let ruled = format!(
            "<ObjectLockConfiguration {ns}><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule>\
             <DefaultRetention><Mode>COMPLIANCE</Mode><Years>2</Years></DefaultRetention></Rule>\
             </ObjectLockConfiguration>"
        );
        assert_eq!(
            parse_lock(&ruled).unwrap(),
            Some(BucketLock {
                default_mode: Some(LockMode::Compliance),
                default_days: Some(730)
            })
        );
        let off = format!("<ObjectLockConfiguration {ns}></ObjectLockConfiguration>");
        assert_eq!(parse_lock(&off).unwrap(), None);
        assert!(parse_lock("<not xml").is_err());
    }
}
