//! Sessions and session files against the real engine (issue 6): a container pinned to one
//! conversation, lazy, FIFO, isolated, idle- and LRU-ended, surviving a daemon crash, with
//! files and directories moving in and out through the API.

mod common;
mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use support::*;

/// A pool that keeps a warm container around, so a session's first task takes one.
const POOL: &str = r#"
[pools.s]
image = "warmpool/agent:latest"
min = 1
warm = 2
max = 4
"#;

const LONG: Duration = Duration::from_secs(60);

/// One request with a raw body; the answer's status and raw body.
async fn http(d: &Daemon, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, Vec<u8>) {
    let (status, _, bytes) = d.request(method, path, body).await;
    (status, bytes)
}

/// A daemon on [`POOL`], ready.
async fn ready() -> Daemon {
    let d = Daemon::start(POOL).await;
    d.wait_ready(LONG).await;
    d
}

/// A ready daemon on [`POOL`] with one (lazy) session of pool `s`, named after `name`.
async fn with_session(name: &str) -> (Daemon, String) {
    let d = ready().await;
    let id = sid(&d, name);
    create(&d, "s", &id, None).await;
    (d, id)
}

/// A session id no other test daemon on this engine uses (session ids end up in container
/// names, which the engine keeps globally unique).
fn sid(d: &Daemon, name: &str) -> String {
    format!("{}-{name}", d.instance)
}

async fn create(d: &Daemon, pool: &str, id: &str, idle_timeout: Option<&str>) -> Value {
    let mut body = json!({"pool": pool, "id": id});
    if let Some(t) = idle_timeout {
        body["idle_timeout"] = json!(t);
    }
    let (status, v) = d
        .post_raw("/v1/sessions", body.to_string().into_bytes())
        .await;
    assert_eq!(status, 201, "creating session {id}: {v}");
    assert_eq!(v["state"], "not_started", "{v}");
    assert!(v["container"].is_null(), "a session is lazy: {v}");
    v
}

/// Runs `shell` in session `id`, asserting it ran and exited 0.
async fn stask(d: &Daemon, pool: &str, id: &str, shell: &str) -> Value {
    let (status, v) = d.task(pool, json!({"shell": shell, "session": id})).await;
    assert_eq!(status, 200, "session {id} task {shell:?}: {v}");
    assert_eq!(v["exit_code"], 0, "session {id} task {shell:?}: {v}");
    v
}

async fn get_session(d: &Daemon, id: &str) -> (u16, Value) {
    d.get(&format!("/v1/sessions/{id}")).await.unwrap()
}

/// `id name` of this daemon's containers as `docker ps -a` shows them.
fn named_containers(instance: &str) -> Vec<(String, String)> {
    let filter = format!("label=warmpool.instance={instance}");
    docker(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &filter,
        "--format",
        "{{.ID}} {{.Names}}",
    ])
    .lines()
    .filter_map(|l| {
        let (id, name) = l.split_once(' ')?;
        Some((id.to_string(), name.to_string()))
    })
    .collect()
}

/// Waits until the session's container carries its session name, and returns its full id.
async fn session_container(d: &Daemon, pool: &str, id: &str) -> String {
    // `warmpool-<pool>.<8 hex>.<id>` (src/session/entry.rs)
    let name = format!("warmpool-{pool}.*.{id}");
    wait_for(&format!("a container named {name}"), LONG, || {
        named_containers(&d.instance)
            .into_iter()
            .find(|(_, n)| warmpool::session::session_of_name(pool, n).as_deref() == Some(id))
            .map(|(id, _)| id)
    })
    .await
}

fn exists(instance: &str, full_id: &str) -> bool {
    containers(instance, None).iter().any(|c| c == full_id)
}

/// Every byte value, in an order that is not the identity, a few times over.
/// The session is gone: 404 `unknown_session`.
async fn assert_unknown_session(d: &Daemon, id: &str) {
    let (status, v) = get_session(d, id).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("unknown_session")),
        "session {id}: {v}"
    );
}

/// The error code of an error body.
fn code_of(body: &[u8]) -> String {
    as_json(body)["error"]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn binary_blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + i / 256) % 256) as u8).collect()
}

fn stdout_bytes(v: &Value) -> Vec<u8> {
    let s = v["stdout"].as_str().expect("stdout");
    if v["stdout_encoding"] == "base64" {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    } else {
        s.as_bytes().to_vec()
    }
}

