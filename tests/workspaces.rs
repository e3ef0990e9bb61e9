//! Workspaces against the real engine (issue 12): pool mounts, pre-warming, per-session
//! size and concurrency.

mod common;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use support::*;

const LONG: Duration = Duration::from_secs(60);

/// A host directory the task user (1000) can read, holding `hello.txt`.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("hello.txt");
    std::fs::write(&file, "from the host\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    dir
}

/// The full id of the container that ran a task (from its 12-character id).
fn container_of(d: &Daemon, answer: &Value) -> String {
    full_id(
        &d.instance,
        answer["container"].as_str().expect("container"),
    )
}

#[tokio::test]
async fn a_bind_mount_is_read_only_unless_asked_and_shows_in_docker_inspect() {
    let repo = shared_dir();
    let config = format!(
        r#"
[pools.m]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
mounts = [
  {{type = "bind", source = "{}", target = "/repo"}},
  {{type = "tmpfs", target = "/scratch", size = "8MiB"}},
]
"#,
        repo.path().display()
    );
    let d = Daemon::start(&config).await;
    d.wait_ready(LONG).await;
    let (status, v) = d
        .task("m", json!({"shell": "cat /repo/hello.txt; echo x > /repo/new; echo rc=$?; echo y > /scratch/f && cat /scratch/f"}))
        .await;
    assert_eq!(status, 200, "{v}");
    let out = v["stdout"].as_str().unwrap();
    assert!(out.contains("from the host"), "{v}");
    assert!(
        out.contains("rc=1"),
        "a write to the read-only bind must fail: {v}"
    );
    assert!(out.contains("y\n"), "the tmpfs is writable: {v}");
    assert!(!repo.path().join("new").exists());
    let info = inspect(&container_of(&d, &v));
    let mounts = info["Mounts"].as_array().unwrap();
    let bind = mounts
        .iter()
        .find(|m| m["Destination"] == "/repo")
        .unwrap_or_else(|| panic!("no /repo mount in {mounts:?}"));
    assert_eq!(bind["Type"], "bind");
    assert_eq!(bind["RW"], false, "{bind}");
    let tmpfs = &info["HostConfig"]["Mounts"];
    assert!(
        tmpfs
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["Target"] == "/scratch"
                && m["Type"] == "tmpfs"
                && m["TmpfsOptions"]["SizeBytes"] == 8 * 1024 * 1024),
        "{tmpfs}"
    );
}

/// A bad mount is refused with its field, its value and the fix, and nothing is created:
/// neither by a daemon that starts on it nor by a reload to it.
#[tokio::test]
async fn a_bad_mount_is_refused_naming_the_field_and_nothing_is_created() {
    // At start: the daemon exits 1 and the engine holds nothing of its instance.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pools.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\n[pools.m]\nimage = \"warmpool/agent:latest\"\nmounts = [{type = \"tmpfs\", target = \"/\"}]\n",
    )
    .unwrap();
    let instance = format!("tbad{}", std::process::id());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warmpool"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("WARMPOOL_INSTANCE", &instance)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("pools.m.mounts[0].target (\"/\")") && stderr.contains("\"/data\""),
        "{stderr}"
    );
    assert!(containers(&instance, None).is_empty());

    // By a reload: 400 invalid_config naming both problems; the pool's containers stay.
    let d =
        Daemon::start("[pools.m]\nimage = \"warmpool/agent:latest\"\nmin = 1\nwarm = 1\n").await;
    d.wait_ready(LONG).await;
    let before = containers(&d.instance, None);
    let bad = "[pools.m]\nimage = \"warmpool/agent:latest\"\nmin = 1\nwarm = 1\nmounts = [{type = \"tmpfs\", target = \"/\"}, {type = \"bind\", source = \"/no/such/dir-wp\", target = \"/repo\"}]\n";
    let text = std::fs::read_to_string(&d.config_path).unwrap();
    let server = &text[..text.find("[pools.m]").unwrap()];
    std::fs::write(&d.config_path, format!("{server}{bad}")).unwrap();
    let (status, v) = d.post_raw("/v1/admin/reload", Vec::new()).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_config");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("pools.m.mounts[0].target (\"/\")"),
        "{message}"
    );
    assert!(
        message.contains("pools.m.mounts[1].source (\"/no/such/dir-wp\") does not exist")
            && message.contains("mkdir -p"),
        "{message}"
    );
    assert_eq!(containers(&d.instance, None), before);
}

