//! Discovery at scale (issue 22, item 11): `POST /api/v1/discovery/discover-vms` with
//! `create_context` against an SNA answering N VMs (one 1 MiB disk each), on an in-process hub
//! in a temp dir at its default settings. The SNA is a stand-in in this process (axum on
//! 127.0.0.1:0) answering one JSON body built beforehand, so the time is the hub's: the SNA call,
//! decoding, vetting, and writing the contexts. Timed twice: the first discovery creates every
//! context, the second refreshes them.
//!
//! Not a test: run it with `cargo run --release -p benches --bin discovery_scale [-- --vms N]`.

use std::time::Instant;

use axum::http::{Method, StatusCode};
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
#[command(about = "Discovery at scale: POST discover-vms with N VMs, created then refreshed")]
struct Args {
    #[arg(long, default_value_t = 150_000)]
    vms: usize,
}

const PASSWORD: &str = "bench-password-1";

/// The SNA's answer: `n` VMs named `vm-<i>`.
fn inventory(n: usize) -> String {
    let vms: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"vm-{i}","name":"vm-{i}","path":"/DC1/vm/vm-{i}","power_state":"poweredOn","disks":[{{"id":"disk-2000","capacity_bytes":1048576,"datastore":"ds1"}}]}}"#
            )
        })
        .collect();
    format!(
        r#"{{"vcenter":{{"host":"vc.bench","datacenter":"DC1"}},"vms":[{}]}}"#,
        vms.join(",")
    )
}

/// Serves `answer` to every `POST /api/v1/discover`; its port.
async fn stand_in_sna(answer: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("SNA listener");
    let port = listener.local_addr().expect("address").port();
    let app = axum::Router::new().route(
        "/api/v1/discover",
        axum::routing::post(move || {
            let answer = answer.clone();
            async move { ([("content-type", "application/json")], answer) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let answer = inventory(args.vms);
    let answer_mib = answer.len() as f64 / f64::from(1 << 20);
    let sna_port = stand_in_sna(answer).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let h = benches::inproc::start_hub(dir.path(), |c| {
        c.sna_url = format!("http://127.0.0.1:{sna_port}");
    })
    .await;
    let credential = json!({"credential_name": "vc", "vcenter_host": "vc.bench",
        "username": "admin", "password": PASSWORD, "datacenter": "DC1", "is_default": true});
    let (s, c) = h
        .call(
            Method::POST,
            "/api/v1/vmware-credentials",
            Some(&credential),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    let discover = json!({"credential_id": c["credential"]["id"], "create_context": true});
    println!("{} VMs, SNA answer {answer_mib:.1} MiB", args.vms);
    for (pass, counted) in [
        ("create", "contexts_created"),
        ("refresh", "contexts_updated"),
    ] {
        let began = Instant::now();
        let (s, d) = h
            .call(
                Method::POST,
                "/api/v1/discovery/discover-vms",
                Some(&discover),
            )
            .await;
        let took = began.elapsed();
        assert_eq!(s, StatusCode::OK, "{}", d["error"]);
        assert_eq!(d[counted], args.vms, "{}", d["message"]);
        println!(
            "{pass}: {:.2} s ({:.0} VMs/s)",
            took.as_secs_f64(),
            args.vms as f64 / took.as_secs_f64()
        );
    }
    h.stop().await;
}
