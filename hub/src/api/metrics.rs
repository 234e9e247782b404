//! `GET /metrics` in the Prometheus text format.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::error::ApiError;
use crate::catalog::{JobStatus, Status};
use crate::jobs::JobKind;
use crate::state::Hub;

#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "service",
    security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(hub): State<Hub>) -> Result<impl IntoResponse, ApiError> {
    let mut out = String::new();
    let counts = hub.catalog.count_by_status()?;
    out.push_str("# HELP sendense_backups Backups in the catalog by status.\n# TYPE sendense_backups gauge\n");
    for status in Status::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| s == status.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(
            out,
            "sendense_backups{{status=\"{}\"}} {n}",
            status.as_str()
        );
    }

    out.push_str("# HELP sendense_backups_verify Completed backups by the outcome of their newest verify.\n# TYPE sendense_backups_verify gauge\n");
    for (state, n) in hub.catalog.count_by_verify_state()? {
        let _ = writeln!(
            out,
            "sendense_backups_verify{{state=\"{}\"}} {n}",
            state.as_str()
        );
    }

    jobs(&hub, &mut out)?;
    out.push_str(
        "# HELP sendense_flow_last_success_timestamp_seconds When each protection flow's newest successful run ended.\n\
         # TYPE sendense_flow_last_success_timestamp_seconds gauge\n",
    );
    for (flow, at) in hub.catalog.last_successes()? {
        let _ = writeln!(
            out,
            "sendense_flow_last_success_timestamp_seconds{{flow=\"{flow}\"}} {}",
            at.unix_timestamp()
        );
    }

    let actives: Vec<_> = hub.active.lock().values().cloned().collect();
    let (mut exports, mut connections, mut live_bytes) = (0u64, 0u64, 0u64);
    for active in &actives {
        for disk in &active.disks {
            if let Some(stats) = hub.nbd.export_stats(&disk.export_name) {
                exports += 1;
                connections += stats.connections as u64;
                live_bytes += stats.bytes_written;
            } else {
                live_bytes += disk.bytes_written();
            }
        }
    }
    for restore in hub.catalog.restores()? {
        if let Some(stats) = hub.nbd.export_stats(&restore.export_name) {
            exports += 1;
            connections += stats.connections as u64;
        }
    }
    let received = hub.catalog.bytes_received_finished()? + live_bytes;
    let _ = write!(
        out,
        "# HELP sendense_bytes_received_total Bytes written by NBD clients into backup images.\n\
         # TYPE sendense_bytes_received_total counter\nsendense_bytes_received_total {received}\n\
         # HELP sendense_active_exports NBD exports open (backups and restores).\n\
         # TYPE sendense_active_exports gauge\nsendense_active_exports {exports}\n\
         # HELP sendense_nbd_connections Open NBD connections (backups and restores).\n\
         # TYPE sendense_nbd_connections gauge\nsendense_nbd_connections {connections}\n"
    );
    out.push_str(
        "# HELP sendense_repository_free_bytes Free bytes on each repository's filesystem.\n",
    );
    out.push_str("# TYPE sendense_repository_free_bytes gauge\n");
    for repo in hub.catalog.local_repositories()? {
        if let Ok(cap) = crate::repo::manage::Capacity::of(&repo.path) {
            let free = cap.available_bytes;
            let _ = writeln!(
                out,
                "sendense_repository_free_bytes{{repository=\"{}\"}} {free}",
                repo.id
            );
        }
    }
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// `sendense_jobs{type, status}`: every kind and status, zero included, so an alert rule on
/// failed jobs has a series from the start.
fn jobs(hub: &Hub, out: &mut String) -> Result<(), ApiError> {
    let counts = hub.catalog.count_jobs()?;
    out.push_str("# HELP sendense_jobs Jobs in the catalog by type and status.\n# TYPE sendense_jobs gauge\n");
    for kind in JobKind::ALL {
        for status in JobStatus::ALL {
            let n = counts
                .iter()
                .find(|(k, s, _)| k == kind.as_str() && s == status.as_str())
                .map_or(0, |(_, _, n)| *n);
            let _ = writeln!(
                out,
                "sendense_jobs{{type=\"{}\",status=\"{}\"}} {n}",
                kind.as_str(),
                status.as_str()
            );
        }
    }
    Ok(())
}
