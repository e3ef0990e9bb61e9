//! Hygiene between tenants (issue 11) against the real engine: nothing a task started
//! outlives it in a container, in pools and in sessions; a container whose leftovers
//! cannot be ended is replaced, not reused.

mod common;
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use support::*;

const LONG: Duration = Duration::from_secs(60);

/// A loop that leaves the task's process group and session and writes into the workdir.
const SPY: &str =
    "setsid sh -c 'while :; do date >> /work/spy.log; sleep 0.2; done' </dev/null >/dev/null 2>&1 &";

/// Counts the lines of /work/spy.log twice, a second apart: "before after".
const SPY_GROWTH: &str = "a=$(cat /work/spy.log 2>/dev/null | wc -l); sleep 1; \
                          b=$(cat /work/spy.log 2>/dev/null | wc -l); echo $a $b";

/// A shim pool of exactly one container, so the next task gets the same container.
fn one(name: &str) -> String {
    format!(
        r#"
[pools.{name}]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1
"#
    )
}

/// `docker top`'s command lines for a container.
fn processes(full: &str) -> Vec<String> {
    docker(&["top", full, "-eo", "pid,args"])
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Asserts that the shim is the container's only process.
fn only_the_shim(full: &str) {
    let procs = processes(full);
    assert!(
        procs.len() == 1 && procs[0].contains("/.warmpool/shim"),
        "processes left in {full}: {procs:#?}"
    );
}

fn growth(v: &Value) -> (u64, u64) {
    let out = v["stdout"].as_str().unwrap_or_default();
    let mut n = out.split_whitespace().map(|x| x.parse::<u64>().unwrap());
    (n.next().unwrap(), n.next().unwrap())
}

#[tokio::test]
async fn a_setsid_loop_does_not_outlive_its_task_into_the_next_tenants() {
    let d = Daemon::start(&one("spy")).await;
    d.wait_ready(LONG).await;

    // As reported, and with the task still running once the loop has left its group (so the
    // loop is surely out of the group's reach when the task ends).
    for spy in [SPY.to_string(), format!("{SPY} sleep 1")] {
        let (status, v) = d.task("spy", json!({"shell": spy})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["exit_code"], 0, "{v}");
        let container = v["container"].as_str().unwrap().to_string();
        let full = full_id(&d.instance, &container);
        // Reported finished only once the loop is gone.
        only_the_shim(&full);

        let (status, v) = d.task("spy", json!({"shell": SPY_GROWTH})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["container"],
            container.as_str(),
            "the same container: {v}"
        );
        let (before, after) = growth(&v);
        assert_eq!(before, after, "{spy:?}: the spy log still grows: {v}");
        only_the_shim(&full);
    }
}

#[tokio::test]
async fn a_timed_out_session_task_leaves_no_process_behind() {
    let d = Daemon::start(&one("st")).await;
    d.wait_ready(LONG).await;
    let id = format!("{}-spy", d.instance);
    let (status, v) = d
        .post_raw(
            "/v1/sessions",
            json!({"pool": "st", "id": id}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 201, "{v}");

    // A writer that left the group, and the task's own process still running at its timeout.
    let started = Instant::now();
    let (status, v) = d
        .task(
            "st",
            json!({"shell": format!("{SPY} sleep 30"), "session": id, "timeout": "1s"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["timed_out"], true, "{v}");
    // Held by the spy, the answer would come after the 30 s sleep.
    assert!(started.elapsed() < Duration::from_secs(15), "{v}");
    let full = full_id(&d.instance, v["container"].as_str().unwrap());
    only_the_shim(&full);

    // The session's files stay (no wipe in a session), but nothing writes to them any more.
    let (status, v) = d
        .task("st", json!({"shell": SPY_GROWTH, "session": id}))
        .await;
    assert_eq!(status, 200, "{v}");
    let (before, after) = growth(&v);
    assert!(before > 0, "the spy ran before the timeout: {v}");
    assert_eq!(before, after, "the spy log still grows: {v}");
    only_the_shim(&full);
}

#[tokio::test]
async fn a_container_with_a_process_the_shim_cannot_end_is_replaced() {
    let d = Daemon::start(&one("stuck")).await;
    d.wait_ready(LONG).await;
    let (status, v) = d.task("stuck", json!({"cmd": ["true"]})).await;
    assert_eq!(status, 200, "{v}");
    let first = v["container"].as_str().unwrap().to_string();
    let full = full_id(&d.instance, &first);

    // A root process in the container: the shim runs as user 1000 without capabilities,
    // so it cannot kill it.
    let mut intruder = Command::new("docker")
        .args(["exec", "-u", "0", &full, "sleep", "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the root sleep to run", LONG, || {
        processes(&full)
            .iter()
            .any(|p| p.contains("sleep 120"))
            .then_some(())
    })
    .await;

    // The task itself is answered as usual...
    let (status, v) = d.task("stuck", json!({"cmd": ["echo", "after"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "after\n", "{v}");
    assert_eq!(v["container"], first.as_str(), "{v}");

    // ... but the container is not reused: the next task runs in a new one.
    let deadline = Instant::now() + LONG;
    let next = loop {
        let (status, v) = d.task("stuck", json!({"cmd": ["echo", "next"]})).await;
        if status == 200 && v["stdout"] == "next\n" {
            break v["container"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no task ran after the retirement: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(
        next, first,
        "the container with the stuck process was reused"
    );
    wait_for("the old container to go", LONG, || {
        (!is_running(&full)).then_some(())
    })
    .await;
    let _ = intruder.kill();
    let _ = intruder.wait();
}
