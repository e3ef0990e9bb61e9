//! A pool whose containers the real engine refuses for good (issue 16): Docker answers a
//! create naming a runtime it does not have with a 400, which no retry gets past. The pool
//! is failed, says so once, shows it in the API and `/readyz`, answers its tasks 503
//! `pool_failed`, sends the engine no stream of retries, and leaves the other pool serving;
//! a reload that fixes its config clears it.
//!
//! And persistent workspaces on an engine that is not on the daemon's host (a `tcp://` front
//! of the local engine stands in for a remote one): not a failed pool, but one engine volume
//! per session, mounted at a cold start.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const LONG: Duration = Duration::from_secs(90);

/// A unix-socket proxy in front of the engine that counts the container creates asked for
/// whose name starts with `name_prefix`, on the wire: a refused create leaves no container
/// behind, so neither `docker ps` nor `docker events` would show it.
struct EngineProxy {
    socket: PathBuf,
    creates: Arc<AtomicUsize>,
}

fn engine_proxy(dir: &Path, name_prefix: &str) -> EngineProxy {
    let upstream = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string());
    let socket = dir.join("engine.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind the proxy socket");
    listener.set_nonblocking(true).unwrap();
    let creates = Arc::new(AtomicUsize::new(0));
    // bollard asks `POST /v1.NN/containers/create?name=NAME`.
    let needle = format!("/containers/create?name={name_prefix}").into_bytes();
    let counter = creates.clone();
    // On a thread and runtime of its own: the harness blocks the test's thread while it
    // waits for the daemon to stop, and the daemon's shutdown goes through this proxy.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(proxy_loop(listener, upstream, needle, counter));
    });
    EngineProxy { socket, creates }
}

async fn proxy_loop(
    listener: std::os::unix::net::UnixListener,
    upstream: String,
    needle: Vec<u8>,
    counter: Arc<AtomicUsize>,
) {
    let listener = UnixListener::from_std(listener).unwrap();
    while let Ok((client, _)) = listener.accept().await {
        let (upstream, needle, counter) = (upstream.clone(), needle.clone(), counter.clone());
        tokio::spawn(async move {
            let Ok(engine) = UnixStream::connect(&upstream).await else {
                return;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_engine, mut to_engine) = engine.into_split();
            let up = async {
                let mut buf = vec![0u8; 64 * 1024];
                // The end of the previous read, so a request line split across two
                // reads is still seen once.
                let mut window: Vec<u8> = Vec::new();
                loop {
                    let n = match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    window.extend_from_slice(&buf[..n]);
                    let found = window
                        .windows(needle.len())
                        .filter(|w| *w == needle.as_slice())
                        .count();
                    counter.fetch_add(found, Ordering::SeqCst);
                    let keep = window.len().min(needle.len() - 1);
                    window.drain(..window.len() - keep);
                    if to_engine.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = to_engine.shutdown().await;
            };
            let down = async {
                let _ = tokio::io::copy(&mut from_engine, &mut to_client).await;
                let _ = to_client.shutdown().await;
            };
            tokio::join!(up, down);
        });
    }
}

fn config(proxy: &EngineProxy, bad_runtime: bool) -> String {
    let runtime = if bad_runtime {
        "\n[pools.bad.security]\nruntime = \"warmpool-no-such-runtime\"\n"
    } else {
        ""
    };
    format!(
        "[docker]\nhost = \"unix://{}\"\n\n\
         [pools.good]\nimage = \"{IMAGE}\"\nmin = 1\nwarm = 1\nmax = 2\n\n\
         [pools.bad]\nimage = \"{IMAGE}\"\nmin = 1\nwarm = 1\nmax = 2\n{runtime}",
        proxy.socket.display()
    )
}

fn pool_in<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no pool {name} in {list}"))
}

/// Pool `good` warms and serves a task beside the failed pool `failed`, and `GET /v1/pools`
/// shows `failed` as failed and `good` as ok. Returns that list.
async fn good_serves_beside(d: &Daemon, failed: &str) -> Value {
    let good = wait_pool(d, "good", "pool good warm", LONG, |v| v["idle"] == 1).await;
    assert_eq!(good["state"], "ok", "{good}");
    let (status, r) = d.task("good", json!({"cmd": ["echo", "served"]})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["stdout"], "served\n", "{r}");
    let (status, list) = d.get("/v1/pools").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(pool_in(&list, failed)["state"], "failed", "{list}");
    assert_eq!(pool_in(&list, "good")["state"], "ok", "{list}");
    list
}