const PREWARM_POOL: &str = r#"
[pools.p]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 4
idle_timeout = "1h"
scale_interval = "1s"
"#;

#[tokio::test]
async fn prewarm_raises_the_floor_for_a_while_then_falls_back() {
    let d = Daemon::start(PREWARM_POOL).await;
    d.wait_ready(LONG).await;
    // Above max: a 400 naming the field and the bound, nothing created.
    let (status, v) = d
        .post_raw(
            "/v1/pools/p/prewarm",
            json!({"containers": 5, "for": "10m"})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("containers (5)") && message.contains("max (4)"),
        "{message}"
    );
    assert_eq!(pool_status(&d, "p").await["live"], 1);

    // Before the request: the daemon's 10 s start while it answers, at or after this, so
    // "reached before the end" and "fell back after 10 s" both hold measured from here (from
    // the answer, a fall back on time looked early by the request's latency).
    let started = Instant::now();
    let (status, v) = d
        .post_raw(
            "/v1/pools/p/prewarm",
            json!({"containers": 3, "for": "10s"})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["prewarm"]["containers"], 3, "{v}");
    wait_pool(&d, "p", "3 idle containers", LONG, |v| {
        v["idle"] == 3 && v["live"] == 3
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the floor was reached after it ended"
    );
    assert_eq!(running(&d.instance, "p").len(), 3);
    assert_eq!(
        metric(&d, "warmpool_pool_prewarm_containers", &[("pool", "p")]).await,
        3.0
    );
    // After `for`, the pool falls back to what its demand needs (min here).
    let v = wait_pool(&d, "p", "the fall back to min", LONG, |v| {
        v["live"] == 1 && v["target"] == 1
    })
    .await;
    assert!(v["prewarm"].is_null(), "{v}");
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert_eq!(
        metric(&d, "warmpool_pool_prewarm_containers", &[("pool", "p")]).await,
        0.0
    );
}

#[tokio::test]
async fn a_warm_session_holds_its_container_at_once() {
    let d = Daemon::start(PREWARM_POOL).await;
    d.wait_ready(LONG).await;
    let id = format!("{}-warm", d.instance);
    let (status, v) = d
        .post_raw(
            "/v1/sessions",
            json!({"pool": "p", "id": id, "warm": true})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["state"], "running", "{v}");
    let container = full_id(&d.instance, v["container"].as_str().unwrap());
    assert!(is_running(&container));
    // Named after its session (warmpool-<pool>.<nonce>.<id>) before the claim answers.
    let name = inspect(&container)["Name"].as_str().unwrap().to_string();
    assert!(
        name.starts_with("/warmpool-p.") && name.ends_with(&format!(".{id}")),
        "{name}"
    );
}

const SIZED_POOL: &str = r#"
[pools.z]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 3
memory = "256MiB"
cpus = 0.5
session_max_memory = "1GiB"
session_max_cpus = 2
session_max_pids = 512
"#;

#[tokio::test]
async fn a_session_size_is_applied_live_to_a_warm_container() {
    let d = Daemon::start(SIZED_POOL).await;
    d.wait_ready(LONG).await;
    let warm_before = running(&d.instance, "z");
    assert_eq!(warm_before.len(), 1);
    // Over a bound: a 400 naming the field, the bound and the fix; no session, nothing created.
    let id = format!("{}-big", d.instance);
    let (status, v) = d
        .post_raw(
            "/v1/sessions",
            json!({"pool": "z", "id": id, "memory": "4GiB"})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("memory (4GiB)")
            && message.contains("session_max_memory (1GiB)")
            && message.contains("raise session_max_memory"),
        "{message}"
    );
    assert_eq!(d.get(&format!("/v1/sessions/{id}")).await.unwrap().0, 404);
    assert_eq!(containers(&d.instance, None).len(), 1);

    let id = format!("{}-sized", d.instance);
    let (status, v) = d
        .post_raw(
            "/v1/sessions",
            json!({"pool": "z", "id": id, "memory": "512MiB", "cpus": 1.5, "pids_limit": 300, "warm": true})
                .to_string()
                .into_bytes(),
        )
        .await;
    if engine_is_podman() {
        // Podman 4 cannot update a running container: a 400 that says so and what to do.
        assert_eq!(status, 400, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("cannot change a running container's limits")
                && message.contains("leave memory, cpus and pids_limit out"),
            "{message}"
        );
        return;
    }
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["memory"], 512 * 1024 * 1024, "{v}");
    let container = full_id(&d.instance, v["container"].as_str().unwrap());
    // The warm container the pool already had: no create for the session.
    assert_eq!(vec![container.clone()], warm_before);
    let host = &inspect(&container)["HostConfig"];
    assert_eq!(host["Memory"], 512 * 1024 * 1024, "{host}");
    assert_eq!(host["NanoCpus"], 1_500_000_000i64, "{host}");
    assert_eq!(host["PidsLimit"], 300, "{host}");
    // And its tasks run under them.
    let (status, v) = d
        .task("z", json!({"session": id, "shell": "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"].as_str().unwrap().trim(), "300", "{v}");
}

#[tokio::test]
async fn two_tasks_of_a_session_overlap_with_max_concurrent_tasks_2() {
    let d = Daemon::start(
        "[pools.c]\nimage = \"warmpool/agent:latest\"\nmin = 1\nwarm = 1\nmax = 2\nmax_concurrent_tasks = 2\n",
    )
    .await;
    d.wait_ready(LONG).await;
    // Above the pool's value: a 400 naming it.
    let (status, v) = d
        .post_raw(
            "/v1/sessions",
            json!({"pool": "c", "max_concurrent_tasks": 3})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_concurrent_tasks (3) is above pool c's max_concurrent_tasks (2)"),
        "{v}"
    );
    let id = format!("{}-conc", d.instance);
    let (status, v) = d
        .post_raw(
            "/v1/sessions",
            json!({"pool": "c", "id": id, "warm": true})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["max_concurrent_tasks"], 2, "{v}");
    // Each waits (up to 20 s) for the other's file: both see it only if they overlap. Then
    // one ends at once and the other 1.5 s later, in both orders: the end of the task that
    // holds the shim must not end the other, which runs through the engine's exec (a sweep
    // that killed every process but the shim did, with exit 137).
    let wait_for_other = |me: &str, other: &str, round: u32, linger: &str| {
        format!(
            "touch /work/{me}{round}; i=0; while [ ! -e /work/{other}{round} ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; [ -e /work/{other}{round} ] && echo saw-{other} && sleep {linger}"
        )
    };
    let client = warmpool::client::Client::new(&d.addr, None);
    for (round, (linger_a, linger_b)) in [(1, ("0", "1.5")), (2, ("1.5", "0"))] {
        let (a, b) = tokio::join!(
            run_task(
                &client,
                "c",
                json!({"session": id, "shell": wait_for_other("a", "b", round, linger_a)})
            ),
            run_task(
                &client,
                "c",
                json!({"session": id, "shell": wait_for_other("b", "a", round, linger_b)})
            ),
        );
        assert_eq!(a.0, 200, "{}", a.1);
        assert_eq!(b.0, 200, "{}", b.1);
        assert_eq!(a.1["stdout"], "saw-b\n", "round {round}: {}", a.1);
        assert_eq!(b.1["stdout"], "saw-a\n", "round {round}: {}", b.1);
        assert_eq!(a.1["exit_code"], 0, "round {round}: {}", a.1);
        assert_eq!(b.1["exit_code"], 0, "round {round}: {}", b.1);
        assert_eq!(a.1["container"], b.1["container"], "one container");
    }
}

/// A session's state as `GET /v1/sessions/{id}` shows it.
async fn session_state(d: &Daemon, id: &str) -> String {
    let (status, v) = d.get(&format!("/v1/sessions/{id}")).await.unwrap();
    assert_eq!(status, 200, "{v}");
    v["state"].as_str().unwrap().to_string()
}

/// Runs `shell` in session `id`, retrying once after a 502 (the container died under it).
async fn in_session(d: &Daemon, pool: &str, id: &str, shell: &str) -> Value {
    for _ in 0..2 {
        let (status, v) = d.task(pool, json!({"session": id, "shell": shell})).await;
        if status == 502 {
            continue;
        }
        assert_eq!(status, 200, "{v}");
        return v;
    }
    panic!("two 502s in a row for {shell:?}:\n{}", d.log());
}

/// A daemon with one persistent pool `w` (`keys` added to it, one per line) whose
/// workspace_root is a fresh host directory the task user can enter, ready, and a session
/// `<instance>-<suffix>` created on it. Keep the directory for as long as the daemon.
async fn persistent_pool(keys: &str, suffix: &str) -> (tempfile::TempDir, Daemon, String) {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "[pools.w]\nimage = \"warmpool/agent:latest\"\nsession_workspace = \"persistent\"\nworkspace_root = \"{}\"\n{keys}\n",
        root.path().display()
    );
    let d = Daemon::start(&config).await;
    d.wait_ready(LONG).await;
    let id = format!("{}-{suffix}", d.instance);
    let (status, v) = d
        .post_raw(
            "/v1/sessions",
            json!({"pool": "w", "id": id}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    (root, d, id)
}

#[tokio::test]
async fn a_persistent_workspace_outlives_idle_kills_and_restarts_until_deleted() {
    let (root, mut d, id) = persistent_pool(
        "min = 1\nwarm = 2\nmax = 4\nsession_idle_timeout = \"1s\"",
        "ws",
    )
    .await;
    let v = in_session(
        &d,
        "w",
        &id,
        "echo kept > /workspace/f.txt && cat /workspace/f.txt",
    )
    .await;
    assert_eq!(v["stdout"], "kept\n", "{v}");
    let first = container_of(&d, &v);

    // Idle is not the end: the container goes, the workspace stays.
    wait_for("the session to go idle", LONG, || {
        (!exists(&first)).then_some(())
    })
    .await;
    assert_eq!(session_state(&d, &id).await, "idle");
    let v = in_session(&d, "w", &id, "cat /workspace/f.txt").await;
    assert_eq!(v["stdout"], "kept\n", "resumed on a warm container: {v}");
    let second = container_of(&d, &v);
    assert_ne!(first, second);

    // Its container killed under it.
    let _ = docker_try(&["kill", &second]);
    let v = in_session(&d, "w", &id, "cat /workspace/f.txt").await;
    assert_eq!(v["stdout"], "kept\n", "after docker kill: {v}");

    // The daemon killed and restarted, then a reload.
    d.kill9();
    d.restart().await;
    d.wait_ready(LONG).await;
    let v = in_session(&d, "w", &id, "cat /workspace/f.txt").await;
    assert_eq!(v["stdout"], "kept\n", "after kill -9 and a restart: {v}");
    let (status, v) = d.post_raw("/v1/admin/reload", Vec::new()).await;
    assert_eq!(status, 200, "{v}");
    let v = in_session(&d, "w", &id, "cat /workspace/f.txt").await;
    assert_eq!(v["stdout"], "kept\n", "after a reload: {v}");

    // Never visible to another session or to a pool task.
    let other = format!("{}-other", d.instance);
    d.post_raw(
        "/v1/sessions",
        json!({"pool": "w", "id": other}).to_string().into_bytes(),
    )
    .await;
    let v = in_session(&d, "w", &other, "ls -A /workspace; echo end").await;
    assert_eq!(v["stdout"], "end\n", "{v}");
    let (status, v) = d
        .task("w", json!({"shell": "ls -A /workspace; echo end"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "end\n", "{v}");

    // Listed with its pool and size, and counted.
    let (status, v) = d.get("/v1/workspaces").await.unwrap();
    assert_eq!(status, 200, "{v}");
    let mine = v["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in {v}"))
        .clone();
    assert_eq!(mine["pool"], "w");
    assert_eq!(mine["bytes"], 5);
    assert!(mine["last_used"].is_string(), "{mine}");
    let mut n = 0.0;
    for _ in 0..200 {
        n = metric(&d, "warmpool_workspaces", &[("pool", "w")]).await;
        if n >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, 2.0, "warmpool_workspaces");
    assert!(metric(&d, "warmpool_workspace_bytes", &[("pool", "w")]).await >= 5.0);

    // Deleted with the session on request; a `..` id refused; the other by its own endpoint.
    let (status, _, body) = d
        .request(
            "DELETE",
            &format!("/v1/sessions/{id}?workspace=delete"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{}", as_json(&body));
    let (_, v) = d.get("/v1/workspaces").await.unwrap();
    assert!(
        !v["workspaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == id.as_str()),
        "{v}"
    );
    let store = root.path().join(&d.instance).join("store");
    assert!(!store.join(&id).exists());
    for bad in ["a..b", "%2E%2E"] {
        let (status, _, body) = d
            .request("DELETE", &format!("/v1/workspaces/{bad}"), None)
            .await;
        assert_eq!(status, 400, "{bad}: {}", as_json(&body));
    }
    let (status, _, body) = d
        .request("DELETE", &format!("/v1/workspaces/{other}"), None)
        .await;
    assert_eq!(status, 200, "{}", as_json(&body));
    assert!(!store.join(&other).exists());
    assert_eq!(
        d.get(&format!("/v1/sessions/{other}")).await.unwrap().0,
        404
    );
}

/// The mounts at `target` in `pid`'s mount namespace, bottom first, each as the directory
/// of its filesystem it shows (mountinfo's field 4): what a container sees there.
fn mount_roots(pid: &str, target: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&target)).then(|| f[3].to_string())
        })
        .collect()
}

/// Mount points at or under `dir` in the test's (the daemon's) mount namespace.
fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&dir))
        .collect()
}

