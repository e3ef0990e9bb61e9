//! The two shim transports on the real engine: `direct` (a unix socket in a host directory of
//! each container's own) and `attach` (the engine's attached stream) run the same task suite
//! (output, stdin, timeouts, output caps, signals, binary output); a shim or container killed
//! mid-task gives 502 `container_failed` on both; a direct container cannot reach, nor even
//! see, a neighbour's socket; the socket directories go with their containers, and the
//! instance's run root with the daemon.
//!
//! The fallback for remote engines is a pure decision, unit-tested in `src/exec/direct.rs`.

mod common;
mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use support::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const LABEL_SOCKET: &str = "warmpool.shim_socket";

/// One locked-down shim pool (read-only root, no network, user 1000:1000) on `transport`.
fn pool(name: &str, transport: &str, size: usize, extra: &str) -> String {
    format!(
        r#"
[pools.{name}]
image = "warmpool/agent:latest"
min = {size}
warm = {size}
max = {size}
network = "none"
exec_transport = "{transport}"
max_output = "64KiB"
{extra}

[pools.{name}.security]
read_only_rootfs = true
cap_drop = ["ALL"]
no_new_privileges = true
user = "1000:1000"
"#
    )
}

/// The host socket path of a direct container (its label), `None` for an attached one.
fn socket_of(id: &str) -> Option<PathBuf> {
    inspect(id)["Config"]["Labels"][LABEL_SOCKET]
        .as_str()
        .map(PathBuf::from)
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

/// Checks that the pool's one container uses `transport`, and how its socket is kept.
fn check_transport(d: &Daemon, name: &str, transport: &str) -> String {
    let id = containers(&d.instance, Some(name)).remove(0);
    let entrypoint = inspect(&id)["Config"]["Entrypoint"].to_string();
    match transport {
        "direct" => {
            assert!(entrypoint.contains("--listen"), "{entrypoint}");
            let socket = socket_of(&id).expect("a direct container has its socket label");
            let dir = socket.parent().unwrap();
            let meta = std::fs::metadata(dir).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{dir:?}");
            assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "{dir:?}");
            let meta = std::fs::symlink_metadata(&socket).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{socket:?}");
            assert_eq!(meta.uid(), 1000, "{socket:?}");
            assert!(dir.starts_with(format!("/run/warmpool/{}", d.instance)));
        }
        _ => {
            assert!(!entrypoint.contains("--listen"), "{entrypoint}");
            assert_eq!(socket_of(&id), None);
        }
    }
    id
}

