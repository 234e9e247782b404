//! The client's telemetry: what the hub reads of it (a failure ends the backup), stored whole.

use serde::Deserialize;

use crate::catalog::Backup;
use crate::error::{Error, Result};
use crate::state::{Hub, now};

/// What the hub reads from a telemetry body; the whole body is stored as it came (the views read
/// the progress fields from it). Every field is read leniently: a value of an unexpected type is
/// left out rather than refusing the report, so a failure report is never lost to a bad counter.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct Telemetry {
    #[serde(default, deserialize_with = "lenient")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub current_phase: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub bytes_transferred: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub total_bytes: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub transfer_speed_bps: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub progress_percent: Option<f64>,
    /// `{"message": ...}` as the client sends it, or a bare string.
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

fn lenient<'de, D: serde::Deserializer<'de>, T: serde::de::DeserializeOwned>(
    de: D,
) -> std::result::Result<Option<T>, D::Error> {
    let value = serde_json::Value::deserialize(de)?;
    Ok(serde_json::from_value(value).ok())
}

impl Telemetry {
    pub fn parse(body: &serde_json::Value) -> Result<Telemetry> {
        if !body.is_object() {
            return Err(Error::Invalid("telemetry must be a JSON object".into()));
        }
        serde_json::from_value(body.clone()).map_err(|e| Error::Invalid(format!("telemetry: {e}")))
    }

    /// The client's message when this report says the backup failed: `status: "failed"`, or
    /// any `error` that is not null.
    pub fn failure(&self) -> Option<String> {
        let error = self.error.as_ref().filter(|e| !e.is_null());
        let message = error
            .and_then(|e| match e {
                serde_json::Value::String(text) => Some(text.clone()),
                other => other["message"].as_str().map(str::to_owned),
            })
            .filter(|m| !m.trim().is_empty());
        let failed = error.is_some() || self.status.as_deref() == Some("failed");
        failed.then(|| message.unwrap_or_else(|| "no message given".to_owned()))
    }
}

impl Hub {
    /// Record the client's telemetry: the whole body, the time it came, and when it reports a
    /// failure, the end of the backup with the client's message.
    pub async fn telemetry(&self, id: &str, body: &serde_json::Value) -> Result<Backup> {
        let report = Telemetry::parse(body)?;
        self.backup(id)?;
        self.catalog.set_telemetry(id, body, now())?;
        if let Some(active) = self.active.lock().get(id) {
            active.touch();
        }
        if let Some(message) = report.failure() {
            // `fail` ignores a backup that already finished or is finalising: the client's
            // complete calls came first and the images are whole.
            self.fail(id, &format!("client reported failure: {message}"))
                .await?;
        }
        self.backup(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_failures() {
        let t = |v: serde_json::Value| Telemetry::parse(&v).unwrap().failure();
        use serde_json::json;
        assert_eq!(
            t(json!({"status": "running", "progress_percent": 5.0})),
            None
        );
        assert_eq!(
            t(json!({"status": "failed", "error": {"message": "snapshot lost"}})).as_deref(),
            Some("snapshot lost")
        );
        assert_eq!(
            t(json!({"error": "disk gone"})).as_deref(),
            Some("disk gone")
        );
        assert_eq!(
            t(json!({"status": "failed"})).as_deref(),
            Some("no message given")
        );
        assert_eq!(t(json!({"error": null, "status": "running"})), None);
        assert!(Telemetry::parse(&json!([1])).is_err());
        // A bad counter does not hide the failure.
        assert_eq!(
            t(json!({"bytes_transferred": "many", "error": {"message": 5}})).as_deref(),
            Some("no message given")
        );
        let odd =
            Telemetry::parse(&json!({"bytes_transferred": -1, "progress_percent": 7})).unwrap();
        assert_eq!(
            (odd.bytes_transferred, odd.progress_percent),
            (None, Some(7.0))
        );
    }
}