#[tokio::test]
async fn a_resume_binds_the_workspace_into_a_warm_container_in_one_mount() {
    if !std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
    {
        eprintln!("skipped: the daemon mounts only as root");
        return;
    }
    let (root, mut d, id) = persistent_pool(
        "min = 1\nwarm = 2\nmax = 4\nsession_idle_timeout = \"1s\"",
        "bound",
    )
    .await;
    let v = in_session(&d, "w", &id, "echo kept > /workspace/a.txt").await;
    assert_eq!(v["exit_code"], 0, "{v}");
    let first = container_of(&d, &v);
    let store = root.path().join(&d.instance).join("store").join(&id);
    let bound_here = |container: &str| {
        let info = inspect(container);
        let pid = info["State"]["Pid"].to_string();
        let ws = info["Mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["Destination"] == "/workspace")
            .cloned()
            .unwrap_or_default();
        (mount_roots(&pid, "/workspace"), ws["Propagation"].clone())
    };
    let (roots, propagation) = bound_here(&first);
    assert_eq!(propagation, "rslave", "the slot's bind takes later mounts");
    assert!(
        roots
            .last()
            .is_some_and(|r| r.ends_with(&format!("/store/{id}"))),
        "the container's /workspace is the store's directory, bound on its slot: {roots:?}"
    );
    // Bound, the store's directory is the workspace: the host writes into it directly.
    for i in 0..5_000 {
        std::fs::write(store.join(format!("f{i}")), "x").unwrap();
    }
    std::fs::write(store.join("from-host"), "host\n").unwrap();
    let v = in_session(
        &d,
        "w",
        &id,
        "cat /workspace/from-host; ls /workspace | wc -l",
    )
    .await;
    assert_eq!(v["stdout"], "host\n5002\n", "{v}");

    // Idle: the container goes, and so does the mount; the files stay in the store.
    wait_for("the session to go idle", LONG, || {
        (!exists(&first)).then_some(())
    })
    .await;
    wait_for("the slot's mount to go", LONG, || {
        (mounts_under(root.path()).len() == 1).then_some(())
    })
    .await;
    assert!(store.join("a.txt").exists());

    // Resume: a warm container, 5,002 top-level entries, one mount.
    let resumes_before = metric(
        &d,
        "warmpool_workspace_resume_seconds_count",
        &[("pool", "w")],
    )
    .await;
    assert!(resumes_before >= 1.0, "the first claim was timed");
    let v = in_session(&d, "w", &id, "cat /workspace/a.txt; ls /workspace | wc -l").await;
    assert_eq!(v["stdout"], "kept\n5002\n", "{v}");
    assert_eq!(v["cold_start"], false, "{v}");
    let second = container_of(&d, &v);
    assert!(bound_here(&second)
        .0
        .last()
        .is_some_and(|r| r.ends_with(&format!("/store/{id}"))));
    // The resume was timed.
    assert_eq!(
        metric(
            &d,
            "warmpool_workspace_resume_seconds_count",
            &[("pool", "w")]
        )
        .await,
        resumes_before + 1.0
    );

    // A kill -9 leaves the mount for the adopted container; a restart resumes on it.
    d.kill9();
    d.restart().await;
    d.wait_ready(LONG).await;
    let v = in_session(&d, "w", &id, "cat /workspace/a.txt").await;
    assert_eq!(v["stdout"], "kept\n", "after kill -9 and a restart: {v}");

    // A clean stop leaves no mount under workspace_root, and a plain directory.
    d.stop();
    assert_eq!(mounts_under(root.path()), Vec::<String>::new());
    assert!(store.join("a.txt").exists());
}

#[tokio::test]
async fn a_workspace_over_workspace_max_size_gets_no_new_task() {
    let (_root, d, id) =
        persistent_pool("min = 1\nwarm = 1\nworkspace_max_size = \"1KiB\"", "full").await;
    // Over the bound: killed while it runs (507) when the twice-a-second watch sees it first
    // (a loaded machine), else measured once it is done; either way the next task is refused.
    let (status, v) = d
        .task(
            "w",
            json!({"session": id, "shell": "head -c 2048 /dev/zero > /workspace/big"}),
        )
        .await;
    assert!(
        (status == 200 && v["exit_code"] == 0)
            || (status == 507 && v["error"]["code"] == "workspace_full"),
        "{status} {v}"
    );
    let (status, v) = d.task("w", json!({"session": id, "shell": "true"})).await;
    assert_eq!(status, 507, "{v}");
    assert_eq!(v["error"]["code"], "workspace_full");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("2048 bytes") && message.contains("workspace_max_size (1024 bytes)"),
        "{message}"
    );
}

