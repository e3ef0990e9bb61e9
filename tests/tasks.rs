//! The task API against the real engine: concurrency beyond a pool's size, every refusal
//! with its status and code, timeouts that retire their container, background children,
//! `on_exhausted`, `max_uses`, and `docker-exec` pools.

mod common;
mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use support::*;

/// Sends a task from a task of its own, so the test can go on while it runs. Answers the
/// status, the `Retry-After` header and the body.
fn spawn_task(
    d: &Daemon,
    pool: &str,
    body: Value,
) -> tokio::task::JoinHandle<(u16, Option<u64>, Value)> {
    let client = warmpool::client::Client::new(&d.addr, None);
    let path = format!("/v1/pools/{pool}/tasks");
    tokio::spawn(async move {
        let (status, headers, bytes) =
            send(&client, "POST", &path, Some(body.to_string().into_bytes())).await;
        (status, retry_after(&headers), as_json(&bytes))
    })
}

/// Waits until every container of the pool is idle (a finished task's workdir reset keeps
/// its container busy for a moment after the answer).
async fn wait_idle(d: &Daemon, pool: &str) {
    wait_pool(
        d,
        pool,
        "its containers to be idle",
        Duration::from_secs(10),
        |v| v["busy"] == 0 && v["idle"].as_u64() > Some(0),
    )
    .await;
}

#[tokio::test]
async fn twenty_concurrent_tasks_on_a_pool_of_two_all_finish_with_their_output() {
    let d = Daemon::start(
        r#"
[pools.pair]
image = "warmpool/agent:latest"
min = 1
warm = 2
max = 2
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(30)).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| spawn_task(&d, "pair", json!({"shell": format!("sleep 0.1; echo {i}")})))
        .collect();
    let mut used = HashSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, _, v) = t.await.unwrap();
        assert_eq!(status, 200, "task {i}: {v}");
        assert_eq!(v["stdout"], format!("{i}\n"), "task {i}: {v}");
        assert_eq!(v["exit_code"], 0);
        used.insert(v["container"].as_str().unwrap().to_string());
    }
    assert!(used.len() <= 2, "more containers than max: {used:?}");
    let all = containers(&d.instance, Some("pair"));
    assert!(
        all.len() <= 2,
        "more containers than max on the engine: {all:?}"
    );
    let v = pool_status(&d, "pair").await;
    assert_eq!(v["queue_length"], 0, "{v}");
}

#[tokio::test]
async fn refusals_have_their_status_code_and_retry_after() {
    let d = Daemon::start(
        r#"
[server]
max_request_body = "1KiB"

[pools.one]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1
max_queue = 1
acquire_timeout = "1s"
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(30)).await;

    // Unknown pool: 404, on the task route and the status route.
    let (status, v) = d.task("nosuch", json!({"cmd": ["true"]})).await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["code"], "unknown_pool", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nosuch"));
    let (status, v) = d.get("/v1/pools/nosuch").await.unwrap();
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("unknown_pool")),
        "{v}"
    );

    // Malformed JSON, and JSON of the wrong shape: 400.
    let (status, v) = d
        .post_raw("/v1/pools/one/tasks", b"{\"cmd\": [".to_vec())
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_json", "{v}");
    let (status, v) = d.task("one", json!({"cmd": "echo hi"})).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("invalid_json")),
        "{v}"
    );
    let (status, v) = d
        .task("one", json!({"cmd": ["true"], "tiemout": "1s"}))
        .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("invalid_json")),
        "an unknown field is refused: {v}"
    );
    let (status, v) = d.task("one", json!({})).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("invalid_request")),
        "{v}"
    );
    assert!(v["error"]["message"].is_string(), "{v}");

    // Oversize body: 413 past max_request_body; just under it still runs.
    let (status, v) = d
        .task(
            "one",
            json!({"shell": format!("echo {}", "x".repeat(2000))}),
        )
        .await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"]["code"], "body_too_large", "{v}");
    let (status, v) = d
        .task("one", json!({"shell": format!("echo {}", "x".repeat(900))}))
        .await;
    assert_eq!(status, 200, "{v}");

    // Full queue: one running, one queued (max_queue = 1), the third refused at once.
    // The container stays busy a moment after a task answers (its workdir is wiped), so
    // wait for it to be idle: from then on "busy" means the task below has it.
    wait_idle(&d, "one").await;
    let running = spawn_task(&d, "one", json!({"cmd": ["sleep", "4"]}));
    wait_pool(
        &d,
        "one",
        "the first task to run",
        Duration::from_secs(10),
        |v| v["busy"] == 1,
    )
    .await;
    let queued = spawn_task(&d, "one", json!({"cmd": ["true"]}));
    let queued_at = Instant::now();
    wait_pool(
        &d,
        "one",
        "the second task to queue",
        Duration::from_secs(10),
        |v| v["queue_length"] == 1,
    )
    .await;
    let t = Instant::now();
    let (status, headers, v) = task_with_headers(&d, "one", json!({"cmd": ["true"]})).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["code"], "queue_full", "{v}");
    assert!(retry_after(&headers).is_some_and(|s| s >= 1), "{headers:?}");
    // At once: a task that queued would get 503 after acquire_timeout, not 429; the bound
    // is far above the few milliseconds a refusal takes, for a loaded machine.
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "429 must come at once, not after {:?}",
        t.elapsed()
    );

    // The queued one gets no container within acquire_timeout (1s): 503 with Retry-After.
    let (status, after, v) = queued.await.unwrap();
    let waited = queued_at.elapsed();
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "no_container", "{v}");
    assert!(after.is_some_and(|s| s >= 1), "503 without Retry-After");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "answered after {waited:?}, acquire_timeout is 1s"
    );
    let (status, _, v) = running.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["exit_code"], 0);
}