#[tokio::test]
async fn a_runtime_the_engine_lacks_fails_the_pool_once_without_a_retry_storm() {
    let scratch = tempfile::tempdir().unwrap();
    let proxy = engine_proxy(scratch.path(), "warmpool-bad-");
    let mut d = Daemon::start(&config(&proxy, true)).await;

    // Failed, in the pool's own status, with the engine's words and the fix.
    let bad = wait_pool(&d, "bad", "pool bad failed", LONG, |v| {
        v["state"] == "failed"
    })
    .await;
    let failed_at = Instant::now();
    let reason = bad["failure"]["reason"].as_str().unwrap().to_string();
    assert!(
        reason.to_lowercase().contains("runtime") && reason.contains("warmpool-no-such-runtime"),
        "the engine's words: {bad}"
    );
    let hint = bad["failure"]["hint"].as_str().unwrap();
    assert!(hint.contains("security.runtime"), "{bad}");
    assert_eq!(bad["failure"]["retry_every_seconds"], 30.0, "{bad}");
    assert_eq!(bad["live"], 0, "{bad}");
    // Nothing of it exists on the engine.
    assert!(containers(&d.instance, Some("bad")).is_empty());

    // The other pool serves, and the list shows both.
    let list = good_serves_beside(&d, "bad").await;
    assert_eq!(pool_in(&list, "good")["failure"], Value::Null, "{list}");

    // /readyz names it.
    let (status, ready) = d.get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["error"]["code"], "not_ready", "{ready}");
    let why = ready["error"]["message"].as_str().unwrap();
    assert!(
        why.contains("pool bad is failed") && why.contains("warmpool-no-such-runtime"),
        "{why}"
    );

    // Its task answers at once, 503 pool_failed, naming the pool, the words and the fix.
    let asked = Instant::now();
    let (status, headers, r) = task_with_headers(&d, "bad", json!({"cmd": ["echo"]})).await;
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["error"]["code"], "pool_failed", "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("pool bad"), "{message}");
    assert!(message.contains(&reason), "{message}");
    assert!(message.contains("security.runtime"), "{message}");
    assert_eq!(retry_after(&headers), Some(30));
    // The pool's acquire_timeout is 30 s by default: a task that queued would take that.
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        metric(&d, "warmpool_pool_failed", &[("pool", "bad")]).await,
        1.0
    );
    assert_eq!(
        metric(&d, "warmpool_pool_failed", &[("pool", "good")]).await,
        0.0
    );

    // No retry storm: one create reached the engine, and no more within 12 s (the old
    // back-off would have sent five: 0.5, 1, 2, 4 and 8 s); its retry is due after 30 s.
    // Podman would ignore the runtime, so the daemon refuses it before asking (none reach it).
    let window = Duration::from_secs(12).saturating_sub(failed_at.elapsed());
    tokio::time::sleep(window).await;
    assert_eq!(
        proxy.creates.load(Ordering::SeqCst),
        if engine_is_podman() { 0 } else { 1 },
        "creates of pool bad"
    );
    assert!(
        failed_at.elapsed() < Duration::from_secs(30),
        "the window overran"
    );
    // Logged once, at error level, with the engine's words and the fix.
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refuses to start this pool's containers"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("ERROR"), "{}", lines[0]);
    assert!(
        lines[0].contains("warmpool-no-such-runtime"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("security.runtime"), "{}", lines[0]);

    // A reload that drops the runtime clears it: the pool starts and serves.
    std::fs::write(
        &d.config_path,
        format!(
            "[server]\nlisten = \"{}\"\nshutdown_grace = \"1s\"\n{}",
            d.addr.trim_start_matches("http://"),
            config(&proxy, false)
        ),
    )
    .unwrap();
    let (status, r) = d.post_raw("/v1/admin/reload", Vec::new()).await;
    assert_eq!(status, 200, "{r}");
    let bad = wait_pool(&d, "bad", "pool bad serving", LONG, |v| {
        v["state"] == "ok" && v["idle"] == 1
    })
    .await;
    assert_eq!(bad["failure"], Value::Null, "{bad}");
    let (status, r) = d.task("bad", json!({"cmd": ["echo", "back"]})).await;
    assert_eq!(status, 200, "{r}");
    let (status, ready) = d.get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{ready}");
    assert_eq!(
        metric(&d, "warmpool_pool_failed", &[("pool", "bad")]).await,
        0.0
    );
    assert!(d.stop().success(), "{}", d.log());
}

/// Untags the test's stand-in image when the test ends, however it ends.
struct Untag(String);

impl Drop for Untag {
    fn drop(&mut self) {
        let _ = docker_try(&["rmi", &self.0]);
    }
}

