//! The command line next to a running service and in a shell: nothing deletes or rewrites a
//! data directory another process holds, commands answer through a running service instead of
//! waiting for it, output into a closed pipe ends quietly, and flags take readable units.

mod common;

use common::http::Server;
use common::{ndjson, run, small_events, stderr, stdout, TempDir};

fn log_events(server: &Server) -> u64 {
    let r = server.client().get("/v1/status").expect("status");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["log"]["events"].as_u64().expect("log.events")
}

fn post_acked(server: &Server, key: &str, n: u64) {
    let r = server.client().post("/v1/events", &[("Idempotency-Key", key)], &ndjson(&small_events(1, n))).expect("post");
    assert_eq!(r.status, 200, "{}", r.text());
}

// `demo --fresh` next to a running `serve` on the same directory: refused with exit code 5
// naming the holder's PID and command, and the acknowledged data is still there.
#[test]
fn demo_fresh_refuses_a_directory_a_service_holds() {
    let tmp = TempDir::new("cli-fresh");
    let server = Server::start(tmp.path(), &[]);
    post_acked(&server, "k1", 500);
    let o = run(tmp.path(), &["--wait", "1s", "demo", "--fresh", "--history", "100", "--seconds", "1", "--listen", "127.0.0.1:0"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(5), "demo --fresh was not refused:\n{err}");
    assert!(err.contains(&format!("process {}", server.child.id())), "the holder's PID is not named:\n{err}");
    assert!(err.contains("serve"), "the holder's command is not named:\n{err}");
    assert!(tmp.join("log").join("MANIFEST").exists(), "the data directory was deleted");
    assert_eq!(log_events(&server), 500);
    drop(server);
    // After the service is gone the directory is the demo's to reset; the record the service
    // left is not taken for a holder.
    let o = run(tmp.path(), &["--wait", "0", "demo", "--fresh", "--history", "100", "--seconds", "1", "--listen", "127.0.0.1:0"]);
    assert!(o.status.success(), "demo --fresh after the service stopped failed:\n{}", stderr(&o));
    assert!(stdout(&o).contains("appended 100 historical events"), "{}", stdout(&o));
}