#[tokio::test]
async fn a_timed_out_task_answers_quickly_and_its_container_is_not_reused() {
    let d = Daemon::start(
        r#"
[defaults]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2

[pools.shim]

[pools.exec]
exec = "docker-exec"
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(30)).await;
    for pool in ["shim", "exec"] {
        let t = Instant::now();
        let (status, v) = d
            .task(pool, json!({"cmd": ["sleep", "60"], "timeout": "1s"}))
            .await;
        let took = t.elapsed();
        assert_eq!(status, 200, "{pool}: {v}");
        assert_eq!(v["timed_out"], true, "{pool}: {v}");
        // 10x the expected 1 s: a loaded 2-core machine must not fail it.
        assert!(
            took < Duration::from_secs(10),
            "{pool}: a 1s timeout answered after {took:?}"
        );
        // docs/api.md: `timed_out: true`, `signal: 9`, and no exit code.
        assert_eq!(v["exit_code"], Value::Null, "{pool}: {v}");
        assert_eq!(v["signal"], 9, "{pool}: {v}");
        // The short id the API reports: the container may be gone already.
        let old = v["container"].as_str().unwrap().to_string();
        wait_for(
            &format!("{pool}: the timed-out container to be removed"),
            Duration::from_secs(10),
            || (!exists(&old)).then_some(()),
        )
        .await;
        let (status, v) = d.task(pool, json!({"cmd": ["echo", "next"]})).await;
        assert_eq!(status, 200, "{pool}: {v}");
        assert_eq!(v["stdout"], "next\n");
        assert_ne!(
            v["container"].as_str().unwrap(),
            old,
            "{pool}: the timed-out container was reused"
        );
    }
}

#[tokio::test]
async fn a_background_child_does_not_hold_the_answer() {
    let d = Daemon::start(
        r#"
[defaults]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1

[pools.shim]

[pools.exec]
exec = "docker-exec"
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(30)).await;
    for pool in ["shim", "exec"] {
        let t = Instant::now();
        let (status, v) = d
            .task(
                pool,
                json!({"cmd": ["sh", "-c", "sleep 30 &"], "timeout": "60s"}),
            )
            .await;
        let took = t.elapsed();
        assert_eq!(status, 200, "{pool}: {v}");
        assert_eq!(v["exit_code"], 0, "{pool}: {v}");
        assert_eq!(v["timed_out"], false, "{pool}: {v}");
        // Well under the 30 s of the sleep; a docker exec alone can take most of a second
        // on a loaded engine.
        let bound = Duration::from_secs(if pool == "shim" { 2 } else { 3 });
        assert!(took < bound, "{pool}: answered after {took:?}");
    }
    // The shim ends what the task left in its process group, so the next task of the same
    // container does not find it.
    let (status, v) = d.task("shim", json!({"cmd": ["ps", "-o", "args"]})).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        !v["stdout"].as_str().unwrap().contains("sleep 30"),
        "the background sleep outlived its task: {v}"
    );
}

