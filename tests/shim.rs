//! The in-container shim on the real engine: completion by the process's exit, output caps
//! by draining, binary-safe output and input, per-task env, exit codes and signals, killing a
//! timed-out task's whole group, running in an image holding nothing but itself, and a
//! container whose shim dies.

mod common;
mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use support::*;

const MIB: u64 = 1024 * 1024;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One busybox shim pool of one container.
fn one_pool(name: &str, extra: &str) -> String {
    format!(
        r#"
[pools.{name}]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1
{extra}
"#
    )
}

/// Output as bytes, decoding base64 where the answer says so.
fn bytes_of(v: &Value, stream: &str) -> Vec<u8> {
    let text = v[stream]
        .as_str()
        .unwrap_or_else(|| panic!("{stream} in {v}"));
    if v[format!("{stream}_encoding")] == "base64" {
        B64.decode(text).unwrap()
    } else {
        text.as_bytes().to_vec()
    }
}

#[tokio::test]
async fn a_background_child_holding_stdout_does_not_hang_the_task() {
    let d = Daemon::start(&one_pool("bg", "")).await;
    d.wait_ready(Duration::from_secs(30)).await;
    // The first child stays in the task's group; the second leaves it (setsid) and so
    // outlives the task, its end of stdout still open.
    for shell in [
        "(sleep 30; echo late) & echo now",
        "setsid sh -c 'sleep 30; echo late' & echo now",
    ] {
        let t = Instant::now();
        let (status, v) = d
            .task("bg", json!({"shell": shell, "timeout": "60s"}))
            .await;
        assert_eq!(status, 200, "{v}");
        // Held, the answer would come after the child's 30 s.
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{shell:?} answered after {:?}",
            t.elapsed()
        );
        assert_eq!(v["stdout"], "now\n", "{v}");
        assert_eq!(v["exit_code"], 0, "{v}");
        assert_eq!(v["timed_out"], false, "{v}");
    }
    // The container still serves.
    let (status, v) = d.task("bg", json!({"cmd": ["echo", "ok"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "ok\n");
}

#[tokio::test]
async fn output_past_max_output_is_drained_flagged_and_does_not_grow_the_daemon() {
    let d = Daemon::start(&one_pool("yes", "max_output = \"1MiB\"")).await;
    d.wait_ready(Duration::from_secs(30)).await;
    // Warm the daemon's allocator and buffers with one capped answer first.
    let (status, v) = d
        .task("yes", json!({"shell": "yes | head -c 3000000"}))
        .await;
    assert_eq!(status, 200, "{v}");
    let before = rss_kib(d.pid());

    // 200 MiB on stdout and 50 MiB on stderr: only the cap of each may reach the daemon, and
    // the writers must be drained, or `head` would block and the task time out.
    let t = Instant::now();
    let (status, v) = d
        .task(
            "yes",
            json!({"shell": "yes | head -c 209715200; yes err | head -c 52428800 >&2",
                   "timeout": "60s"}),
        )
        .await;
    let took = t.elapsed();
    assert_eq!(
        status,
        200,
        "{}",
        &v.to_string()[..300.min(v.to_string().len())]
    );
    assert_eq!(v["exit_code"], 0, "took {took:?}");
    assert_eq!(v["timed_out"], false);
    assert_eq!(v["stdout_truncated"], true);
    assert_eq!(v["stderr_truncated"], true);
    let out = bytes_of(&v, "stdout");
    let err = bytes_of(&v, "stderr");
    assert_eq!(out.len() as u64, MIB, "stdout capped at max_output");
    assert_eq!(err.len() as u64, MIB, "stderr capped at max_output");
    assert!(out.starts_with(b"y\ny\n") && err.starts_with(b"err\n"));
    let after = rss_kib(d.pid());
    assert!(
        after < before + 64 * 1024,
        "daemon RSS grew from {before} KiB to {after} KiB on 250 MiB of output"
    );

    // Under the cap nothing is flagged.
    let (status, v) = d
        .task("yes", json!({"shell": "yes | head -c 1048576"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        v["stdout_truncated"], false,
        "exactly max_output is not truncated"
    );
    assert_eq!(bytes_of(&v, "stdout").len() as u64, MIB);
}

#[tokio::test]
async fn binary_output_comes_back_base64_and_stdin_reaches_the_task() {
    let d = Daemon::start(&one_pool("io", "")).await;
    d.wait_ready(Duration::from_secs(30)).await;

    let (status, v) = d
        .task(
            "io",
            json!({"shell": r"printf '\377\376abc\n'; printf '\200' >&2; printf 'plain' >&2"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout_encoding"], "base64", "{v}");
    assert_eq!(
        B64.decode(v["stdout"].as_str().unwrap()).unwrap(),
        b"\xff\xfeabc\n"
    );
    assert_eq!(v["stderr_encoding"], "base64", "{v}");
    assert_eq!(bytes_of(&v, "stderr"), b"\x80plain");
    let (status, v) = d.task("io", json!({"cmd": ["echo", "utf-8 é"]})).await;
    assert_eq!(status, 200);
    assert_eq!(v["stdout"], "utf-8 é\n");
    assert!(v.get("stdout_encoding").is_none(), "{v}");

    let (status, v) = d
        .task(
            "io",
            json!({"cmd": ["cat"], "stdin": "line one\nline two\n"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "line one\nline two\n");

    let every_byte: Vec<u8> = (0..=255u8).collect();
    let (status, v) = d
        .task(
            "io",
            json!({"cmd": ["cat"], "stdin_base64": B64.encode(&every_byte)}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(bytes_of(&v, "stdout"), every_byte);

    // More than a pipe holds, to a task that reads it all, and to one that reads none.
    let big = "a".repeat(300_000);
    let (status, v) = d
        .task("io", json!({"cmd": ["wc", "-c"], "stdin": big}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"].as_str().unwrap().trim(), "300000");
    let t = Instant::now();
    let (status, v) = d
        .task(
            "io",
            json!({"cmd": ["true"], "stdin": big, "timeout": "60s"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["timed_out"], false, "{v}");
    // A stdin writer stuck on the exited task would hold the answer until the 60 s timeout.
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[tokio::test]
async fn per_task_env_applies_in_the_same_warm_container() {
    let d = Daemon::start(&one_pool("envy", "env = { POOL_VAR = \"from-pool\" }")).await;
    d.wait_ready(Duration::from_secs(30)).await;
    let created = metric(&d, "warmpool_containers_created_total", &[("pool", "envy")]).await;
    let script = "echo \"$TASK_VAR|$POOL_VAR\"";
    let mut used = Vec::new();
    for (env, want) in [
        (json!({"TASK_VAR": "one"}), "one|from-pool\n"),
        (
            json!({"TASK_VAR": "two", "POOL_VAR": "overridden"}),
            "two|overridden\n",
        ),
        (json!({}), "|from-pool\n"),
    ] {
        let (status, v) = d.task("envy", json!({"shell": script, "env": env})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["stdout"], want, "env {env}: {v}");
        assert_eq!(v["cold_start"], false, "{v}");
        used.push(v["container"].as_str().unwrap().to_string());
    }
    assert!(used.iter().all(|c| *c == used[0]), "containers {used:?}");
    assert_eq!(
        metric(&d, "warmpool_containers_created_total", &[("pool", "envy")]).await,
        created,
        "per-task env must not create containers"
    );
}

#[tokio::test]
async fn exit_codes_and_signals_are_reported() {
    let d = Daemon::start(&one_pool("codes", "")).await;
    d.wait_ready(Duration::from_secs(30)).await;
    for (shell, code, signal) in [
        ("exit 0", json!(0), Value::Null),
        ("exit 7", json!(7), Value::Null),
        ("exit 255", json!(255), Value::Null),
        ("kill -9 $$", Value::Null, json!(9)),
        ("kill -TERM $$", Value::Null, json!(15)),
        ("kill -INT $$; sleep 5", Value::Null, json!(2)),
    ] {
        let (status, v) = d
            .task("codes", json!({"shell": shell, "timeout": "10s"}))
            .await;
        assert_eq!(status, 200, "{shell}: {v}");
        assert_eq!(v["exit_code"], code, "{shell}: {v}");
        assert_eq!(v["signal"], signal, "{shell}: {v}");
        assert_eq!(v["timed_out"], false, "{shell}: {v}");
    }
    // A command that does not exist: a clear error, not an exit code.
    let (status, v) = d.task("codes", json!({"cmd": ["/no/such/program"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["exit_code"], Value::Null, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("/no/such/program")),
        "{v}"
    );
}

/// Whether a host process runs under the given name (`comm`), zombies counting as dead.
fn alive(pid: u32, comm: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "PID (comm) STATE ..."
        let after = stat.split_once(") ").map(|(_, rest)| rest).unwrap_or("");
        stat.contains(&format!("({comm})")) && !after.starts_with('Z')
    })
}

#[tokio::test]
async fn a_timeout_kills_the_grandchildren_too() {
    let d = Daemon::start(&one_pool("grand", "")).await;
    d.wait_ready(Duration::from_secs(30)).await;
    let id = containers(&d.instance, Some("grand")).remove(0);
    let shim_pid: u32 = docker(&["inspect", "--format", "{{.State.Pid}}", &id])
        .trim()
        .parse()
        .unwrap();
    assert!(alive(shim_pid, "shim"), "the container's PID 1 is the shim");
    // The task's shell starts a shell that starts `sleep 4242`: a grandchild.
    let task = {
        let client = warmpool::client::Client::new(&d.addr, None);
        tokio::spawn(async move {
            run_task(
                &client,
                "grand",
                json!({"shell": "sh -c 'sleep 4242; echo never' & wait", "timeout": "2s"}),
            )
            .await
        })
    };
    // `ps` of the container (docker top), with the host's pids.
    let grandchild: u32 = wait_for("the grandchild sleep", Duration::from_secs(10), || {
        docker(&["top", &id, "-o", "pid,args"])
            .lines()
            .find(|l| l.trim_end().ends_with("sleep 4242"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
    })
    .await;
    // Watched from the host, 1 ms apart: the grandchild must die while the container's shim
    // still lives. Were it left to the container's removal after the timeout, both would go
    // at once.
    let watcher = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            match (alive(grandchild, "sleep"), alive(shim_pid, "shim")) {
                (true, true) => std::thread::sleep(Duration::from_millis(1)),
                (false, true) => return "killed by the timeout",
                (_, false) => return "still there when the container went",
            }
        }
        "still running 15 s later"
    });
    let (status, v) = task.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["timed_out"], true, "{v}");
    assert_eq!(watcher.await.unwrap(), "killed by the timeout");
}

#[tokio::test]
async fn the_shim_runs_in_an_image_holding_nothing_but_itself() {
    ensure_scratch_image();
    let d = Daemon::start(&format!(
        r#"
[pools.bare]
image = "{SCRATCH_IMAGE}"
min = 1
warm = 1
max = 1
health_check_interval = "1s"
"#
    ))
    .await;
    d.wait_ready(Duration::from_secs(30)).await;
    let id = containers(&d.instance, Some("bare")).remove(0);
    assert_eq!(
        image_name(inspect(&id)["Config"]["Image"].as_str().unwrap()),
        SCRATCH_IMAGE
    );

    // No shell in there: a clean error for the missing command, and the container stays.
    let (status, v) = d.task("bare", json!({"shell": "echo hi"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["exit_code"], Value::Null, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("/bin/sh")),
        "{v}"
    );

    // The one program that is there is the shim itself: run as a task, it greets on stdout
    // and exits 0 at the end of its (empty) stdin.
    let (status, v) = d.task("bare", json!({"cmd": ["/.warmpool/shim"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["exit_code"], 0, "{v}");
    assert!(!bytes_of(&v, "stdout").is_empty(), "no greeting: {v}");
    assert_eq!(full_id(&d.instance, v["container"].as_str().unwrap()), id);

    // Health checks (the shim's ping) pass and keep the same container.
    wait_for_metric(
        &d,
        "warmpool_health_checks_total",
        &[("pool", "bare"), ("result", "healthy")],
        2.0,
    )
    .await;
    assert_eq!(
        metric(
            &d,
            "warmpool_health_checks_total",
            &[("pool", "bare"), ("result", "unhealthy")]
        )
        .await,
        0.0
    );
    assert_eq!(containers(&d.instance, Some("bare")), [id]);
}

async fn wait_for_metric(d: &Daemon, name: &str, labels: &[(&str, &str)], at_least: f64) {
    wait_metric_at_least(d, name, labels, at_least, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn a_container_whose_shim_dies_is_noticed_and_replaced() {
    let d = Daemon::start(&one_pool(
        "fragile",
        "health_check_interval = \"1s\"\nscale_interval = \"1s\"",
    ))
    .await;
    d.wait_ready(Duration::from_secs(30)).await;

    // Killed while busy: the task answers at once with a clear error.
    let busy = containers(&d.instance, Some("fragile")).remove(0);
    let task = {
        let client = warmpool::client::Client::new(&d.addr, None);
        tokio::spawn(async move {
            let body = json!({"cmd": ["sleep", "30"], "timeout": "60s"});
            run_task(&client, "fragile", body).await
        })
    };
    wait_pool(
        &d,
        "fragile",
        "the task to run",
        Duration::from_secs(10),
        |v| v["busy"] == 1,
    )
    .await;
    let t = Instant::now();
    docker(&["kill", &busy]);
    let (status, v) = task.await.unwrap();
    // Unnoticed, the task would answer at its 30 s end or 60 s timeout.
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], "container_failed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("replaced")),
        "{v}"
    );
    let second = replaced(&d, &busy).await;

    // Killed while idle: the pool notices on its own, before any task finds it.
    docker(&["kill", &second]);
    let third = replaced(&d, &second).await;
    let (status, v) = d.task("fragile", json!({"cmd": ["echo", "alive"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "alive\n");
    assert_eq!(
        full_id(&d.instance, v["container"].as_str().unwrap()),
        third
    );
}

/// Waits until `old` is removed and another container of the pool runs; returns that one.
async fn replaced(d: &Daemon, old: &str) -> String {
    let instance = d.instance.clone();
    wait_for(
        &format!("container {old} to be replaced"),
        Duration::from_secs(15),
        || {
            let now = running(&instance, "fragile");
            (!exists(old) && now.len() == 1).then(|| now[0].clone())
        },
    )
    .await
}

#[tokio::test]
async fn the_workdir_and_tmp_are_wiped_between_tasks_unless_turned_off() {
    let d = Daemon::start(&format!(
        "{}{}",
        one_pool("wiped", ""),
        one_pool("kept", "reset_workdir = false")
    ))
    .await;
    d.wait_ready(Duration::from_secs(30)).await;
    for (pool, want) in [
        ("wiped", ""),
        ("kept", "/tmp/b\n/work/a\n/work/d\n/work/d/e\n"),
    ] {
        let (status, v) = d
            .task(
                pool,
                json!({"shell": "touch /work/a /tmp/b && mkdir -p /work/d && touch /work/d/e"}),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let first = v["container"].clone();
        let (status, v) = d
            .task(pool, json!({"shell": "find /work /tmp -mindepth 1 | sort"}))
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["container"], first, "{pool}: same container");
        assert_eq!(v["stdout"], want, "{pool}: {v}");
    }
}

/// A task that takes write permission away from the workdir or /tmp does not pass that on: the
/// next tenant's task finds them with the modes they had when the container started (755 and
/// 1777 as warmpool mounts them), and can write. `/work` is a directory the shim keeps open; a
/// workdir deeper down is wiped by its path.
#[tokio::test]
async fn a_task_that_changes_the_workdirs_mode_does_not_pass_it_on() {
    let d = Daemon::start(&format!(
        "{}{}",
        one_pool("modes", ""),
        one_pool("deep", "workdir = \"/srv/work\"")
    ))
    .await;
    d.wait_ready(Duration::from_secs(30)).await;
    for (pool, workdir) in [("modes", "/work"), ("deep", "/srv/work")] {
        let shell = format!(
            "stat -c %a {workdir} /tmp && chmod 500 {workdir} && chmod 700 /tmp && stat -c %a {workdir} /tmp"
        );
        let (status, v) = d.task(pool, json!({ "shell": shell })).await;
        assert_eq!(status, 200, "{v}");
        let lines: Vec<&str> = v["stdout"].as_str().unwrap_or_default().lines().collect();
        assert_eq!(lines.len(), 4, "{pool}: {v}");
        let at_start = format!("{}\n{}\n", lines[0], lines[1]);
        assert_eq!(
            lines[2..],
            ["500", "700"],
            "{pool}: the task changed both: {v}"
        );
        assert_ne!(lines[..2], lines[2..], "{pool}: {v}");
        let first = v["container"].clone();
        let shell =
            format!("stat -c %a {workdir} /tmp && touch {workdir}/a /tmp/b && echo written");
        let (status, v) = d.task(pool, json!({ "shell": shell })).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["container"], first, "{pool}: same container: {v}");
        assert_eq!(
            v["stdout"],
            format!("{at_start}written\n"),
            "{pool}: the modes at start are back: {v}"
        );
    }
}

/// A command is found in `PATH` as a search would find it at each task, even though the shim
/// keeps the answer where it cannot change (a read-only root): a file a task puts earlier in
/// `PATH`, on a writable root or on a tmpfs entry, is what the next task runs; and the name,
/// not the path found, is the command's `argv[0]`.
#[tokio::test]
async fn a_command_is_found_in_path_as_a_search_would_find_it() {
    let d = Daemon::start(&format!(
        "{}{}{}",
        one_pool("plain", ""),
        one_pool(
            "rw",
            "[pools.rw.security]\nread_only_rootfs = false\nuser = \"0:0\""
        ),
        one_pool(
            "tmpfs",
            "reset_workdir = false\nenv = { PATH = \"/work/bin:/usr/local/bin:/usr/bin:/bin\" }"
        ),
    ))
    .await;
    d.wait_ready(Duration::from_secs(30)).await;
    for _ in 0..2 {
        let (status, v) = d
            .task("plain", json!({"cmd": ["sh", "-c", "echo $0"]}))
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["stdout"], "sh\n", "argv[0] is the name: {v}");
    }
    let shadow = "printf '#!/bin/sh\\necho shadow\\n' > DIR/true && chmod 755 DIR/true";
    for (pool, dir) in [("rw", "/usr/local/bin"), ("tmpfs", "/work/bin")] {
        let (status, v) = d.task(pool, json!({"cmd": ["true"]})).await;
        assert_eq!((status, v["exit_code"].clone()), (200, json!(0)), "{v}");
        assert_eq!(v["stdout"], "", "{pool}: {v}");
        let first = v["container"].clone();
        let shell = format!("mkdir -p {dir} && {}", shadow.replace("DIR", dir));
        let (status, v) = d.task(pool, json!({ "shell": shell })).await;
        assert_eq!((status, v["exit_code"].clone()), (200, json!(0)), "{v}");
        let (status, v) = d.task(pool, json!({"cmd": ["true"]})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["container"], first, "{pool}: same container: {v}");
        assert_eq!(
            v["stdout"], "shadow\n",
            "{pool}: the file put in {dir} runs: {v}"
        );
    }
}
