//! Pool lifecycle against the real engine (issue 4), with short intervals: dead and removed
//! containers are replaced, a burst grows the pool to max and the quiet shrinks it back,
//! refresh by uses and by age, idle timeout, lazy pools, an engine outage through a proxy the
//! test cuts and restores, and the reaper.
//!
//! Deadlines are generous (the machine is shared and loaded); nothing asserts on speed.
//! Run with `cargo test --test lifecycle -- --test-threads=1`.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use support::*;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::AbortHandle;
use warmpool::client::Client;

const LONG: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------
// Helpers

/// Containers the pool retired are removed by the pool, never found again by the reaper as
/// orphans (which would count them twice).
fn assert_no_orphans(m: &str, pool: &str) {
    assert_eq!(
        metric_in(
            m,
            "warmpool_containers_removed_total",
            &[("pool", pool), ("reason", "orphan")]
        ),
        0.0,
        "containers of pool {pool} were reaped as orphans"
    );
}

/// Containers of this daemon's pool, any state, via `docker ps -a` off the async threads.
async fn ps(instance: &str, pool: &str) -> Vec<String> {
    let (i, p) = (instance.to_string(), pool.to_string());
    tokio::task::spawn_blocking(move || containers(&i, Some(&p)))
        .await
        .unwrap()
}