/// An upload counts toward `workspace_max_size` as a task's writes do: measured once it is
/// written, and refused (507, nothing written) while the workspace is over the bound; the
/// files can still be read.
#[tokio::test]
async fn an_upload_over_workspace_max_size_is_the_last_one_written() {
    let (root, d, id) =
        persistent_pool("min = 1\nwarm = 1\nworkspace_max_size = \"1KiB\"", "upload").await;
    let (status, v) = d.task("w", json!({"session": id, "cmd": ["true"]})).await;
    assert_eq!(status, 200, "{v}");
    // Within the bound before it: written, then measured over it.
    let (status, _, body) = d
        .request(
            "PUT",
            &format!("/v1/sessions/{id}/files/workspace/big"),
            Some(vec![b'x'; 2048]),
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // Over it now: the next upload is refused and writes nothing.
    let (status, _, body) = d
        .request(
            "PUT",
            &format!("/v1/sessions/{id}/files/workspace/more"),
            Some(b"more".to_vec()),
        )
        .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 507, "{v}");
    assert_eq!(v["error"]["code"], "workspace_full", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("2048 bytes") && message.contains("workspace_max_size (1024 bytes)"),
        "{message}"
    );
    let (status, _, _) = d
        .request(
            "GET",
            &format!("/v1/sessions/{id}/files/workspace/more"),
            None,
        )
        .await;
    assert_eq!(status, 404, "the refused upload wrote a file");
    // So is a task; reading still works.
    let (status, v) = d.task("w", json!({"session": id, "cmd": ["true"]})).await;
    assert_eq!(status, 507, "{v}");
    let (status, _, body) = d
        .request(
            "GET",
            &format!("/v1/sessions/{id}/files/workspace/big"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 2048);
    // Space freed from the host (the workspace is a host directory) lets it go on: a refused
    // task measures it again.
    let big = find_file(root.path(), "big").expect("the upload is on the host");
    std::fs::remove_file(&big).unwrap();
    let (status, v) = d.task("w", json!({"session": id, "cmd": ["true"]})).await;
    assert_eq!(status, 200, "{v}");
}

/// The first file called `name` under `dir`, walked on the host.
fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if e.file_name() == name {
            return Some(path);
        }
    }
    None
}

