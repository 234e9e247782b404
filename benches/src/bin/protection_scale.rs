//! Protection at scale (issue 17): 500 VMs in 20 machine groups, 20 scheduled group flows and 480
//! unscheduled VM flows, on an in-process hub in a temp dir.
//!
//! A. The scheduler's idle cost: this process's CPU time (user + system, every thread) over a
//!    stretch of wall time with the hub idle (only the scheduler and the monitor loops run), for a
//!    hub with no flows and for the populated one; the difference is what the 20 scheduled flows
//!    cost. Also the time of one pass, from a copy of `schedule_pass`'s reads (that function is
//!    private): the catalog's flows, each scheduled flow's schedule, `missed` and `next_after`.
//! B. `GET /api/v1/protection-flows` with 500 flows, through `hub::api::app` and
//!    `tower::ServiceExt::oneshot`: 200 requests after 10 warm-up, p50/p99/max.
//!
//! Not a test: run it with `cargo run --release -p benches --bin protection_scale`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use clap::Parser;
use hub::Hub;
use hub::catalog::{VmContext, VmDisk};
use hub::protect::cron::CronSchedule;
use serde_json::{Value, json};

const VMS: usize = 500;
const GROUPS: usize = 20;
const FLOWS: usize = 500;
/// Nightly at 02:00 in zones spread round the globe; the bench checks that none is due while it
/// runs (and that no flow ran).
const ZONES: [&str; 5] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "America/Los_Angeles",
];

#[derive(Parser)]
#[command(about = "Protection at scale: scheduler idle cost and GET /protection-flows latency")]
struct Args {
    /// Wall time of each idle measurement, in seconds.
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Timed list requests (after the warm-up).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Timed copies of a scheduler pass.
    #[arg(long, default_value_t = 1000)]
    passes: usize,
}

struct Bench {
    _dir: tempfile::TempDir,
    inproc: benches::inproc::InProcessHub,
}

impl Bench {
    async fn start() -> Bench {
        let dir = tempfile::tempdir().expect("temp dir");
        let inproc = benches::inproc::start_hub(dir.path(), |_| {}).await;
        Bench { _dir: dir, inproc }
    }

    async fn stop(self) {
        self.inproc.stop().await;
    }

    async fn call(&self, method: Method, uri: &str, body: Option<&Value>) -> (StatusCode, Value) {
        self.inproc.call(method, uri, body).await
    }

    async fn create(&self, uri: &str, body: Value, want: StatusCode) -> Value {
        let (status, answer) = self.call(Method::POST, uri, Some(&body)).await;
        assert_eq!(status, want, "POST {uri} {body}: {answer}");
        answer
    }

    /// 500 VM contexts (as discovery writes them), 20 groups of 25, 20 nightly schedules, 20
    /// group flows on them and 480 VM flows without a schedule.
    async fn populate(&self) {
        let contexts = self.vm_contexts();
        for g in 0..GROUPS {
            let schedule = self
                .create(
                    "/api/v1/schedules",
                    json!({"name": format!("nightly {g}"), "cron_expression": "0 2 * * *",
                        "timezone": ZONES[g % ZONES.len()]}),
                    StatusCode::CREATED,
                )
                .await;
            let group = self
                .create(
                    "/api/v1/machine-groups",
                    json!({"name": format!("group {g}")}),
                    StatusCode::CREATED,
                )
                .await;
            let group_id = group["id"].as_str().expect("group id");
            let members = &contexts[g * (VMS / GROUPS)..(g + 1) * (VMS / GROUPS)];
            self.create(
                &format!("/api/v1/machine-groups/{group_id}/vms"),
                json!({"vm_context_ids": members}),
                StatusCode::OK,
            )
            .await;
            self.create(
                "/api/v1/protection-flows",
                json!({"name": format!("group {g} nightly"), "flow_type": "backup",
                    "target_type": "group", "target_id": group_id, "repository_id": "default",
                    "schedule_id": schedule["id"], "enabled": true}),
                StatusCode::CREATED,
            )
            .await;
        }
        for (i, context) in contexts.iter().take(FLOWS - GROUPS).enumerate() {
            self.create(
                "/api/v1/protection-flows",
                json!({"name": format!("vm {i}"), "flow_type": "backup", "target_type": "vm",
                    "target_id": context, "repository_id": "default", "enabled": true}),
                StatusCode::CREATED,
            )
            .await;
        }
    }

    fn vm_contexts(&self) -> Vec<String> {
        let at = time::OffsetDateTime::now_utc();
        (0..VMS)
            .map(|i| {
                let context = VmContext {
                    context_id: format!("ctx-bench-{i:04}"),
                    vm_name: format!("vm-{i:04}"),
                    vmware_vm_id: format!("vm-{}", 1000 + i),
                    vm_path: format!("/DC1/vm/vm-{i:04}"),
                    vcenter_host: "vc.example".into(),
                    datacenter: "DC1".into(),
                    credential_id: None,
                    power_state: "poweredOn".into(),
                    guest_os: "otherLinux64Guest".into(),
                    memory_mb: 4096,
                    num_cpu: 2,
                    created_at: at,
                    updated_at: at,
                };
                let disk = VmDisk {
                    disk_id: 0,
                    vmware_disk_key: 2000,
                    label: "Hard disk 1".into(),
                    vmdk_path: format!("[ds1] vm-{i:04}/vm-{i:04}.vmdk"),
                    datastore: "ds1".into(),
                    capacity_bytes: 16 << 30,
                    provisioning_type: "thin".into(),
                    unit_number: 0,
                };
                let (id, _) = self
                    .inproc
                    .hub
                    .catalog
                    .upsert_vm_context(&context, &[disk])
                    .expect("upsert VM context");
                id
            })
            .collect()
    }
}

