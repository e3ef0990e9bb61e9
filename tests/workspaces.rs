//! Workspaces against the real engine (issue 12): pool mounts, pre-warming, per-session
//! size and concurrency.

mod common;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

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
