//! Helpers the engine tests share on top of `tests/common` (the daemon harness): raw HTTP
//! with headers, container lookups by the short id the API reports, the daemon's memory.
#![allow(dead_code)]

use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{as_json, containers, docker, docker_try, Daemon};

/// An image holding nothing at all: the daemon bind-mounts the shim at `/.warmpool/shim`
/// and mounts tmpfs on /tmp and the workdir, so an empty root is all a shim pool needs.
pub const SCRATCH_IMAGE: &str = "warmpool/engine-scratch:test";

pub fn ensure_scratch_image() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if docker_try(&["image", "inspect", SCRATCH_IMAGE]).is_some() {
            return;
        }
        let empty_tar = tempfile::NamedTempFile::new().unwrap();
        let status = Command::new("tar")
            .args(["-cf"])
            .arg(empty_tar.path())
            .args(["--files-from", "/dev/null"])
            .status()
            .expect("run tar");
        assert!(status.success(), "tar of an empty root failed");
        docker(&[
            "import",
            &empty_tar.path().display().to_string(),
            SCRATCH_IMAGE,
        ]);
    });
}

/// A POST of a task that also returns the response headers.
pub async fn task_with_headers(
    d: &Daemon,
    pool: &str,
    body: Value,
) -> (u16, hyper::HeaderMap, Value) {
    let (status, headers, bytes) = d
        .request(
            "POST",
            &format!("/v1/pools/{pool}/tasks"),
            Some(body.to_string().into_bytes()),
        )
        .await;
    (status, headers, as_json(&bytes))
}

/// The `Retry-After` header as seconds, if present.
pub fn retry_after(headers: &hyper::HeaderMap) -> Option<u64> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The full id of this instance's container whose id starts with `short` (the API reports
/// 12 characters).
pub fn full_id(instance: &str, short: &str) -> String {
    assert!(short.len() >= 12, "short container id {short:?}");
    let all = containers(instance, None);
    let matches: Vec<&String> = all.iter().filter(|id| id.starts_with(short)).collect();
    assert_eq!(
        matches.len(),
        1,
        "container {short} among this instance's {all:?}"
    );
    matches[0].clone()
}

/// The 12-character id the API reports for a full container id.
pub fn short(full: &str) -> String {
    full.chars().take(12).collect()
}

/// Whether the engine still knows the container (any state); `id` may be the 12-character
/// id the API reports.
pub fn exists(id: &str) -> bool {
    docker_try(&["inspect", "--type", "container", "--format", "{{.Id}}", id]).is_some()
}

/// Whether the container exists and its main process runs.
pub fn is_running(id: &str) -> bool {
    docker_try(&["inspect", "--format", "{{.State.Running}}", id])
        .is_some_and(|s| s.trim() == "true")
}

/// Running containers of one pool of this instance.
pub fn running(instance: &str, pool: &str) -> Vec<String> {
    containers(instance, Some(pool))
        .into_iter()
        .filter(|id| is_running(id))
        .collect()
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// `GET /v1/pools/{pool}`.
pub async fn pool_status(d: &Daemon, pool: &str) -> Value {
    let (status, v) = d.get(&format!("/v1/pools/{pool}")).await.unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

/// Polls the pool's status until `check` holds, or panics after `timeout`.
pub async fn wait_pool(
    d: &Daemon,
    pool: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, v) = d.get(&format!("/v1/pools/{pool}")).await.unwrap();
        // 503 `starting`: the daemon is still building its pools.
        let starting = status == 503 && v["error"]["code"] == "starting";
        assert!(status == 200 || starting, "{status} {v}");
        if !starting && check(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; pool {pool} is {v}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/metrics` until `check` holds on it.
pub async fn wait_metrics(d: &Daemon, what: &str, timeout: Duration, check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = metrics(d).await;
        if check(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `/metrics` until the series `name{labels}` is at least `at_least`.
pub async fn wait_metric_at_least(
    d: &Daemon,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
    timeout: Duration,
) {
    wait_metrics(
        d,
        &format!("{name}{labels:?} >= {at_least}"),
        timeout,
        |m| metric_in(m, name, labels) >= at_least,
    )
    .await;
}

/// The text of `/metrics`.
pub async fn metrics(d: &Daemon) -> String {
    d.get_text("/metrics").await
}

/// Sum of the samples of metric `name` in a `/metrics` text whose labels include every
/// `labels` pair (in any order), 0 when there is none.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// [`metric_in`] of the daemon's `/metrics` now.
pub async fn metric(d: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_in(&metrics(d).await, name, labels)
}

/// `docker exec` in a container; returns the exit code and stdout.
pub fn docker_exec(id: &str, argv: &[&str]) -> (i32, String) {
    let out = Command::new("docker")
        .arg("exec")
        .arg(id)
        .args(argv)
        .output()
        .expect("run docker exec");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