/// This process's CPU time over `wall` of idle, as a percentage of one core.
async fn idle_cpu(wall: Duration) -> f64 {
    let (cpu0, t0) = (benches::sys::self_cpu(), Instant::now());
    tokio::time::sleep(wall).await;
    let (cpu, elapsed) = (benches::sys::self_cpu() - cpu0, t0.elapsed());
    100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64()
}

/// What one scheduler pass reads and computes when nothing is due (a copy of
/// `Hub::schedule_pass` without `run_tick`); returns the scheduled flows seen and the earliest tick.
fn pass_copy(
    hub: &Hub,
    parsed: &mut HashMap<(String, String), Option<CronSchedule>>,
) -> (usize, Option<time::OffsetDateTime>) {
    let at = time::OffsetDateTime::now_utc();
    let (mut seen, mut earliest) = (0, None::<time::OffsetDateTime>);
    for flow in hub.catalog.flows().expect("flows") {
        let Some(schedule_id) = flow.schedule_id.as_deref().filter(|_| flow.enabled) else {
            continue;
        };
        let Some(schedule) = hub.catalog.schedule(schedule_id).expect("schedule") else {
            continue;
        };
        if !schedule.enabled {
            continue;
        }
        let key = (schedule.cron_expression.clone(), schedule.timezone.clone());
        let Some(cron) = parsed.entry(key).or_insert_with(|| {
            CronSchedule::parse(&schedule.cron_expression, &schedule.timezone).ok()
        }) else {
            continue;
        };
        seen += 1;
        let last = flow.last_tick_at.unwrap_or(flow.created_at);
        assert!(
            cron.missed(last, at).is_none(),
            "a tick is due: the bench would run backups"
        );
        if let Some(next) = cron.next_after(at) {
            earliest = Some(earliest.map_or(next, |e| e.min(next)));
        }
    }
    (seen, earliest)
}

/// Times `n` pass copies; the median and the mean, in ms.
fn time_passes(hub: &Hub, n: usize) -> (f64, f64, usize, Option<time::OffsetDateTime>) {
    let mut parsed = HashMap::new();
    let first = pass_copy(hub, &mut parsed);
    let mut ms: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(pass_copy(hub, &mut parsed));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
    (percentile(&ms, 50.0), mean, first.0, first.1)
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `GET /api/v1/protection-flows` `warmup + n` times; the timed ones' latencies in ms, sorted.
async fn list_latency(b: &Bench, warmup: usize, n: usize) -> Vec<f64> {
    let mut ms = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = Instant::now();
        let (status, body) = b.call(Method::GET, "/api/v1/protection-flows", None).await;
        let elapsed = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["total"], FLOWS, "the list has every flow");
        if i >= warmup {
            ms.push(elapsed);
        }
    }
    ms.sort_by(f64::total_cmp);
    ms
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// No flow may have run: a run would start backups and the figures would not be idle ones.
async fn assert_nothing_ran(b: &Bench) {
    let (_, body) = b.call(Method::GET, "/api/v1/protection-flows", None).await;
    let ran = body["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .filter(|f| f["status"]["total_executions"] != 0)
        .count();
    assert_eq!(ran, 0, "flows ran during the bench");
}

async fn run(args: Args) {
    let idle = Duration::from_secs(args.idle_secs);
    let settle = Duration::from_secs(3);
    println!("load average at start: {}", load_average());

    let empty = Bench::start().await;
    tokio::time::sleep(settle).await;
    let baseline = idle_cpu(idle).await;
    empty.stop().await;

    let b = Bench::start().await;
    let t = Instant::now();
    b.populate().await;
    println!(
        "populated: {VMS} VMs, {GROUPS} groups, {GROUPS} scheduled flows, {FLOWS} flows in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(settle).await;
    let loaded = idle_cpu(idle).await;
    let (pass_median, pass_mean, scheduled, next) = time_passes(&b.inproc.hub, args.passes);
    let list = list_latency(&b, args.warmup, args.requests).await;
    assert_nothing_ran(&b).await;
    b.stop().await;

    let next = next.map_or("none".into(), |t| t.to_string());
    println!("scheduled flows seen by a pass: {scheduled}; next tick: {next}");
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| idle CPU, hub with 0 flows ({} s) | {baseline:.3} % of a core | |",
        args.idle_secs
    );
    println!(
        "| idle CPU, hub with {FLOWS} flows, {GROUPS} scheduled ({} s) | {loaded:.3} % of a core | |",
        args.idle_secs
    );
    println!(
        "| idle CPU, difference | {:.3} % of a core | < 1 % |",
        loaded - baseline
    );
    println!(
        "| scheduler pass (copy), median / mean of {} | {pass_median:.3} / {pass_mean:.3} ms | |",
        args.passes
    );
    println!(
        "| scheduler pass at 1/s | {:.3} % of a core | < 1 % |",
        pass_mean / 10.0
    );
    println!(
        "| GET /protection-flows ({FLOWS} flows), p50 / p99 / max of {} | {:.2} / {:.2} / {:.2} ms | p99 < 50 ms |",
        list.len(),
        percentile(&list, 50.0),
        percentile(&list, 99.0),
        list.last().copied().unwrap_or(f64::NAN)
    );
    println!();
    println!("load average at end: {}", load_average());
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args));
}