async fn suite(transport: &str) {
    let name = format!("suite-{transport}");
    let d = Daemon::start(&pool(&name, transport, 1, "")).await;
    d.wait_ready(Duration::from_secs(30)).await;
    let id = check_transport(&d, &name, transport);

    // Output, and the same warm container every time.
    let (status, v) = d.task(&name, json!({"cmd": ["echo", "hello"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "hello\n");
    assert_eq!(full_id(&d.instance, v["container"].as_str().unwrap()), id);

    // Stdin, small and bigger than a pipe.
    let (status, v) = d
        .task(&name, json!({"cmd": ["cat"], "stdin": "one\ntwo\n"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "one\ntwo\n");
    let big = "a".repeat(300_000);
    let (status, v) = d
        .task(&name, json!({"cmd": ["wc", "-c"], "stdin": big}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"].as_str().unwrap().trim(), "300000");

    // Binary output both ways.
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let (status, v) = d
        .task(
            &name,
            json!({"cmd": ["cat"], "stdin_base64": B64.encode(&every_byte)}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout_encoding"], "base64", "{v}");
    assert_eq!(bytes_of(&v, "stdout"), every_byte);
    let (status, v) = d
        .task(&name, json!({"shell": r"printf '\377\376' >&2"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(bytes_of(&v, "stderr"), b"\xff\xfe");

    // The output cap (64KiB): drained, flagged.
    let (status, v) = d
        .task(
            &name,
            json!({"shell": "yes | head -c 1000000", "timeout": "30s"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["stdout_truncated"], true, "{v}");
    assert_eq!(v["stdout"].as_str().unwrap().len(), 64 * 1024);

    // Exit codes and signals.
    for (shell, code, signal) in [
        ("exit 7", json!(7), Value::Null),
        ("kill -9 $$", Value::Null, json!(9)),
        ("kill -TERM $$", Value::Null, json!(15)),
    ] {
        let (status, v) = d.task(&name, json!({"shell": shell})).await;
        assert_eq!(status, 200, "{shell}: {v}");
        assert_eq!(v["exit_code"], code, "{shell}: {v}");
        assert_eq!(v["signal"], signal, "{shell}: {v}");
    }

    // A timeout kills the task; the pool serves the next one (the container may be replaced).
    let t = Instant::now();
    let (status, v) = d
        .task(&name, json!({"cmd": ["sleep", "30"], "timeout": "1s"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["timed_out"], true, "{v}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let (status, v) = d.task(&name, json!({"cmd": ["echo", "after"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "after\n");
}

#[tokio::test]
async fn the_task_suite_over_direct() {
    suite("direct").await;
}

#[tokio::test]
async fn the_task_suite_over_attach() {
    suite("attach").await;
}

/// Kills the pool's container (the engine's kill, or only its shim from the host) while a
/// task runs in it: the task answers 502 `container_failed` at once, the pool replaces it.
async fn killed_mid_task(transport: &str, how: &str) {
    let name = format!("kill-{transport}");
    let d = Daemon::start(&pool(&name, transport, 1, "")).await;
    d.wait_ready(Duration::from_secs(30)).await;
    let id = check_transport(&d, &name, transport);
    let socket = socket_of(&id);
    let task = {
        let client = warmpool::client::Client::new(&d.addr, None);
        let name = name.clone();
        tokio::spawn(async move {
            let body = json!({"cmd": ["sleep", "30"], "timeout": "60s"});
            run_task(&client, &name, body).await
        })
    };
    wait_pool(&d, &name, "the task to run", Duration::from_secs(10), |v| {
        v["busy"] == 1
    })
    .await;
    let t = Instant::now();
    match how {
        "container" => {
            docker(&["kill", &id]);
        }
        _ => {
            // The shim is the container's PID 1: SIGKILL from the host's pid namespace.
            let pid = docker(&["inspect", "--format", "{{.State.Pid}}", &id]);
            let ok = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }
    let (status, v) = task.await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], "container_failed", "{v}");
    // Replaced, and the new one serves.
    let instance = d.instance.clone();
    let name2 = name.clone();
    wait_for("a replacement", Duration::from_secs(20), || {
        let now = running(&instance, &name2);
        (!exists(&id) && now.len() == 1).then_some(())
    })
    .await;
    let (status, v) = d.task(&name, json!({"cmd": ["echo", "alive"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "alive\n");
    // The killed container's socket directory went with it.
    if let Some(socket) = socket {
        wait_for("the socket directory to go", Duration::from_secs(5), || {
            (!socket.parent().unwrap().exists()).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_container_killed_mid_task_over_direct() {
    killed_mid_task("direct", "container").await;
}

#[tokio::test]
async fn a_container_killed_mid_task_over_attach() {
    killed_mid_task("attach", "container").await;
}

#[tokio::test]
async fn a_shim_killed_mid_task_over_direct() {
    killed_mid_task("direct", "shim").await;
}

#[tokio::test]
async fn a_shim_killed_mid_task_over_attach() {
    killed_mid_task("attach", "shim").await;
}

#[tokio::test]
async fn a_container_cannot_reach_a_neighbours_socket() {
    let d = Daemon::start(&pool("neigh", "direct", 2, "")).await;
    d.wait_ready(Duration::from_secs(30)).await;
    let ids = containers(&d.instance, Some("neigh"));
    assert_eq!(ids.len(), 2, "{ids:?}");
    let sockets: Vec<PathBuf> = ids.iter().map(|id| socket_of(id).unwrap()).collect();
    assert_ne!(sockets[0], sockets[1]);
    for (i, id) in ids.iter().enumerate() {
        let other = &sockets[1 - i];
        let other_dir = other.parent().unwrap();
        // Its own directory holds its own socket and nothing else; the neighbour's host
        // path, its directory and the run root do not exist in it.
        let script = format!(
            "ls -A /.warmpool/run; for p in {} {} {}; do test -e \"$p\" && echo \"SEEN $p\"; done; \
             find / -xdev -type s 2>/dev/null; true",
            other.display(),
            other_dir.display(),
            other_dir.parent().unwrap().display(),
        );
        let (code, out) = docker_exec(id, &["sh", "-c", &script]);
        assert_eq!(code, 0, "{out}");
        assert!(!out.contains("SEEN"), "{id}: {out}");
        let sockets_seen: Vec<&str> = out.lines().filter(|l| l.ends_with(".sock")).collect();
        assert_eq!(
            out.lines().next(),
            Some("shim.sock"),
            "{id} sees in its socket directory: {out}"
        );
        assert!(
            sockets_seen
                .iter()
                .all(|s| *s == "shim.sock" || *s == "/.warmpool/run/shim.sock"),
            "{id} sees: {out}"
        );
    }
    // The directories go with the daemon's containers.
    let root = PathBuf::from(format!("/run/warmpool/{}", d.instance));
    let mut d = d;
    d.stop();
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!root.exists(), "the instance's run root goes at shutdown");
}