/// warmpool never pulls: a pool whose image the engine does not have is failed at its first
/// create, naming the image and the fix, its tasks answer 503 `pool_failed` at once, nothing
/// of it exists, the other pool serves; once the image is there, the pool's periodic retry
/// (`health_check_interval`) starts it by itself.
#[tokio::test]
async fn a_missing_image_fails_the_pool_naming_it_and_it_starts_once_the_image_is_there() {
    let image = format!("warmpool-test/missing-{}:latest", std::process::id());
    let _untag = Untag(image.clone());
    let config = format!(
        "[pools.good]\nimage = \"{IMAGE}\"\nmin = 1\nwarm = 1\nmax = 2\n\n\
         [pools.bad]\nimage = \"{image}\"\nmin = 1\nwarm = 1\nmax = 2\n\
         health_check_interval = \"2s\"\n"
    );
    let mut d = Daemon::start(&config).await;

    let bad = wait_pool(&d, "bad", "pool bad failed", LONG, |v| {
        v["state"] == "failed"
    })
    .await;
    let reason = bad["failure"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("image {image} is not on the engine (")),
        "{bad}"
    );
    assert!(reason.contains("never pulls"), "{bad}");
    let hint = bad["failure"]["hint"].as_str().unwrap();
    assert!(
        hint.contains("docker load") && hint.contains("pools.toml"),
        "{bad}"
    );
    assert_eq!(bad["failure"]["retry_every_seconds"], 2.0, "{bad}");
    assert!(containers(&d.instance, Some("bad")).is_empty());
    good_serves_beside(&d, "bad").await;

    let (status, r) = d.task("bad", json!({"cmd": ["echo"]})).await;
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["error"]["code"], "pool_failed", "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains(&image), "{message}");
    assert!(message.contains("docker load"), "{message}");

    // Built (here: tagged) on the engine: the next retry starts it, with no reload.
    docker(&["tag", IMAGE, &image]);
    let bad = wait_pool(&d, "bad", "pool bad serving", LONG, |v| {
        v["state"] == "ok" && v["idle"] == 1
    })
    .await;
    assert_eq!(bad["failure"], Value::Null, "{bad}");
    let (status, r) = d.task("bad", json!({"cmd": ["echo", "built"]})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["stdout"], "built\n", "{r}");
    assert!(d.stop().success(), "{}", d.log());
}

/// A `tcp://` front of the local engine on loopback: to the daemon the engine is remote (its
/// address is not `unix://`), while the containers still run on this host, where the test
/// can see them. A byte copy each way, so the engine's hijacked attach streams pass too.
fn tcp_engine_proxy() -> String {
    let upstream = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the TCP proxy");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    // Its own thread and runtime, as `engine_proxy`: the daemon's shutdown goes through it
    // while the harness blocks the test's thread.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut engine) = UnixStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                });
            }
        });
    });
    format!("tcp://{addr}")
}

/// This instance's workspace volumes.
fn volumes(instance: &str) -> Vec<String> {
    let filter = format!("label=warmpool.instance={instance}");
    docker(&["volume", "ls", "-q", "--filter", &filter])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Removes this instance's volumes when dropped (after the daemon, declared before it), so
/// a failed test leaves none behind.
struct VolumeSweep(String);

impl Drop for VolumeSweep {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        for v in volumes(&self.0) {
            let _ = docker_try(&["volume", "rm", "-f", &v]);
        }
    }
}

/// Runs `shell` in session `id` of pool `ws`; 200 expected.
async fn in_session(d: &Daemon, id: &str, shell: &str) -> Value {
    let (status, v) = d.task("ws", json!({"session": id, "shell": shell})).await;
    assert_eq!(status, 200, "{v}\n{}", d.log());
    v
}

/// The `/workspace` mount of a container, as `docker inspect` shows it.
fn workspace_mount(container: &str) -> Option<Value> {
    inspect(container)["Mounts"]
        .as_array()?
        .iter()
        .find(|m| m["Destination"] == "/workspace")
        .cloned()
}

