#!/usr/bin/python3
"""A stand-in for the Sendense node appliance (SNA), for hub/tests/sendense_flow.rs.

It answers the two SNA routes the hub calls and, for a started backup, copies source files into the
hub's NBD targets the way the Sendense backup client does:
- per disk, in the order of `nbd_targets`: GET /api/v1/backups/changeid with disk_id=0 *before*
  connecting, two libnbd connections to the export, the same query again with the index read from
  the export name (`disk(\\d+)$`); both answers decoded as a map of strings (any other value fails);
- a non-empty change id: only the changed extents it is told (the CBT answer); an empty one: the
  whole disk; writes of at most 32 MiB, all-zero chunks as WRITE_ZEROES, no FLUSH;
- POST /api/v1/backups/{id}/complete for the disk before its connections close; telemetry as it goes,
  and a failure report (`status: "failed"`, `error: {message}`) when it fails or is told to.

The test writes a JSON config file and may rewrite it between backups; it is read per request:
  hub_url, password, inventory, sources {key: path}, changed {key: [[offset, length], ...]},
  expect_change_id {key: id}, new_change_ids {key: id},
  mode (ok | status500 | hang | client_fail | echo_password), hang_secs,
  refuse_vms [names whose start is refused as status500 refuses every start],
  generate_vms (optional: discover answers that many generated VMs instead of inventory),
  log (JSON lines of what was asked), errors (what went wrong, for the test to show).
echo_password: discover and backup/start answer 500 with a JSON body that echoes the password
received, JSON-escaped both ways (`\\uXXXX` as json.dumps does by default, and UTF-8 as most other
encoders do), the way a careless SNA quotes the request in its error.
Run with /usr/bin/python3 (libnbd's module is installed for it): --config FILE --port-file FILE.
"""

import argparse
import json
import os
import re
import sys
import threading
import time
import traceback
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import nbd

CHUNK = 32 << 20
CONFIG = None


def config():
    with open(CONFIG) as f:
        return json.load(f)