/// Bytes of the files under `dir`, walked on the host.
fn bytes_under(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => bytes_under(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A task that keeps writing past `workspace_max_size` is killed while it runs (not after
/// it), answered 507 `workspace_full`, and the host holds little more than the bound. With the
/// watch ignored, the task would write its 64 MiB and answer 200 after about 13 s.
async fn a_runaway_writer_is_stopped_at_workspace_max_size(exec: &str) {
    let (root, d, id) = persistent_pool(
        &format!(
            "exec = \"{exec}\"\nmin = 1\nwarm = 1\nworkspace_max_size = \"1MiB\"\ntask_timeout = \"120s\""
        ),
        "runaway",
    )
    .await;
    let first = in_session(&d, "w", &id, "echo started > /workspace/a").await;
    let container = container_of(&d, &first);
    // 256 files of 256 KiB, one every 50 ms: 64 MiB over about 13 s.
    let writer = "i=0; while [ $i -lt 256 ]; do head -c 262144 /dev/zero > /workspace/f$i; i=$((i+1)); sleep 0.05; done; echo wrote-all";
    let (status, v) = d.task("w", json!({"session": id, "shell": writer})).await;
    assert_eq!(status, 507, "{v}\n{}", d.log());
    assert_eq!(v["error"]["code"], "workspace_full", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("was killed") && message.contains("workspace_max_size (1048576 bytes)"),
        "{message}"
    );
    // Twice a second at 5 MiB/s: a few MiB at most, never the 64 the task meant to write.
    let held = bytes_under(root.path());
    assert!(held < 16 << 20, "the host holds {held} bytes");
    if exec == "shim" {
        // The writer's process group is gone; the shim (PID 1) serves on.
        let top = docker(&["top", &container, "-o", "pid,args"]);
        assert!(!top.contains("sleep") && !top.contains("head"), "{top}");
    } else {
        // The engine cannot kill an exec: the container went, the workspace stayed.
        assert!(
            docker_try(&["inspect", &container]).is_none(),
            "{container} still exists"
        );
        assert!(
            held > 1 << 20,
            "the workspace went with the container: {held} bytes"
        );
    }
    let (status, v) = d.task("w", json!({"session": id, "shell": "true"})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (507, Some("workspace_full")),
        "{v}"
    );
}

#[tokio::test]
async fn a_runaway_writer_is_stopped_at_workspace_max_size_shim() {
    a_runaway_writer_is_stopped_at_workspace_max_size("shim").await;
}

#[tokio::test]
async fn a_runaway_writer_is_stopped_at_workspace_max_size_docker_exec() {
    a_runaway_writer_is_stopped_at_workspace_max_size("docker-exec").await;
}

/// `workspace_ttl`: a workspace no session has used for that long is removed, from the API's
/// list and from the host. With the key ignored (the 7-day default) it would stay.
#[tokio::test]
async fn a_workspace_unused_past_workspace_ttl_is_removed() {
    let (_root, d, id) = persistent_pool(
        "min = 1\nwarm = 1\nsession_idle_timeout = \"1s\"\nworkspace_ttl = \"3s\"",
        "ttl",
    )
    .await;
    let v = in_session(&d, "w", &id, "echo kept > /workspace/f.txt").await;
    assert_eq!(v["exit_code"], 0, "{v}");
    let listed = |v: &Value| {
        v["workspaces"]
            .as_array()
            .is_some_and(|a| a.iter().any(|w| w["id"] == json!(id)))
    };
    let (_, v) = d.get("/v1/workspaces").await.unwrap();
    assert!(
        listed(&v),
        "the workspace is listed while it is in use: {v}"
    );
    let began = Instant::now();
    let mut last = Value::Null;
    while began.elapsed() < LONG {
        let (_, v) = d.get("/v1/workspaces").await.unwrap();
        if !listed(&v) {
            break;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        began.elapsed() < LONG,
        "the workspace was still listed {LONG:?} after its last use with workspace_ttl = 3s: {last}"
    );
    let (status, _) = d.get(&format!("/v1/sessions/{id}")).await.unwrap();
    assert_eq!(status, 404, "the idle session ends with its workspace");
}