#[tokio::test]
async fn on_exhausted_fail_refuses_at_once_and_cold_starts_beyond_max() {
    let d = Daemon::start(
        r#"
[defaults]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1

[pools.failing]
on_exhausted = "fail"

[pools.cold]
on_exhausted = "cold"
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(30)).await;

    let busy = spawn_task(&d, "failing", json!({"cmd": ["sleep", "3"]}));
    wait_pool(
        &d,
        "failing",
        "its one container busy",
        Duration::from_secs(10),
        |v| v["busy"] == 1,
    )
    .await;
    let t = Instant::now();
    let (status, headers, v) = task_with_headers(&d, "failing", json!({"cmd": ["true"]})).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "pool_exhausted", "{v}");
    assert!(retry_after(&headers).is_some(), "{headers:?}");
    // Waiting would take acquire_timeout (30 s by default).
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "fail must not wait: {:?}",
        t.elapsed()
    );
    busy.abort();

    let warm = full_id(&d.instance, &{
        let (status, v) = d.task("cold", json!({"cmd": ["true"]})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["cold_start"], false, "a warm hit: {v}");
        v["container"].as_str().unwrap().to_string()
    });
    wait_idle(&d, "cold").await;
    let busy = spawn_task(&d, "cold", json!({"cmd": ["sleep", "5"]}));
    wait_pool(
        &d,
        "cold",
        "its one container busy",
        Duration::from_secs(10),
        |v| v["busy"] == 1,
    )
    .await;
    let (status, v) = d.task("cold", json!({"cmd": ["echo", "beyond"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "beyond\n");
    assert_eq!(v["cold_start"], true, "{v}");
    let extra = v["container"].as_str().unwrap().to_string();
    assert_ne!(
        extra,
        short(&warm),
        "ran beside the busy container, not in it"
    );
    // The extra container served its one task and goes; the pool is back at max.
    wait_for("the extra container to go", Duration::from_secs(10), || {
        (!exists(&extra)).then_some(())
    })
    .await;
    assert!(is_running(&warm));
    let (status, _, v) = busy.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        metric(
            &d,
            "warmpool_acquisitions_total",
            &[("pool", "cold"), ("result", "cold")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn max_uses_one_gives_every_task_a_fresh_container() {
    let d = Daemon::start(
        r#"
[pools.fresh]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
max_uses = 1
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(30)).await;
    let mut seen = Vec::new();
    for i in 0..3 {
        let (status, v) = d
            .task("fresh", json!({"shell": "touch /tmp/mark; ls /tmp"}))
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["stdout"], "mark\n",
            "task {i} found another task's files: {v}"
        );
        let id = v["container"].as_str().unwrap().to_string();
        assert!(!seen.contains(&id), "task {i} reused {id}");
        seen.push(id);
    }
    for id in &seen {
        wait_for("a used-up container to go", Duration::from_secs(10), || {
            (!exists(id)).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn docker_exec_pools_run_tasks() {
    let d = Daemon::start(
        r#"
[pools.exec]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1
exec = "docker-exec"
env = { POOL_VAR = "from-pool" }
max_output = "1MiB"
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(30)).await;
    let c = inspect(&containers(&d.instance, Some("exec"))[0]);
    assert_ne!(
        c["Config"]["Entrypoint"],
        json!(["/.warmpool/shim"]),
        "a docker-exec pool does not need the shim"
    );

    let (status, v) = d
        .task(
            "exec",
            json!({"shell": "echo out; echo err >&2; echo $POOL_VAR $TASK_VAR; pwd; exit 3",
                   "env": {"TASK_VAR": "from-task"}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["exit_code"], 3, "{v}");
    assert_eq!(v["stdout"], "out\nfrom-pool from-task\n/work\n", "{v}");
    assert_eq!(v["stderr"], "err\n", "{v}");
    let first = v["container"].clone();

    let (status, v) = d
        .task("exec", json!({"cmd": ["cat"], "stdin": "to stdin\n"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "to stdin\n", "{v}");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(
        v["container"], first,
        "a finished task leaves its container in the pool"
    );

    // Output past max_output is drained (or `head` would block and time out) and dropped.
    let (status, v) = d
        .task(
            "exec",
            json!({"shell": "yes | head -c 20000000", "timeout": "30s"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["exit_code"], 0, "{}", v["exit_code"]);
    assert_eq!(v["stdout_truncated"], true);
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1024 * 1024);
}

#[tokio::test]
async fn a_docker_exec_container_killed_under_its_task_is_not_handed_out_again() {
    let d = Daemon::start(
        r#"
[pools.exec]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1
exec = "docker-exec"
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(30)).await;
    let victim = containers(&d.instance, Some("exec")).remove(0);
    let task = spawn_task(&d, "exec", json!({"cmd": ["sleep", "30"]}));
    // The exec runs once `sleep 30` shows in the container.
    wait_for("the task's process", Duration::from_secs(10), || {
        let (_, out) = docker_exec(&victim, &["ps", "-o", "args"]);
        out.lines().any(|l| l == "sleep 30").then_some(())
    })
    .await;
    docker(&["kill", &victim]);
    let (status, _, v) = task.await.unwrap();
    assert_eq!(status, 502, "{v}\n{}", d.log());
    assert_eq!(v["error"]["code"], "container_failed", "{v}");
    // The next task gets a live container, not the dead one.
    let (status, v) = d.task("exec", json!({"cmd": ["echo", "next"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "next\n");
    assert_ne!(v["container"].as_str().unwrap(), short(&victim));
}

/// A task's `workdir` is where it runs; without one the pool's `workdir`; a relative one is
/// refused naming the field.
#[tokio::test]
async fn a_task_workdir_is_where_it_runs() {
    let d = Daemon::start(
        r#"
[pools.w]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1
workdir = "/job"
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(60)).await;
    let (status, v) = d.task("w", json!({"shell": "pwd"})).await;
    assert_eq!((status, &v["stdout"]), (200, &json!("/job\n")), "{v}");
    let (status, v) = d
        .task("w", json!({"shell": "pwd", "workdir": "/tmp"}))
        .await;
    assert_eq!((status, &v["stdout"]), (200, &json!("/tmp\n")), "{v}");
    let (status, v) = d.task("w", json!({"shell": "pwd", "workdir": "tmp"})).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("invalid_request")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("workdir"),
        "{v}"
    );
}