def append(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def hub_call(cfg, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(cfg["hub_url"] + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read()


def change_id(cfg, vm_name, disk_id):
    q = urllib.parse.urlencode({"vm_name": vm_name, "disk_id": disk_id})
    status, raw = hub_call(cfg, "GET", "/api/v1/backups/changeid?" + q)
    if status != 200:
        raise RuntimeError(f"changeid answered {status}")
    answer = json.loads(raw)
    # The client decodes into a Go map[string]string.
    if not isinstance(answer, dict) or not all(isinstance(v, str) for v in answer.values()):
        raise RuntimeError(f"changeid answer is not a map of strings: {answer}")
    return answer


def telemetry(cfg, job_id, body):
    body = dict(body, job_id=job_id, job_type="backup", timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ"))
    hub_call(cfg, "POST", f"/api/v1/telemetry/backup/{job_id}", body)


def copy_extents(handles, src, extents):
    """Split the extents into writes of at most 32 MiB and share them between the connections."""
    pieces = []
    for offset, length in extents:
        end = offset + length
        while offset < end:
            n = min(CHUNK, end - offset)
            pieces.append((offset, n))
            offset += n
    errors = []

    def worker(h, mine):
        try:
            with open(src, "rb") as f:
                for offset, n in mine:
                    f.seek(offset)
                    buf = f.read(n)
                    if len(buf) != n:
                        raise RuntimeError(f"short read of {src} at {offset}")
                    if buf.count(0) == n:
                        h.zero(n, offset)
                    else:
                        h.pwrite(buf, offset)
        except Exception as e:  # reported by the caller
            errors.append(e)

    threads = [
        threading.Thread(target=worker, args=(h, pieces[i :: len(handles)]))
        for i, h in enumerate(handles)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(n for _, n in pieces)


def run_backup(job, cfg):
    job_id = job["job_id"]
    # The client takes the VM name from the last part of the VM path.
    vm_name = job["vm_path"].rstrip("/").split("/")[-1]
    targets = [pair.split(":", 1) for pair in job["nbd_targets"].split(",")]
    total = 0
    try:
        telemetry(cfg, job_id, {"status": "running", "current_phase": "snapshot", "progress_percent": 0})
        for n, (key, uri) in enumerate(targets):
            src = cfg["sources"][key]
            before = change_id(cfg, vm_name, 0)
            handles = []
            for _ in range(2):
                h = nbd.NBD()
                h.connect_uri(uri)
                handles.append(h)
            export = urllib.parse.urlparse(uri).path.lstrip("/")
            m = re.search(r"disk(\d+)$", export)
            index = int(m.group(1)) if m else 0
            after = change_id(cfg, vm_name, index)
            if before["change_id"] != after["change_id"]:
                raise RuntimeError(f"disk {key}: change id before connecting {before} differs from after {after}")
            cid = after["change_id"]
            size = handles[0].get_size()
            if cid:
                want = cfg.get("expect_change_id", {}).get(key)
                if want is not None and cid != want:
                    raise RuntimeError(f"disk {key}: told change id {cid!r}, expected {want!r}")
                extents = cfg["changed"][key]
            else:
                extents = [[0, size]]
            if cfg.get("mode") == "client_fail":
                copy_extents(handles[:1], src, [[0, min(size, 1 << 20)]])
                raise RuntimeError("vCenter removed the snapshot during the copy")
            total += copy_extents(handles, src, extents)
            status, raw = hub_call(
                cfg,
                "POST",
                f"/api/v1/backups/{job_id}/complete",
                {"change_id": cfg["new_change_ids"][key], "disk_id": index, "bytes_transferred": 0},
            )
            if status != 200:
                raise RuntimeError(f"complete answered {status}: {raw!r}")
            for h in handles:
                h.shutdown()
            telemetry(
                cfg,
                job_id,
                {
                    "status": "running",
                    "current_phase": "transferring",
                    "bytes_transferred": total,
                    "progress_percent": 100.0 * (n + 1) / len(targets),
                    "disks": [{"disk_index": index, "status": "completed", "bytes_transferred": total}],
                },
            )
        telemetry(cfg, job_id, {"status": "completed", "current_phase": "finalizing", "bytes_transferred": total,
                                "progress_percent": 100.0})
    except Exception as e:
        if cfg.get("mode") != "client_fail":
            append(cfg["errors"], {"job_id": job_id, "error": traceback.format_exc()})
        try:
            telemetry(cfg, job_id, {"status": "failed", "error": {"message": str(e)}})
        except Exception:
            append(cfg["errors"], {"job_id": job_id, "error": traceback.format_exc()})


def generated_inventory(n):
    """An inventory of n small VMs (gen-<i>, one 1 MiB disk each), built in one string: a test of
    a large vCenter needs no config file of that size."""
    vm = (
        '{{"id":"vm-{i}","name":"gen-{i}","path":"/DC1/vm/gen-{i}","power_state":"poweredOn",'
        '"disks":[{{"id":"disk-2000","capacity_bytes":1048576,"datastore":"ds1"}}]}}'
    )
    vms = ",".join(vm.format(i=i) for i in range(n))
    return ('{"vcenter":{"host":"vc.example","datacenter":"DC1"},"vms":[' + vms + "]}").encode()


class Handler(BaseHTTPRequestHandler):
    def answer(self, status, body):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "text/plain")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self):
        cfg = config()
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            body = json.loads(raw)
        except ValueError:
            return self.answer(400, b"Invalid request: not JSON")
        secret_field = "password" if self.path == "/api/v1/discover" else "vcenter_password"
        shown = {k: v for k, v in body.items() if k != secret_field}
        shown["password_ok"] = body.get(secret_field) == cfg["password"]
        append(cfg["log"], {"path": self.path, "body": shown})
        if cfg.get("mode") == "echo_password":
            received = str(body.get(secret_field))
            echo = json.dumps(received)[1:-1]
            return self.answer(
                500,
                f'{{"error": "vCenter login failed for password \\"{echo}\\"", '
                f'"request": {{"password": {json.dumps(received, ensure_ascii=False)}}}}}'.encode(),
            )
        if self.path == "/api/v1/discover":
            if not shown["password_ok"]:
                return self.answer(500, b"Discovery failed: login refused")
            if cfg.get("generate_vms"):
                return self.answer(200, generated_inventory(cfg["generate_vms"]))
            return self.answer(200, cfg["inventory"])
        if self.path != "/api/v1/backup/start":
            return self.answer(404, b"404 page not found")
        mode = cfg.get("mode", "ok")
        if mode == "status500" or body.get("vm_name") in cfg.get("refuse_vms", []):
            return self.answer(500, b"Process start failed: sendense-backup-client binary not found")
        if mode == "hang":
            time.sleep(cfg.get("hang_secs", 5))
            return self.answer(200, {"job_id": body.get("job_id"), "status": "started"})
        # The SNA's own checks.
        for field in ["job_id", "vm_name", "vcenter_host", "vcenter_user", "vcenter_password", "vm_path", "nbd_targets"]:
            if not body.get(field):
                return self.answer(400, f"Validation failed: {field} is required".encode())
        if body.get("backup_type") not in ("full", "incremental"):
            return self.answer(400, b"Validation failed: backup_type must be 'full' or 'incremental'")
        if body["backup_type"] == "incremental" and not body.get("previous_change_id"):
            return self.answer(400, b"Validation failed: previous_change_id is required for incremental backups")
        if not shown["password_ok"]:
            return self.answer(400, b"Validation failed: vCenter login refused")
        threading.Thread(target=run_backup, args=(body, cfg), daemon=True).start()
        self.answer(
            200,
            {
                "job_id": body["job_id"],
                "status": "started",
                "message": f"Backup started for {body['vm_name']}",
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "pid": os.getpid(),
            },
        )

    def log_message(self, fmt, *args):
        pass


def main():
    global CONFIG
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--port-file", required=True)
    args = p.parse_args()
    CONFIG = args.config
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
