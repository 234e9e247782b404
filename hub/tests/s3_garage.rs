//! Copies on a real distributed store: a three-node Garage cluster on loopback (replication
//! factor 3) behind the `sendense-hub` binary at its defaults. A wrong secret is refused at
//! creation; a chain of a full and two incrementals is copied and read back, the local backups
//! are deleted, and every point is restored from the bucket through NBD; a node killed while a
//! copy uploads leaves the copy to complete and verify on the other two, and the bucket restores
//! with that node still down.

mod common;

use common::chain::{self, wait_job};
use common::copies;
use common::garage::Cluster;
use common::*;
use serde_json::{Value, json};

fn call(api: &str, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    http(method, api, path, Some(token), body)
}

#[test]
fn copies_survive_a_node_of_three_and_restore_from_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cluster) = Cluster::start(dir.path()) else {
        return;
    };
    let data = dir.path().join("data");
    let (_hub, api, _nbd) = start_hub(&data);
    let token = read_token(&data);

    // Garage checks signatures: a wrong secret is a 400 at creation, saying so.
    let wrong = cluster.repository("garage", "0000000000000000000000000000000000000000");
    let r = call(&api, &token, "POST", "/api/v1/repositories", Some(&wrong));
    assert_eq!(r.0, 400, "{}", r.1);
    let right = cluster.repository("garage", &cluster.secret.clone());
    let created = ok(call(
        &api,
        &token,
        "POST",
        "/api/v1/repositories",
        Some(&right),
    ));
    assert_eq!(created["repository"]["type"], "s3", "{created}");

    let c = chain::build(&api, &token, "vm1", dir.path(), 2, 40 << 20);
    let top = c.ids.last().unwrap().clone();
    let body = json!({"repository_id": "garage"});
    copies::copied(&api, &token, &top, &body);
    for id in &c.ids {
        let copies = ok(call(
            &api,
            &token,
            "GET",
            &format!("/api/v1/backups/{id}/copies"),
            None,
        ));
        assert_eq!(copies[0]["status"], "completed", "{copies}");
        assert_eq!(copies[0]["verification_status"], "passed", "{copies}");
    }
    for id in c.ids.iter().rev() {
        let gone = call(
            &api,
            &token,
            "DELETE",
            &format!("/api/v1/backups/{id}"),
            None,
        );
        assert!(gone.0 == 200 || gone.0 == 204, "{}", gone.1);
    }
    for (i, id) in c.ids.iter().enumerate() {
        let bytes = chain::restore_bytes_from(&api, &token, id, dir.path(), Some("garage"));
        assert!(bytes == c.points[i], "point {i} from Garage differs");
    }

    // A node of the three killed while a 128 MiB full uploads (through node 0): the other two
    // are a quorum, so the copy completes and reads back.
    let big = chain::build(&api, &token, "vm2", dir.path(), 0, 128 << 20);
    let id = big.ids[0].clone();
    let r = call(
        &api,
        &token,
        "POST",
        &format!("/api/v1/backups/{id}/copy"),
        Some(&body),
    );
    assert_eq!(r.0, 201, "{}", r.1);
    let job_id = r.1["job_id"].as_str().unwrap().to_owned();
    let killed = copies::when_sending(&api, &token, &job_id);
    if killed {
        cluster.kill(2);
    }
    assert!(killed, "the copy ended before a node could be killed");
    let job = wait_job(&api, &token, &job_id);
    assert_eq!(job["status"], "succeeded", "{job}");
    let copies = ok(call(
        &api,
        &token,
        "GET",
        &format!("/api/v1/backups/{id}/copies"),
        None,
    ));
    assert_eq!(copies[0]["verification_status"], "passed", "{copies}");
    let bytes = chain::restore_bytes_from(&api, &token, &id, dir.path(), Some("garage"));
    assert!(
        bytes == big.points[0],
        "the disk from Garage with a node down differs"
    );

    // The node back: the repository still tests fine.
    cluster.restart(2);
    let t = ok(call(
        &api,
        &token,
        "POST",
        "/api/v1/repositories/garage/test",
        None,
    ));
    assert_eq!(t["success"], true, "{t}");
    assert!(files_containing(&data, cluster.secret.as_bytes()).is_empty());
}