#[tokio::test]
async fn a_persistent_pool_on_a_remote_engine_keeps_workspaces_in_named_volumes() {
    let root = tempfile::tempdir().unwrap();
    let host = tcp_engine_proxy();
    let config = format!(
        "[docker]\nhost = \"{host}\"\n\n\
         [pools.good]\nimage = \"{IMAGE}\"\nmin = 1\nwarm = 1\nmax = 2\n\n\
         [pools.ws]\nimage = \"{IMAGE}\"\nmin = 1\nwarm = 1\nmax = 4\n\
         session_workspace = \"persistent\"\nworkspace_root = \"{}\"\n\
         session_idle_timeout = \"1s\"\n",
        root.path().display()
    );
    let mut sweep = VolumeSweep(String::new());
    let mut d = Daemon::start(&config).await;
    sweep.0 = d.instance.clone();

    // Not failed: both pools warm, and the warm container of ws has no /workspace at all
    // (no slot, no bind), nor is there a slot on this host.
    let ws = wait_pool(&d, "ws", "pool ws warm", LONG, |v| v["idle"] == 1).await;
    assert_eq!(ws["state"], "ok", "{ws}");
    wait_pool(&d, "good", "pool good warm", LONG, |v| v["idle"] == 1).await;
    let warm = containers(&d.instance, Some("ws"));
    assert_eq!(warm.len(), 1, "{warm:?}");
    assert_eq!(workspace_mount(&warm[0]), None);
    assert!(!root.path().join(&d.instance).join("slots").exists());

    // A session's first task: a container made for it, its volume mounted at /workspace.
    let id = format!("{}-rv", d.instance);
    let volume = format!("warmpool-{}-ws-{id}", d.instance);
    let (status, v) = d
        .post_raw(
            "/v1/sessions",
            json!({"pool": "ws", "id": id}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let v = in_session(
        &d,
        &id,
        "echo kept > /workspace/f.txt && cat /workspace/f.txt",
    )
    .await;
    assert_eq!(v["stdout"], "kept\n", "{v}");
    assert_eq!(v["cold_start"], true, "{v}");
    let first = full_id(&d.instance, v["container"].as_str().unwrap());
    assert!(!warm.contains(&first), "not the warm container");
    let mount = workspace_mount(&first).expect("a /workspace mount");
    assert_eq!(mount["Type"], "volume", "{mount}");
    assert_eq!(mount["Name"], volume.as_str(), "{mount}");
    assert_eq!(mount["RW"], true, "{mount}");
    let labels: Value = serde_json::from_str(&docker(&[
        "volume",
        "inspect",
        "--format",
        "{{json .Labels}}",
        &volume,
    ]))
    .unwrap();
    assert_eq!(labels["warmpool.session"], id.as_str(), "{labels}");
    assert_eq!(labels["warmpool.pool"], "ws", "{labels}");
    assert_eq!(labels["warmpool.instance"], d.instance.as_str(), "{labels}");

    // Idle end: the container goes, the volume stays; the next task resumes with a new
    // container on the same volume, the file in place.
    wait_for("the session to go idle", LONG, || {
        (!exists(&first)).then_some(())
    })
    .await;
    let (_, s) = d.get(&format!("/v1/sessions/{id}")).await.unwrap();
    assert_eq!(s["state"], "idle", "{s}");
    assert_eq!(volumes(&d.instance), vec![volume.clone()]);
    let v = in_session(&d, &id, "cat /workspace/f.txt").await;
    assert_eq!(v["stdout"], "kept\n", "{v}");
    let second = full_id(&d.instance, v["container"].as_str().unwrap());
    assert_ne!(second, first);
    assert_eq!(workspace_mount(&second).unwrap()["Name"], volume.as_str());

    // Another session does not see it.
    let other = format!("{}-other", d.instance);
    d.post_raw(
        "/v1/sessions",
        json!({"pool": "ws", "id": other}).to_string().into_bytes(),
    )
    .await;
    let v = in_session(&d, &other, "ls -A /workspace; echo end").await;
    assert_eq!(v["stdout"], "end\n", "{v}");

    // A daemon killed and restarted: the session resumes with its volume.
    d.kill9();
    d.restart().await;
    d.wait_ready(LONG).await;
    let v = in_session(&d, &id, "cat /workspace/f.txt").await;
    assert_eq!(v["stdout"], "kept\n", "after kill -9 and a restart: {v}");

    // Listed, with the engine's size of the volume (Docker's df; Podman may not say).
    let (status, v) = d.get("/v1/workspaces").await.unwrap();
    assert_eq!(status, 200, "{v}");
    let mine = v["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in {v}"))
        .clone();
    assert_eq!(mine["pool"], "ws", "{mine}");
    if !engine_is_podman() {
        assert_eq!(mine["bytes"], 5, "{mine}");
    }

    // Deleted with the session, and by the workspace endpoint: no volume left.
    let (status, _, body) = d
        .request(
            "DELETE",
            &format!("/v1/sessions/{id}?workspace=delete"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let name_filter = format!("name={volume}");
    assert_eq!(
        docker(&["volume", "ls", "-q", "--filter", &name_filter]).trim(),
        "",
        "the session's volume"
    );
    let (status, _, body) = d
        .request("DELETE", &format!("/v1/workspaces/{other}"), None)
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        volumes(&d.instance).is_empty(),
        "{:?}",
        volumes(&d.instance)
    );
    assert!(d.stop().success(), "{}", d.log());
}