#[tokio::test]
async fn files_pass_from_task_to_task_and_through_the_file_endpoints() {
    let (d, id) = with_session("files").await;

    // A file written by one task is read by the next one, in the same container.
    let first = stask(&d, "s", &id, "echo hello from task one > /work/note.txt").await;
    let second = stask(&d, "s", &id, "cat /work/note.txt").await;
    assert_eq!(second["stdout"], "hello from task one\n");
    assert_eq!(first["container"], second["container"]);
    let (status, info) = get_session(&d, &id).await;
    assert_eq!(status, 200);
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["tasks"], 2, "{info}");
    assert_eq!(info["container"], first["container"], "{info}");

    // ... and by GET .../files/...
    let (status, body) = http(
        &d,
        "GET",
        &format!("/v1/sessions/{id}/files/work/note.txt"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"hello from task one\n");

    // A file PUT through the API is read by a task, binary content intact.
    let blob = binary_blob(70_000);
    let (status, body) = http(
        &d,
        "PUT",
        &format!("/v1/sessions/{id}/files/work/upload.bin"),
        Some(blob.clone()),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(as_json(&body)["bytes"], blob.len());
    let v = stask(&d, "s", &id, "cat /work/upload.bin").await;
    assert_eq!(v["stdout_encoding"], "base64", "binary output is flagged");
    assert_eq!(
        stdout_bytes(&v),
        blob,
        "the task reads the uploaded bytes exactly"
    );
    let (status, back) = http(
        &d,
        "GET",
        &format!("/v1/sessions/{id}/files/work/upload.bin"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(back, blob, "GET returns the uploaded bytes exactly");

    // Binary content a task wrote comes back exactly, and so does an empty file.
    stask(
        &d,
        "s",
        &id,
        r"printf '\377\376\000\001\n' > /work/raw; : > /tmp/empty",
    )
    .await;
    let (status, raw) = http(
        &d,
        "GET",
        &format!("/v1/sessions/{id}/files/work/raw"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(raw, [0xff, 0xfe, 0x00, 0x01, b'\n']);
    let (status, empty) = http(
        &d,
        "GET",
        &format!("/v1/sessions/{id}/files/tmp/empty"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(empty.is_empty());

    // Overwriting replaces the whole file (no leftover tail of the longer old content).
    let (status, _) = http(
        &d,
        "PUT",
        &format!("/v1/sessions/{id}/files/work/note.txt"),
        Some(b"short".to_vec()),
    )
    .await;
    assert_eq!(status, 200);
    let v = stask(&d, "s", &id, "cat /work/note.txt").await;
    assert_eq!(v["stdout"], "short");
}

#[tokio::test]
async fn sessions_never_share_a_container_and_pool_tasks_never_land_in_one() {
    let d = ready().await;
    let (a, b) = (sid(&d, "alice"), sid(&d, "bob"));
    create(&d, "s", &a, None).await;
    create(&d, "s", &b, None).await;
    let va = stask(
        &d,
        "s",
        &a,
        "echo secret-a > /work/only-a; echo a > /tmp/mine",
    )
    .await;
    let vb = stask(
        &d,
        "s",
        &b,
        "echo secret-b > /work/only-b; echo b > /tmp/mine",
    )
    .await;
    let (ca, cb) = (
        va["container"].as_str().unwrap().to_string(),
        vb["container"].as_str().unwrap().to_string(),
    );
    assert_ne!(ca, cb, "two sessions got the same container");

    // docker ps names each session's container after its session.
    let full_a = session_container(&d, "s", &a).await;
    let full_b = session_container(&d, "s", &b).await;
    assert_eq!(short(&full_a), ca);
    assert_eq!(short(&full_b), cb);

    // Neither sees the other's files, through tasks or through the file endpoints.
    let v = d
        .task(
            "s",
            json!({"shell": "cat /tmp/mine; ls -A /work", "session": b}),
        )
        .await
        .1;
    assert_eq!(v["stdout"], "b\nonly-b\n", "{v}");
    let v = d
        .task(
            "s",
            json!({"shell": "cat /tmp/mine; ls -A /work", "session": a}),
        )
        .await
        .1;
    assert_eq!(v["stdout"], "a\nonly-a\n", "{v}");
    let (status, resp) = http(
        &d,
        "GET",
        &format!("/v1/sessions/{b}/files/work/only-a"),
        None,
    )
    .await;
    assert_eq!(
        (status, code_of(&resp)),
        (404, "no_such_path".to_string()),
        "session b reads session a's file"
    );
    let (status, resp) = http(
        &d,
        "GET",
        &format!("/v1/sessions/{a}/files/work/only-b"),
        None,
    )
    .await;
    assert_eq!(
        (status, code_of(&resp)),
        (404, "no_such_path".to_string()),
        "session a reads session b's file"
    );

    // Pool tasks, many at once and in rounds between session tasks, never run in a
    // session's container and never see a session's files.
    let mut pool_containers = std::collections::BTreeSet::new();
    for round in 0..4 {
        let tasks = (0..4).map(|_| d.task("s", json!({"shell": "ls -A /work /tmp"})));
        for (status, v) in futures_util::future::join_all(tasks).await {
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["exit_code"], 0, "{v}");
            let out = v["stdout"].as_str().unwrap();
            assert!(
                !out.contains("only-") && !out.contains("mine"),
                "a pool task saw session files: {out}"
            );
            let c = v["container"].as_str().unwrap().to_string();
            assert!(
                c != ca && c != cb,
                "pool task ran in a session's container ({c}) in round {round}"
            );
            pool_containers.insert(c);
        }
        stask(&d, "s", if round % 2 == 0 { &a } else { &b }, "true").await;
    }
    assert!(!pool_containers.is_empty());
    let (_, info) = get_session(&d, &a).await;
    assert_eq!(
        info["container"], ca,
        "session a kept its container: {info}"
    );

    // Ending a session removes its container rather than giving it back to the pool.
    let (status, body) = http(&d, "DELETE", &format!("/v1/sessions/{a}"), None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(as_json(&body)["state"], "ended");
    wait_for("session a's container to be removed", LONG, || {
        (!exists(&d.instance, &full_a)).then_some(())
    })
    .await;
    for _ in 0..6 {
        let (status, v) = d.task("s", json!({"shell": "ls -A /work"})).await;
        assert_eq!(status, 200, "{v}");
        assert_ne!(v["container"], ca);
        assert_eq!(v["stdout"], "", "{v}");
    }
    assert_unknown_session(&d, &a).await;
    assert!(exists(&d.instance, &full_b), "ending a must not touch b");
    assert_eq!(
        stask(&d, "s", &b, "cat /work/only-b").await["stdout"],
        "secret-b\n"
    );
}

#[tokio::test]
async fn the_idle_timeout_ends_a_session_and_removes_its_container() {
    let d = ready().await;
    let (short_lived, long_lived, lazy) = (sid(&d, "brief"), sid(&d, "stays"), sid(&d, "lazy"));
    let v = create(&d, "s", &short_lived, Some("3s")).await;
    assert_eq!(v["idle_timeout"], "3s");
    create(&d, "s", &long_lived, Some("10m")).await;
    create(&d, "s", &lazy, Some("1s")).await;
    stask(&d, "s", &long_lived, "true").await;

    // A task longer than the idle timeout does not count as idleness.
    let v = stask(
        &d,
        "s",
        &short_lived,
        "echo x > /work/x; sleep 5; cat /work/x",
    )
    .await;
    assert_eq!(v["stdout"], "x\n");
    let (status, info) = get_session(&d, &short_lived).await;
    assert_eq!(status, 200, "the session ended while its task ran: {info}");
    let full = session_container(&d, "s", &short_lived).await;

    // Then, idle, it ends: GET answers 404 and docker no longer shows its container.
    wait_for("the idle session to end", LONG, || {
        (!exists(&d.instance, &full)).then_some(())
    })
    .await;
    assert_unknown_session(&d, &short_lived).await;
    let (status, v) = d
        .task("s", json!({"shell": "true", "session": short_lived}))
        .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["code"], "unknown_session", "{v}");
    // A session that never started ends the same way.
    assert_unknown_session(&d, &lazy).await;

    // The timeout is per session: the other one lives on, with its container.
    let (status, info) = get_session(&d, &long_lived).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["state"], "running");
    assert_eq!(info["idle_timeout"], "10m");
    let metrics = d.get_text("/metrics").await;
    assert!(
        metrics.contains("warmpool_sessions{pool=\"s\"} 1"),
        "one live session: {}",
        metrics
            .lines()
            .filter(|l| l.contains("sessions"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn the_least_recently_used_session_is_ended_to_make_room() {
    let d = Daemon::start(&format!("[server]\nmax_sessions = 2\n{POOL}")).await;
    d.wait_ready(LONG).await;
    let (first, second, third) = (sid(&d, "one"), sid(&d, "two"), sid(&d, "three"));
    create(&d, "s", &first, None).await;
    create(&d, "s", &second, None).await;
    stask(&d, "s", &second, "true").await;
    // The first one is now the most recently used, though the oldest.
    stask(&d, "s", &first, "echo keep > /work/k").await;
    let second_container = session_container(&d, "s", &second).await;

    create(&d, "s", &third, None).await;
    wait_for("the least recently used session to end", LONG, || {
        (!exists(&d.instance, &second_container)).then_some(())
    })
    .await;
    assert_unknown_session(&d, &second).await;
    let (_, list) = d.get("/v1/sessions").await.unwrap();
    let mut ids: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![first.as_str(), third.as_str()];
    want.sort();
    assert_eq!(ids, want, "{list}");
    assert_eq!(
        stask(&d, "s", &first, "cat /work/k").await["stdout"],
        "keep\n"
    );
    stask(&d, "s", &third, "true").await;
}

#[tokio::test]
async fn session_end_command_runs_in_the_container_before_it_is_removed() {
    // warmpool creates its containers itself (no mounts of ours), so the end command's
    // effect is observed inside the container while the DELETE is in flight: it copies the
    // session's state to a new file and then holds for a while, during which `docker exec`
    // finds that copy. That shows it ran, in the session's own container, with the
    // session's files, before the removal; afterwards the container is gone.
    let d = Daemon::start(
        r#"
[pools.e]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 3
session_end_command = ["sh", "-c", "cp /work/state.txt /tmp/saved-by-end-command && sleep 6"]
"#,
    )
    .await;
    d.wait_ready(LONG).await;
    let id = sid(&d, "ending");
    create(&d, "e", &id, None).await;
    stask(&d, "e", &id, "echo wip-42 > /work/state.txt").await;
    let full = session_container(&d, "e", &id).await;
    assert!(
        docker_try(&["exec", &full, "cat", "/tmp/saved-by-end-command"]).is_none(),
        "the end command must not have run yet"
    );

    let started = Instant::now();
    let addr = d.addr.clone();
    let path = format!("/v1/sessions/{id}");
    let delete = tokio::spawn(async move {
        let client = warmpool::client::Client::new(&addr, None);
        let (status, _, body) = send(&client, "DELETE", &path, None).await;
        (status, body)
    });
    let seen = wait_for("the end command's copy inside the container", LONG, || {
        docker_try(&["exec", &full, "cat", "/tmp/saved-by-end-command"])
    })
    .await;
    assert_eq!(seen, "wip-42\n");
    let (status, body) = delete.await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "DELETE did not wait for the end command"
    );
    wait_for("the session's container to be removed", LONG, || {
        (!exists(&d.instance, &full)).then_some(())
    })
    .await;
    assert_unknown_session(&d, &id).await;
}

// --- archives -------------------------------------------------------------------------

/// What a tree holds, for comparison: relative path → kind and content.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File { bytes: Vec<u8>, mode: u32 },
    Link(String),
}

fn tree(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&path).unwrap();
                out.insert(rel, Entry::Link(t.to_string_lossy().into_owned()));
            } else if meta.is_dir() {
                out.insert(rel, Entry::Dir);
                walk(root, &path, out);
            } else {
                out.insert(
                    rel,
                    Entry::File {
                        bytes: std::fs::read(&path).unwrap(),
                        mode: meta.permissions().mode() & 0o777,
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A tree with what archives get wrong: nesting, binary and empty files, names past the
/// 100 bytes of a plain tar header, an executable, a symlink, an empty directory.
fn make_tree(root: &Path) {
    let w = |rel: &str, bytes: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    w("README.md", b"# project\n");
    w("src/main.rs", b"fn main() { println!(\"hi\"); }\n");
    w("data/blob.bin", &binary_blob(100_000));
    w("data/empty", b"");
    w(
        &format!("deep/{}/{}.txt", "d".repeat(70), "n".repeat(90)),
        b"long path\n",
    );
    w(&format!("{}.txt", "x".repeat(140)), b"long name\n");
    w("bin/run.sh", b"#!/bin/sh\necho ran\n");
    std::fs::set_permissions(
        root.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    w("private.key", b"k");
    std::fs::set_permissions(
        root.join("private.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("../README.md", root.join("src/readme-link")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
}

fn host_tar(dir: &Path, format: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg(format!("--format={format}"))
        .arg("-C")
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn host_untar(bytes: &[u8], into: &Path) {
    use std::io::Write;
    let mut child = Command::new("tar")
        .arg("-C")
        .arg(into)
        .args(["-xf", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "host tar refused the archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_directory_round_trips_through_the_archive_endpoints() {
    let (d, id) = with_session("tar").await;
    stask(&d, "s", &id, "true").await;
    let host = tempfile::tempdir().unwrap();
    let src = host.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    let want = tree(&src);

    // Both archive dialects GNU tar writes for long names: GNU long-name entries and pax.
    for (format, dir) in [("gnu", "work/proj"), ("pax", "tmp/proj-pax")] {
        let (status, body) = http(
            &d,
            "PUT",
            &format!("/v1/sessions/{id}/archive/{dir}"),
            Some(host_tar(&src, format)),
        )
        .await;
        assert_eq!(status, 200, "{format}: {}", String::from_utf8_lossy(&body));

        // Tasks see the tree as it was sent.
        let v = stask(
            &d,
            "s",
            &id,
            &format!("cd /{dir} && ./bin/run.sh && cat src/readme-link && md5sum data/blob.bin | cut -c1-32"),
        )
        .await;
        let md5 = {
            let out = Command::new("md5sum")
                .arg(src.join("data/blob.bin"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)[..32].to_string()
        };
        assert_eq!(v["stdout"], format!("ran\n# project\n{md5}\n"), "{format}");

        // And the tree comes back byte for byte: names, kinds, contents, modes, links.
        let (status, tarball) =
            http(&d, "GET", &format!("/v1/sessions/{id}/archive/{dir}"), None).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&tarball));
        let out = host.path().join(format!("back-{format}"));
        std::fs::create_dir(&out).unwrap();
        host_untar(&tarball, &out);
        let got = tree(&out);
        let names = |t: &BTreeMap<String, Entry>| t.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&got), names(&want), "{format}: the names differ");
        for (name, entry) in &want {
            assert!(got[name] == *entry, "{format}: {name} differs");
        }
    }
}

#[tokio::test]
async fn file_endpoints_answer_clear_errors() {
    let d = Daemon::start(&format!("[server]\nmax_request_body = \"1MiB\"\n{POOL}")).await;
    d.wait_ready(LONG).await;
    let id = sid(&d, "errs");
    create(&d, "s", &id, None).await;
    let code = |body: &[u8]| {
        as_json(body)["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let message = |body: &[u8]| {
        as_json(body)["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };

    // Before its first task a session has no container, so no files yet: said plainly.
    for (method, path) in [
        ("GET", format!("/v1/sessions/{id}/files/work/a")),
        ("PUT", format!("/v1/sessions/{id}/files/work/a")),
        ("GET", format!("/v1/sessions/{id}/archive/work")),
    ] {
        let body = (method == "PUT").then(|| b"x".to_vec());
        let (status, resp) = http(&d, method, &path, body).await;
        assert_eq!(
            status,
            400,
            "{method} {path}: {}",
            String::from_utf8_lossy(&resp)
        );
        assert!(
            message(&resp).contains("first task"),
            "{}",
            String::from_utf8_lossy(&resp)
        );
    }
    let (_, info) = get_session(&d, &id).await;
    assert_eq!(
        info["state"], "not_started",
        "a file call must not start the session: {info}"
    );

    stask(&d, "s", &id, "mkdir -p /work/dir && echo f > /work/dir/f").await;
    // method, path after the session, body, status, error code
    type Case<'a> = (&'a str, &'a str, Option<&'a [u8]>, u16, &'a str);
    let cases: &[Case] = &[
        ("GET", "files/work/missing.txt", None, 404, "no_such_path"),
        ("GET", "files/nowhere/at/all", None, 404, "no_such_path"),
        ("GET", "archive/work/missing-dir", None, 404, "no_such_path"),
        ("PUT", "files/etc/x", Some(b"x"), 403, "not_writable"),
        ("PUT", "archive/etc/newdir", Some(b""), 403, "not_writable"),
        ("GET", "files/work/dir", None, 400, "wrong_kind"),
        ("PUT", "files/work/dir", Some(b"x"), 400, "wrong_kind"),
        ("GET", "archive/work/dir/f", None, 400, "wrong_kind"),
        (
            "PUT",
            "archive/work/t",
            Some(b"this is not a tar archive at all"),
            400,
            "bad_archive",
        ),
        (
            "PUT",
            "archive/work/t",
            Some(&[b'j'; 2048]),
            400,
            "bad_archive",
        ),
        ("GET", "files/work/../etc/passwd", None, 400, "invalid_path"),
    ];
    for (method, rest, body, want_status, want_code) in cases {
        let path = format!("/v1/sessions/{id}/{rest}");
        let (status, resp) = http(&d, method, &path, body.map(<[u8]>::to_vec)).await;
        assert_eq!(
            (status, code(&resp).as_str()),
            (*want_status, *want_code),
            "{method} {path}: {}",
            String::from_utf8_lossy(&resp)
        );
        assert!(!message(&resp).is_empty());
    }
    let (_, resp) = http(
        &d,
        "GET",
        &format!("/v1/sessions/{id}/files/work/missing.txt"),
        None,
    )
    .await;
    assert!(
        message(&resp).contains("/work/missing.txt"),
        "the message names the path: {}",
        message(&resp)
    );

    // Uploads are bounded by max_request_body.
    let (status, resp) = http(
        &d,
        "PUT",
        &format!("/v1/sessions/{id}/files/work/big"),
        Some(vec![b'x'; 2 << 20]),
    )
    .await;
    assert_eq!(
        (status, code(&resp).as_str()),
        (413, "body_too_large"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    // Reads stream in bounded chunks (issue 11): a file larger than max_request_body is
    // read back whole, without the daemon ever holding it.
    stask(&d, "s", &id, "head -c 2000000 /dev/zero > /work/big").await;
    let (status, resp) = http(
        &d,
        "GET",
        &format!("/v1/sessions/{id}/files/work/big"),
        None,
    )
    .await;
    assert_eq!(
        (status, resp.len()),
        (200, 2_000_000),
        "{}",
        String::from_utf8_lossy(&resp[..resp.len().min(200)])
    );

    // Unknown sessions, and a session's task sent to another pool.
    let (status, resp) = http(&d, "GET", "/v1/sessions/no-such-session/files/work/a", None).await;
    assert_eq!((status, code(&resp).as_str()), (404, "unknown_session"));
    // The session still works after all that.
    assert_eq!(
        stask(&d, "s", &id, "cat /work/dir/f").await["stdout"],
        "f\n"
    );
}

#[tokio::test]
async fn concurrent_tasks_of_a_session_run_one_at_a_time_in_arrival_order() {
    let (d, id) = with_session("fifo").await;
    stask(&d, "s", &id, "true").await;
    // Each task holds a lock directory for its whole run: `mkdir` fails if another task
    // holds it, which the task reports as exit 99.
    let script = |file: &str, pause: &str| {
        format!(
            "mkdir /work/lock || exit 99; sleep {pause}; echo $I >> /work/{file}; rmdir /work/lock"
        )
    };

    // All ten at once: they never overlap, and every one runs.
    let burst = (0..10).map(|i| {
        d.task(
            "s",
            json!({"shell": script("burst", "0.2"), "env": {"I": i.to_string()}, "session": id}),
        )
    });
    for (status, v) in futures_util::future::join_all(burst).await {
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["exit_code"], 0,
            "two tasks of one session overlapped: {v}"
        );
    }
    let v = stask(&d, "s", &id, "sort -n /work/burst | tr '\\n' ' '").await;
    assert_eq!(v["stdout"], "0 1 2 3 4 5 6 7 8 9 ");

    // Sent one after another while the first still runs: they queue, and run in the
    // order they arrived.
    let mut handles = Vec::new();
    for i in 0..10 {
        let addr = d.addr.clone();
        let pause = if i == 0 { "4" } else { "0.1" };
        let body =
            json!({"shell": script("order", pause), "env": {"I": i.to_string()}, "session": id});
        handles.push(tokio::spawn(async move {
            let client = warmpool::client::Client::new(&addr, None);
            run_task(&client, "s", body).await
        }));
        if i == 0 {
            let deadline = Instant::now() + LONG;
            loop {
                let (_, info) = get_session(&d, &id).await;
                if info["busy"] == true {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the first task never started: {info}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut queued = Vec::new();
    for h in handles {
        let (status, v) = h.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["exit_code"], 0,
            "two tasks of one session overlapped: {v}"
        );
        queued.push(v["queued_ms"].as_f64().unwrap());
    }
    let v = stask(&d, "s", &id, "tr '\\n' ' ' < /work/order").await;
    assert_eq!(
        v["stdout"], "0 1 2 3 4 5 6 7 8 9 ",
        "tasks ran out of arrival order"
    );
    assert!(
        queued[1] > 500.0,
        "the second task did not wait for the first: {queued:?}"
    );
}

#[tokio::test]
async fn a_session_survives_kill_9_and_a_restart_and_a_graceful_stop_ends_it() {
    let mut d = ready().await;
    let id = sid(&d, "crash");
    create(&d, "s", &id, Some("10m")).await;
    let v = stask(
        &d,
        "s",
        &id,
        "echo before the crash > /work/memo; echo t > /tmp/t",
    )
    .await;
    let container = v["container"].as_str().unwrap().to_string();
    let full = session_container(&d, "s", &id).await;

    d.kill9();
    assert!(
        exists(&d.instance, &full),
        "the session's container outlives the daemon"
    );
    d.restart().await;
    d.wait_ready(LONG).await;

    let (status, info) = get_session(&d, &id).await;
    assert_eq!(status, 200, "the session was lost in the restart: {info}");
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["container"], container, "{info}");
    let v = stask(&d, "s", &id, "cat /work/memo /tmp/t").await;
    assert_eq!(v["stdout"], "before the crash\nt\n");
    assert_eq!(v["container"], container);
    // The pool serves as before, and not from the session's container.
    for _ in 0..4 {
        let (status, v) = d.task("s", json!({"shell": "ls -A /work"})).await;
        assert_eq!(status, 200, "{v}");
        assert_ne!(v["container"], container);
        assert_eq!(v["stdout"], "");
    }
    assert_eq!(
        containers(&d.instance, None)
            .iter()
            .filter(|c| **c == full)
            .count(),
        1
    );

    // A graceful stop ends sessions: nothing of this daemon is left on the engine.
    assert!(d.stop().success());
    assert!(
        containers(&d.instance, None).is_empty(),
        "left after a graceful stop: {:?}\n{}",
        named_containers(&d.instance),
        d.log()
    );
}

#[tokio::test]
async fn the_cli_runs_tasks_in_a_session_and_status_lists_sessions() {
    let (d, id) = with_session("cli").await;
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_warmpool"))
            .args(args)
            .env_remove("WARMPOOL_ADDR")
            .env_remove("WARMPOOL_TOKEN")
            .output()
            .unwrap()
    };
    let out = cli(&[
        "run",
        "s",
        "--session",
        &id,
        "--addr",
        &d.addr,
        "--",
        "sh",
        "-c",
        "echo from-cli > /work/c",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "run",
        "s",
        "--session",
        &id,
        "--addr",
        &d.addr,
        "--",
        "sh",
        "-c",
        "cat /work/c; exit 3",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-cli\n");
    assert_eq!(
        out.status.code(),
        Some(3),
        "the task's exit code is the CLI's"
    );
    let v = stask(&d, "s", &id, "cat /work/c").await;
    assert_eq!(
        v["stdout"], "from-cli\n",
        "the CLI ran in the session's container"
    );

    let out = cli(&[
        "run",
        "s",
        "--session",
        "no-such-session",
        "--addr",
        &d.addr,
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-session"));

    let out = cli(&["status", "--addr", &d.addr]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("status does not list the session:\n{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &cols[..5],
        [
            id.as_str(),
            "s",
            "running",
            v["container"].as_str().unwrap(),
            "3"
        ],
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("s ")),
        "status still lists the pools:\n{text}"
    );
}