/// Polls `docker ps` until `check` holds on the pool's container ids.
async fn wait_ps(
    d: &Daemon,
    pool: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let ids = ps(&d.instance, pool).await;
        if check(&ids) {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; docker ps has {ids:?}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A task's `container` names one of `ids` (full ids, or a prefix of one).
fn same_container(a: &str, b: &str) -> bool {
    !a.is_empty() && !b.is_empty() && (a.starts_with(b) || b.starts_with(a))
}

/// The daemon id from the log line "listening ... daemon=<id>" (colours stripped).
fn daemon_id(log: &str) -> String {
    let plain = strip_ansi(log);
    plain
        .lines()
        .filter(|l| l.contains("listening"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("daemon="))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no \"listening ... daemon=\" line in the log:\n{plain}"))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// An engine proxy the test can cut and restore.

/// Listens on a unix socket and forwards every connection to the real engine socket, both
/// ways. `cut` stops accepting and drops every live connection (the long-lived attach streams
/// included); `restore` listens again on the same path.
struct EngineProxy {
    path: PathBuf,
    upstream: PathBuf,
    state: Arc<parking_lot::Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    accept: Option<AbortHandle>,
    conns: Vec<AbortHandle>,
}

impl EngineProxy {
    fn start(path: &Path) -> EngineProxy {
        let upstream = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
        let p = EngineProxy {
            path: path.to_path_buf(),
            upstream,
            state: Default::default(),
        };
        p.restore();
        p
    }

    fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn restore(&self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).expect("bind the proxy socket");
        let state = self.state.clone();
        let upstream = self.upstream.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut engine) = UnixStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
                let mut st = state.lock();
                st.conns.retain(|c| !c.is_finished());
                st.conns.push(conn.abort_handle());
            }
        });
        self.state.lock().accept = Some(accept.abort_handle());
    }

    fn cut(&self) {
        let mut st = self.state.lock();
        if let Some(a) = st.accept.take() {
            a.abort();
        }
        for c in st.conns.drain(..) {
            c.abort();
        }
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_idle_container_is_replaced_within_one_interval() {
    let d = Daemon::start(
        r#"
[pools.kill]
image = "warmpool/agent:latest"
min = 2
warm = 2
max = 3
health_check_interval = "2s"
"#,
    )
    .await;
    d.wait_ready(LONG).await;
    let before = wait_ps(&d, "kill", "two warm containers", LONG, |ids| {
        ids.len() == 2
    })
    .await;
    let victim = before[0].clone();
    docker(&["kill", &victim]);
    let killed = Instant::now();

    let after = wait_ps(
        &d,
        "kill",
        "the killed container replaced",
        LONG,
        |ids: &[String]| ids.len() == 2 && !ids.contains(&victim),
    )
    .await;
    assert!(after.contains(&before[1]), "the healthy one was kept");
    wait_pool(&d, "kill", "back at min, all idle", LONG, |v| {
        v["live"] == 2 && v["idle"] == 2
    })
    .await;
    eprintln!("killed container replaced in {:?}", killed.elapsed());
    let m = metrics(&d).await;
    assert_no_orphans(&m, "kill");
    assert!(
        metric_in(
            &m,
            "warmpool_containers_removed_total",
            &[("pool", "kill"), ("reason", "unhealthy")]
        ) >= 1.0
    );
    let (status, v) = d.task("kill", json!({"shell": "echo ok"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_container_removed_fails_its_task_clearly_and_the_pool_heals() {
    // max = 1: the one container is the busy one, and nothing else starts beside it.
    let d = Daemon::start(
        r#"
[pools.busy]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1
health_check_interval = "2s"
"#,
    )
    .await;
    d.wait_ready(LONG).await;
    let before = wait_ps(&d, "busy", "one warm container", LONG, |ids| ids.len() == 1).await;

    let client = Client::new(&d.addr, None);
    let task =
        tokio::spawn(
            async move { run_task(&client, "busy", json!({"cmd": ["sleep", "120"]})).await },
        );
    wait_pool(&d, "busy", "the task running", LONG, |v| v["busy"] == 1).await;
    docker(&["rm", "-f", &before[0]]);

    // Well before the sleep would end: the task learns at once that its container is gone.
    let (status, v) = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the task answers when its container disappears")
        .unwrap();
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], "container_failed", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("being replaced"), "{message}");

    let after = wait_ps(&d, "busy", "a replacement", LONG, |ids: &[String]| {
        ids.len() == 1 && ids[0] != before[0]
    })
    .await;
    wait_pool(&d, "busy", "back at min", LONG, |v| {
        v["live"] == 1 && v["idle"] == 1
    })
    .await;
    let (status, v) = d.task("busy", json!({"shell": "echo healed"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "healed\n");
    assert!(same_container(v["container"].as_str().unwrap(), &after[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_40_grows_the_pool_to_max_and_the_quiet_shrinks_it_to_min() {
    // scale_interval 250ms: the stabilization window is 12 looks, 3 s. The thresholds alone
    // (predictive = false): the forecast would hold the burst's containers for its
    // forecast_window, which the policy tests (src/scaling.rs, src/simulate) cover.
    let d = Daemon::start(
        r#"
[pools.burst]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 6
predictive = false
scale_interval = "250ms"
acquire_timeout = "180s"
"#,
    )
    .await;
    d.wait_ready(LONG).await;
    wait_pool(&d, "burst", "at min", LONG, |v| v["live"] == 1).await;

    let done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let done = done.clone();
        let client = Client::new(&d.addr, None);
        let instance = d.instance.clone();
        tokio::spawn(async move {
            let (mut max_live, mut max_target, mut max_ps) = (0u64, 0u64, 0usize);
            let mut last_ps = Instant::now() - Duration::from_secs(1);
            while !done.load(Ordering::Acquire) {
                let (_, _, body) = send(&client, "GET", "/v1/pools/burst", None).await;
                let v: Value = serde_json::from_slice(&body).unwrap();
                max_live = max_live.max(v["live"].as_u64().unwrap());
                max_target = max_target.max(v["target"].as_u64().unwrap());
                if last_ps.elapsed() >= Duration::from_millis(300) {
                    max_ps = max_ps.max(ps(&instance, "burst").await.len());
                    last_ps = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (max_live, max_target, max_ps)
        })
    };

    let client = Arc::new(Client::new(&d.addr, None));
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(
                async move { run_task(&client, "burst", json!({"cmd": ["sleep", "1"]})).await },
            )
        })
        .collect();
    let mut containers_used = std::collections::HashSet::new();
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["exit_code"], 0, "{v}");
        containers_used.insert(v["container"].as_str().unwrap().to_string());
    }
    done.store(true, Ordering::Release);
    let (max_live, max_target, max_ps) = monitor.await.unwrap();
    assert_eq!(max_target, 6, "the target grew to max and not beyond");
    assert_eq!(max_live, 6, "live containers reached max and not beyond");
    // The API bounds live containers; the engine may briefly list one more (a failed start
    // being cleaned up), so docker ps is only asked to have reached max.
    assert!(max_ps >= 6, "docker ps saw at most {max_ps} containers");
    assert_eq!(
        containers_used.len(),
        6,
        "the 40 tasks ran on the 6 containers"
    );

    // Quiet: after the window the pool goes back to min, in the API and on the engine.
    wait_pool(&d, "burst", "back at min", LONG, |v| {
        v["live"] == 1 && v["target"] == 1
    })
    .await;
    wait_ps(
        &d,
        "burst",
        "one container left",
        LONG,
        |ids: &[String]| ids.len() == 1,
    )
    .await;
    let m = metrics(&d).await;
    assert_no_orphans(&m, "burst");
    let up = metric_in(
        &m,
        "warmpool_scale_events_total",
        &[("pool", "burst"), ("direction", "up")],
    );
    let down = metric_in(
        &m,
        "warmpool_scale_events_total",
        &[("pool", "burst"), ("direction", "down")],
    );
    assert!(up > 0.0 && down > 0.0, "scale events up {up}, down {down}");
    assert!(
        metric_in(
            &m,
            "warmpool_containers_removed_total",
            &[("pool", "burst"), ("reason", "scale_down")]
        ) >= 5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_uses_one_gives_every_task_a_fresh_container() {
    let d = Daemon::start(
        r#"
[pools.once]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
max_uses = 1
acquire_timeout = "120s"
# The thresholds alone: the forecast would keep 2 for its window after 10 quick tasks.
predictive = false
"#,
    )
    .await;
    d.wait_ready(LONG).await;
    let mut used = Vec::new();
    for i in 0..10 {
        let (status, v) = d.task("once", json!({"shell": format!("echo {i}")})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["stdout"], format!("{i}\n"));
        used.push(v["container"].as_str().unwrap().to_string());
    }
    let distinct: std::collections::HashSet<_> = used.iter().collect();
    assert_eq!(
        distinct.len(),
        10,
        "every task had a container of its own: {used:?}"
    );
    wait_ps(&d, "once", "every used container removed", LONG, |ids| {
        !ids.iter()
            .any(|id| used.iter().any(|u| same_container(u, id)))
    })
    .await;
    wait_pool(&d, "once", "back at min with a fresh one", LONG, |v| {
        v["live"] == 1 && v["idle"] == 1
    })
    .await;
    let m = metrics(&d).await;
    assert_no_orphans(&m, "once");
    assert!(
        metric_in(
            &m,
            "warmpool_containers_removed_total",
            &[("pool", "once"), ("reason", "uses")]
        ) >= 10.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_renews_every_container_under_steady_load_without_a_failed_task() {
    let mut d = Daemon::start(
        r#"
[pools.aging]
image = "warmpool/agent:latest"
min = 2
warm = 2
max = 4
max_age = "4s"
health_check_interval = "1s"
acquire_timeout = "120s"
"#,
    )
    .await;
    d.wait_ready(LONG).await;
    let originals = wait_ps(&d, "aging", "two warm containers", LONG, |ids| {
        ids.len() == 2
    })
    .await;
    let started = Instant::now();

    // Two clients submitting tasks back to back until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let client = Client::new(&d.addr, None);
            tokio::spawn(async move {
                let (mut ok, mut failed, mut seen) =
                    (0usize, Vec::new(), std::collections::HashSet::new());
                while !stop.load(Ordering::Acquire) {
                    let (status, v) =
                        run_task(&client, "aging", json!({"shell": "sleep 0.1; echo ok"})).await;
                    if status == 200 && v["exit_code"] == 0 && v["stdout"] == "ok\n" {
                        ok += 1;
                        seen.insert(v["container"].as_str().unwrap().to_string());
                    } else {
                        failed.push(format!("{status} {v}"));
                    }
                }
                (ok, failed, seen)
            })
        })
        .collect();

    // Load for at least 12 s (three generations), and until every original is gone.
    wait_ps(
        &d,
        "aging",
        "every original container renewed",
        LONG * 2,
        |ids| {
            started.elapsed() >= Duration::from_secs(12)
                && !ids.iter().any(|id| originals.contains(id))
        },
    )
    .await;
    stop.store(true, Ordering::Release);
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    for l in load {
        let (ok, failed, s) = l.await.unwrap();
        assert!(failed.is_empty(), "tasks failed during renewal: {failed:?}");
        total += ok;
        seen.extend(s);
    }
    assert!(total > 0);
    assert!(
        seen.len() > originals.len(),
        "tasks ran on renewed containers too: {seen:?}"
    );
    let m = metrics(&d).await;
    assert_no_orphans(&m, "aging");
    assert!(
        metric_in(
            &m,
            "warmpool_containers_removed_total",
            &[("pool", "aging"), ("reason", "age")]
        ) > 0.0
    );
    assert_eq!(
        metric_in(
            &m,
            "warmpool_tasks_total",
            &[("pool", "aging"), ("outcome", "error")]
        ),
        0.0
    );
    eprintln!(
        "{total} tasks over {:?}, {} containers",
        started.elapsed(),
        seen.len()
    );
    // Stopped while renewal is under way (starts may be in flight), nothing is left behind.
    assert!(d.stop().success(), "{}", d.log());
    let left = ps(&d.instance, "aging").await;
    assert!(
        left.is_empty(),
        "left after shutdown: {left:?}\n{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_containers_above_min_go_after_idle_timeout_and_min_stays() {
    // A scale_interval of an hour: the autoscaler never gets to shrink the pool first.
    let d = Daemon::start(
        r#"
[pools.idle]
image = "warmpool/agent:latest"
min = 1
warm = 3
max = 4
idle_timeout = "2s"
scale_interval = "1h"
health_check_interval = "500ms"
"#,
    )
    .await;
    d.wait_ready(LONG).await;
    wait_metrics(&d, "three warm containers created", LONG, |m| {
        metric_in(m, "warmpool_containers_created_total", &[("pool", "idle")]) >= 3.0
    })
    .await;
    wait_pool(&d, "idle", "down to min", LONG, |v| v["live"] == 1).await;
    let left = wait_ps(&d, "idle", "one container on the engine", LONG, |ids| {
        ids.len() == 1
    })
    .await;
    // Several idle timeouts later the last one is still there: min is kept.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let v = pool_status(&d, "idle").await;
    assert_eq!(
        (v["live"].as_u64(), v["target"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert_eq!(
        ps(&d.instance, "idle").await,
        left,
        "the min container stays"
    );
    let m = metrics(&d).await;
    assert_no_orphans(&m, "idle");
    let removed = |reason| {
        metric_in(
            &m,
            "warmpool_containers_removed_total",
            &[("pool", "idle"), ("reason", reason)],
        )
    };
    assert!(removed("idle") >= 2.0);
    assert_eq!(removed("scale_down"), 0.0);
    // Each idle removal lowers the target by one, which counts as a step down.
    assert_eq!(
        metric_in(
            &m,
            "warmpool_scale_events_total",
            &[("pool", "idle"), ("direction", "down")]
        ),
        removed("idle")
    );
    let (status, v) = d.task("idle", json!({"shell": "echo ok"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["cold_start"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_pool_starts_empty_and_its_first_task_starts_a_container() {
    // max = 1 so the autoscaler cannot add a second container between the two tasks.
    let d = Daemon::start(
        r#"
[pools.lazy]
image = "warmpool/agent:latest"
min = 0
warm = 0
max = 1
"#,
    )
    .await;
    d.wait_ready(LONG).await;
    let v = pool_status(&d, "lazy").await;
    assert_eq!(v["live"], 0, "{v}");
    assert!(
        ps(&d.instance, "lazy").await.is_empty(),
        "no container at start"
    );

    let (status, first) = d.task("lazy", json!({"shell": "echo one"})).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["stdout"], "one\n");
    assert_eq!(first["cold_start"], true, "{first}");
    let (status, second) = d.task("lazy", json!({"shell": "echo two"})).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["cold_start"], false, "{second}");
    assert_eq!(first["container"], second["container"]);
    let ids = ps(&d.instance, "lazy").await;
    assert_eq!(ids.len(), 1);
    assert!(same_container(
        first["container"].as_str().unwrap(),
        &ids[0]
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_outage_is_reported_and_the_pools_rebuild_by_themselves() {
    let sock_dir = tempfile::tempdir().unwrap();
    let proxy = EngineProxy::start(&sock_dir.path().join("engine.sock"));
    let url = proxy.url();
    let d = Daemon::start_with(
        r#"
[pools.out]
image = "warmpool/agent:latest"
min = 2
warm = 2
max = 3
health_check_interval = "1s"
acquire_timeout = "5s"
# The attach streams run through the engine (here through the proxy that the test cuts);
# a direct shim socket would keep serving through the outage, which is not what this tests.
exec_transport = "attach"
"#,
        &[("DOCKER_HOST", &url)],
    )
    .await;
    d.wait_ready(LONG).await;
    let (status, v) = d.task("out", json!({"shell": "echo before"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        metric_in(&metrics(&d).await, "warmpool_engine_up", &[]),
        1.0
    );

    proxy.cut();
    wait_metrics(&d, "warmpool_engine_up 0", LONG, |m| {
        metric_in(m, "warmpool_engine_up", &[]) == 0.0
    })
    .await;
    let (status, v) = d.get("/readyz").await.unwrap();
    assert_eq!(
        (status, &v["error"]["code"]),
        (503, &json!("not_ready")),
        "{v}"
    );
    // Every attach stream was cut with the proxy: the containers are lost to the daemon.
    wait_pool(&d, "out", "no idle container left", LONG, |v| {
        v["idle"] == 0
    })
    .await;
    let (status, headers, v) = task_with_headers(&d, "out", json!({"shell": "echo during"})).await;
    assert_eq!(status, 503, "{headers:?}\n{v}");
    let code = v["error"]["code"].as_str().unwrap_or_default();
    assert!(
        code == "engine_unavailable" || code == "no_container",
        "{v}"
    );
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    eprintln!("during the outage: {v}");

    proxy.restore();
    let restored = Instant::now();
    d.wait_ready(LONG * 2).await;
    eprintln!(
        "ready again {:?} after the engine came back",
        restored.elapsed()
    );
    wait_metrics(&d, "warmpool_engine_up 1", LONG, |m| {
        metric_in(m, "warmpool_engine_up", &[]) == 1.0
    })
    .await;
    let (status, v) = d.task("out", json!({"shell": "echo after"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "after\n");
    // The containers lost in the outage are removed (by the reaper), nothing leaks.
    wait_ps(
        &d,
        "out",
        "back to the pool's own containers",
        LONG,
        |ids| ids.len() == 2,
    )
    .await;
    drop(d);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_removes_containers_of_this_daemon_that_no_pool_knows() {
    let d = Daemon::start(
        r#"
[pools.reap]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
health_check_interval = "2s"
"#,
    )
    .await;
    d.wait_ready(LONG).await;
    let own = wait_ps(&d, "reap", "the warm container", LONG, |ids| ids.len() == 1).await;
    let daemon = daemon_id(&d.log());
    let labels = [
        "warmpool.managed=true".to_string(),
        format!("warmpool.instance={}", d.instance),
        "warmpool.pool=reap".to_string(),
        format!("warmpool.daemon={daemon}"),
    ];
    let mut args = vec!["create".to_string()];
    for l in &labels {
        args.push("--label".into());
        args.push(l.clone());
    }
    args.extend([IMAGE.to_string(), "/bin/true".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stray = docker(&args).trim().to_string();
    // The reaper may already have taken it (it looks every 2 s): then inspect finds nothing.
    if let Some(found) = docker_try(&["inspect", "--format", "{{.State.Status}}", &stray]) {
        assert_eq!(found.trim(), "created");
    }
    let made = Instant::now();

    wait_ps(&d, "reap", "the stray container reaped", LONG, |ids| {
        !ids.contains(&stray)
    })
    .await;
    eprintln!("stray container reaped in {:?}", made.elapsed());
    assert!(
        ps(&d.instance, "reap").await.contains(&own[0]),
        "the pool's own stays"
    );
    let m = metrics(&d).await;
    assert!(
        metric_in(
            &m,
            "warmpool_containers_removed_total",
            &[("pool", "reap"), ("reason", "orphan")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_before_the_engine_waits_for_it_then_serves() {
    let sock_dir = tempfile::tempdir().unwrap();
    let path = sock_dir.path().join("engine.sock");
    let proxy = EngineProxy::start(&path);
    // No engine at all at start: not even a socket file.
    proxy.cut();
    std::fs::remove_file(&path).unwrap();
    let d = Daemon::start_with(
        r#"
[pools.late]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
"#,
        &[("DOCKER_HOST", &proxy.url())],
    )
    .await;
    // Alive, not ready, and a task is told to come back rather than that the pool is unknown.
    let (status, v) = d.get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{v}");
    let (status, v) = d.task("late", json!({"cmd": ["true"]})).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "starting", "{v}");
    // So is every other request naming the pool: its status, a prewarm, a session.
    let (status, v) = d.get("/v1/pools/late").await.unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("starting")),
        "{v}"
    );
    let (status, v) = d
        .post_raw(
            "/v1/pools/late/prewarm",
            br#"{"containers": 1, "for": "1m"}"#.to_vec(),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("starting")),
        "{v}"
    );
    let (status, v) = d
        .post_raw("/v1/sessions", br#"{"pool": "late"}"#.to_vec())
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("starting")),
        "{v}"
    );
    assert!(containers(&d.instance, None).is_empty());

    proxy.restore();
    d.wait_ready(LONG).await;
    let (status, v) = d.task("late", json!({"shell": "echo served"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "served\n");
    assert_eq!(
        metric_in(&metrics(&d).await, "warmpool_engine_up", &[]),
        1.0
    );
}
