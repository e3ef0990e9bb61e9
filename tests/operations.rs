//! Operating a live daemon against the real engine (issue 7): hot reloads under a steady
//! stream of tasks, a refused reload, the API token and the unix socket.

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use support::*;

const LONG: Duration = Duration::from_secs(90);

/// Writes a new pools.toml for a running daemon, keeping its listen address.
fn write_config(d: &Daemon, server_extra: &str, pools: &str) {
    let addr = d.addr.trim_start_matches("http://");
    std::fs::write(
        &d.config_path,
        format!("[server]\nlisten = \"{addr}\"\n{server_extra}\n{pools}"),
    )
    .unwrap();
}

async fn reload(d: &Daemon) -> (u16, Value) {
    d.post_raw("/v1/admin/reload", Vec::new()).await
}

fn sighup(d: &Daemon) {
    let status = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// What `docker inspect` says of one container, reduced to what a reload may change.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    image: String,
    env: Vec<String>,
    spec: String,
}

fn seen(id: &str) -> Option<Seen> {
    let text = docker_try(&["inspect", id])?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let c = &v[0]["Config"];
    Some(Seen {
        image: image_name(c["Image"].as_str()?),
        env: c["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str().map(str::to_string))
            .collect(),
        spec: c["Labels"]["warmpool.spec"].as_str()?.to_string(),
    })
}

/// The running containers of one pool, by id.
fn pool_view(d: &Daemon, pool: &str) -> BTreeMap<String, Seen> {
    containers(&d.instance, Some(pool))
        .into_iter()
        .filter_map(|id| Some((id.clone(), seen(&id)?)))
        .collect()
}

/// Fails unless every container of `before` is still there with the same image, env and
/// spec: a reload that should not touch a pool replaced none of them. The autoscaler (its
/// forecast, under the test's task stream) may add containers meanwhile; that is not a touch.
fn assert_untouched(now: &BTreeMap<String, Seen>, before: &BTreeMap<String, Seen>, what: &str) {
    for (id, seen) in before {
        assert_eq!(
            now.get(id),
            Some(seen),
            "{what}: {id} was replaced or changed\nbefore: {before:?}\nnow: {now:?}"
        );
    }
}

/// One task of the background stream.
#[derive(Debug, Clone)]
struct Outcome {
    pool: String,
    sent: Instant,
    done: Instant,
    status: u16,
    body: Value,
}

/// Submits tasks to `pool` one after another until `stop`, recording every answer.
fn stream(
    d: &Daemon,
    pool: &str,
    stop: Arc<AtomicBool>,
    log: Arc<parking_lot::Mutex<Vec<Outcome>>>,
) -> tokio::task::JoinHandle<()> {
    let addr = d.addr.clone();
    let pool = pool.to_string();
    tokio::spawn(async move {
        let client = warmpool::client::Client::new(&addr, None);
        let body = json!({"shell": "echo ${MODE:-none}"})
            .to_string()
            .into_bytes();
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let path = format!("/v1/pools/{pool}/tasks");
            let (status, body) = common::deadline(format!("POST {path}"), async {
                match client.request("POST", &path, Some(body.clone())).await {
                    Ok(resp) => {
                        let status = resp.status;
                        match resp.bytes().await {
                            Ok(b) => (status, serde_json::from_slice(&b).unwrap_or(Value::Null)),
                            Err(e) => (0, json!(e.to_string())),
                        }
                    }
                    Err(e) => (0, json!(e.to_string())),
                }
            })
            .await;
            log.lock().push(Outcome {
                pool: pool.clone(),
                sent,
                done: Instant::now(),
                status,
                body,
            });
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    })
}

/// Waits until every stream of `pools` has `more` answers beyond those logged now: the
/// streams run (instead of a fixed sleep that may be too short on a loaded machine).
async fn wait_answers(log: &Arc<parking_lot::Mutex<Vec<Outcome>>>, pools: &[&str], more: usize) {
    let count = |p: &str| log.lock().iter().filter(|o| o.pool == p).count();
    let base: Vec<usize> = pools.iter().map(|p| count(p)).collect();
    wait_for(
        &format!("{more} more answers on each of {pools:?}"),
        LONG,
        || {
            pools
                .iter()
                .zip(&base)
                .all(|(p, b)| count(p) >= b + more)
                .then_some(())
        },
    )
    .await;
}

/// Removes the second image tag this test makes, even when it fails.
struct Tag(String);

impl Drop for Tag {
    fn drop(&mut self) {
        let _ = docker_try(&["rmi", &self.0]);
    }
}

const KEEP: &str = r#"
[pools.keep]
image = "warmpool/agent:latest"
min = 2
warm = 2
max = MAX
max_uses = 1000000
# The thresholds alone: the test checks that a reload touches none of keep's containers,
# and the forecast would add some for the steady stream of tasks.
predictive = false
"#;

fn pools(
    keep_max: usize,
    env_mode: &str,
    img_image: &str,
    with_gone: bool,
    with_fresh: bool,
) -> String {
    let mut s = KEEP.replace("MAX", &keep_max.to_string());
    s += &format!(
        r#"
[pools.envp]
image = "warmpool/agent:latest"
min = 1
warm = 2
max = 3
env = {{ MODE = "{env_mode}" }}

[pools.imgp]
image = "{img_image}"
min = 1
warm = 2
max = 3
"#
    );
    if with_gone {
        s += r#"
[pools.gone]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
"#;
    }
    if with_fresh {
        s += r#"
[pools.fresh]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
"#;
    }
    s
}

#[tokio::test]
async fn reloads_under_a_steady_stream_of_tasks_lose_none_and_touch_only_what_changed() {
    ensure_image();
    let mut d = Daemon::start(&pools(2, "one", IMAGE, true, false)).await;
    let tag = Tag(format!("warmpool/agent:reload-{}", d.instance));
    docker(&["tag", IMAGE, &tag.0]);
    d.wait_ready(LONG).await;

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut streams: Vec<_> = ["keep", "envp", "imgp", "gone"]
        .iter()
        .map(|p| stream(&d, p, stop.clone(), log.clone()))
        .collect();
    wait_answers(&log, &["keep", "envp", "imgp", "gone"], 3).await;
    let keep_before = pool_view(&d, "keep");
    let env_before = pool_view(&d, "envp");
    let img_before = pool_view(&d, "imgp");
    assert_eq!(keep_before.len(), 2, "{keep_before:?}");
    assert!(!env_before.is_empty() && !img_before.is_empty());
    let old_env_spec = env_before.values().next().unwrap().spec.clone();
    let old_img_spec = img_before.values().next().unwrap().spec.clone();

    // 1. By the endpoint: a pool added, and keep's max raised (sizing only).
    write_config(&d, "", &pools(4, "one", IMAGE, true, true));
    let (status, v) = reload(&d).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changes"]["added"], json!(["fresh"]), "{v}");
    assert_eq!(v["changes"]["retuned"], json!(["keep"]), "{v}");
    assert_eq!(v["changes"]["replaced"], json!([]), "{v}");
    streams.push(stream(&d, "fresh", stop.clone(), log.clone()));
    let (_, keep) = d.get("/v1/pools/keep").await.unwrap();
    assert_eq!(keep["max"], 4, "{keep}");

    // 2. By SIGHUP: one pool's env and another's image change; they are replaced.
    write_config(&d, "", &pools(4, "two", &tag.0, true, true));
    sighup(&d);
    let env_after = wait_for("envp's containers to carry the new env", LONG, || {
        let view = pool_view(&d, "envp");
        (!view.is_empty()
            && view.iter().all(|(id, s)| {
                !env_before.contains_key(id) && s.env.iter().any(|e| e == "MODE=two")
            }))
        .then_some(view)
    })
    .await;
    let img_after = wait_for("imgp's containers to run the new image", LONG, || {
        let view = pool_view(&d, "imgp");
        (!view.is_empty()
            && view
                .iter()
                .all(|(id, s)| !img_before.contains_key(id) && s.image == tag.0))
        .then_some(view)
    })
    .await;
    for (what, view, old) in [
        ("envp", &env_after, &old_env_spec),
        ("imgp", &img_after, &old_img_spec),
    ] {
        let specs: BTreeSet<&str> = view.values().map(|s| s.spec.as_str()).collect();
        assert_eq!(specs.len(), 1, "{what}: one spec label: {view:?}");
        assert!(
            !specs.contains(old.as_str()),
            "{what}: the spec label did not change: {view:?}"
        );
    }
    assert_eq!(
        metric(&d, "warmpool_config_reloads_total", &[("result", "ok")]).await,
        2.0
    );

    // 3. By the endpoint: a pool removed.
    write_config(&d, "", &pools(4, "two", &tag.0, false, true));
    let reload_sent = Instant::now();
    let (status, v) = reload(&d).await;
    let reload_done = Instant::now();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changes"]["removed"], json!(["gone"]), "{v}");
    wait_for("gone's containers to be removed", LONG, || {
        containers(&d.instance, Some("gone"))
            .is_empty()
            .then_some(())
    })
    .await;
    wait_answers(&log, &["keep", "envp", "imgp"], 3).await;
    stop.store(true, Ordering::Relaxed);
    for s in streams {
        s.await.unwrap();
    }

    // Zero failed tasks on the pools that stay.
    let log = log.lock().clone();
    let count = |p: &str| log.iter().filter(|o| o.pool == p).count();
    for p in ["keep", "envp", "imgp", "fresh", "gone"] {
        assert!(count(p) >= 5, "too few tasks on {p} to judge: {}", count(p));
    }
    for o in log.iter().filter(|o| o.pool != "gone") {
        assert!(
            o.status == 200 && o.body["exit_code"] == 0,
            "a task on {} failed across the reloads: {} {}",
            o.pool,
            o.status,
            o.body
        );
    }
    // The removed pool served until the reload, refused (as shutting down, or unknown)
    // while it was being taken out, and is unknown after.
    for o in log.iter().filter(|o| o.pool == "gone") {
        let code = o.body["error"]["code"].as_str().unwrap_or("");
        if o.done < reload_sent {
            assert_eq!(o.status, 200, "gone failed before its removal: {}", o.body);
        } else if o.sent > reload_done {
            assert_eq!((o.status, code), (404, "unknown_pool"), "{}", o.body);
        } else {
            assert!(
                o.status == 200
                    || (o.status, code) == (503, "shutting_down")
                    || (o.status, code) == (404, "unknown_pool"),
                "gone during its removal: {} {}",
                o.status,
                o.body
            );
        }
    }
    assert!(
        log.iter().any(|o| o.pool == "gone" && o.sent > reload_done),
        "no task was sent to gone after its removal"
    );
    // The new env reached the tasks.
    let last_env = log.iter().rev().find(|o| o.pool == "envp").unwrap();
    assert_eq!(last_env.body["stdout"], "two\n", "{}", last_env.body);
    let first_env = log.iter().find(|o| o.pool == "envp").unwrap();
    assert_eq!(first_env.body["stdout"], "one\n", "{}", first_env.body);

    // Only max changed on keep: the very same containers, same spec.
    assert_untouched(
        &pool_view(&d, "keep"),
        &keep_before,
        "keep's containers were touched",
    );
    let (_, pools) = d.get("/v1/pools").await.unwrap();
    let names: Vec<&str> = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["envp", "fresh", "imgp", "keep"], "{pools}");
    assert!(d.stop().success());
    assert!(containers(&d.instance, None).is_empty());
}

#[tokio::test]
async fn a_bad_reload_keeps_everything_running_and_lists_every_problem() {
    let config = r#"
[pools.a]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2

[pools.b]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
"#;
    let d = Daemon::start(config).await;
    d.wait_ready(LONG).await;
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let streams: Vec<_> = ["a", "b"]
        .iter()
        .map(|p| stream(&d, p, stop.clone(), log.clone()))
        .collect();
    wait_answers(&log, &["a", "b"], 3).await;
    let before: BTreeMap<&str, BTreeMap<String, Seen>> =
        ["a", "b"].iter().map(|p| (*p, pool_view(&d, p))).collect();
    let errors_before = metric(&d, "warmpool_config_reloads_total", &[("result", "error")]).await;

    // Two problems in two places, plus a pool that would be new: nothing of it applies.
    write_config(
        &d,
        "",
        r#"
[pools.a]
image = "warmpool/agent:latest"
min = 5
warm = 5
max = 3

[pools.b]
image = "warmpool/agent:latest"
colour = "red"

[pools.c]
image = "warmpool/agent:latest"
"#,
    );
    let (status, v) = reload(&d).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_config", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("pools.a.min"),
        "min > max is not reported: {message}"
    );
    assert!(
        message.contains("colour"),
        "the unknown key is not reported: {message}"
    );
    assert!(
        message.contains("pools.toml:"),
        "problems name their place: {message}"
    );
    assert_eq!(
        metric(&d, "warmpool_config_reloads_total", &[("result", "error")]).await,
        errors_before + 1.0
    );
    // SIGHUP with the same file: refused the same way, and counted.
    sighup(&d);
    let deadline = Instant::now() + LONG;
    while metric(&d, "warmpool_config_reloads_total", &[("result", "error")]).await
        < errors_before + 2.0
    {
        assert!(
            Instant::now() < deadline,
            "the SIGHUP reload error was not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_answers(&log, &["a", "b"], 3).await;
    stop.store(true, Ordering::Relaxed);
    for s in streams {
        s.await.unwrap();
    }

    for o in log.lock().iter() {
        assert!(
            o.status == 200 && o.body["exit_code"] == 0,
            "a task failed across a refused reload: {} {}",
            o.status,
            o.body
        );
    }
    assert_eq!(
        metric(&d, "warmpool_config_reloads_total", &[("result", "ok")]).await,
        0.0
    );
    for p in ["a", "b"] {
        assert_untouched(
            &pool_view(&d, p),
            &before[p],
            &format!("pool {p}'s containers changed"),
        );
        let (_, v) = d.get(&format!("/v1/pools/{p}")).await.unwrap();
        assert_eq!(
            (v["min"].as_u64(), v["max"].as_u64()),
            (Some(1), Some(2)),
            "{v}"
        );
    }
    let (status, v) = d.get("/v1/pools/c").await.unwrap();
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("unknown_pool")),
        "{v}"
    );
    let (status, v) = d.task("a", json!({"shell": "echo still"})).await;
    assert_eq!(
        (status, v["stdout"].as_str()),
        (200, Some("still\n")),
        "{v}"
    );
}

#[tokio::test]
async fn removing_a_pool_by_reload_ends_its_sessions_with_their_end_command() {
    // As in the session tests: the end command's effect is seen inside the container
    // while it holds, which shows it ran there before the container was removed.
    let pool_e = r#"
[pools.e]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
session_end_command = ["sh", "-c", "cp /work/state /tmp/saved-by-end-command && sleep 6"]
"#;
    let other = r#"
[pools.other]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
"#;
    let d = Daemon::start(&format!("{pool_e}{other}")).await;
    d.wait_ready(LONG).await;
    let id = format!("{}-reloaded", d.instance);
    let (status, v) = d
        .post_raw(
            "/v1/sessions",
            json!({"pool": "e", "id": id}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = d
        .task(
            "e",
            json!({"shell": "echo saved-state > /work/state", "session": id}),
        )
        .await;
    assert_eq!((status, &v["exit_code"]), (200, &json!(0)), "{v}");
    // `warmpool-e.<8 hex>.<id>` (src/session/entry.rs)
    let name = format!(".{id}");
    let full = wait_for("the session's container name", LONG, || {
        let out = docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label=warmpool.instance={}", d.instance),
            "--format",
            "{{.ID}} {{.Names}}",
        ]);
        out.lines()
            .find(|l| l.contains(" warmpool-e.") && l.ends_with(&name))
            .map(|l| l.split(' ').next().unwrap().to_string())
    })
    .await;

    write_config(&d, "", other);
    let addr = d.addr.clone();
    let reloading = tokio::spawn(async move {
        let client = warmpool::client::Client::new(&addr, None);
        let (status, _, body) =
            common::send(&client, "POST", "/v1/admin/reload", Some(Vec::new())).await;
        (status, body)
    });
    let copy = wait_for("the end command's copy inside the container", LONG, || {
        docker_try(&["exec", &full, "cat", "/tmp/saved-by-end-command"])
    })
    .await;
    assert_eq!(copy, "saved-state\n");
    let (status, body) = reloading.await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        containers(&d.instance, Some("e")).is_empty(),
        "pool e's containers are left"
    );
    let (status, v) = d.get(&format!("/v1/sessions/{id}")).await.unwrap();
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("unknown_session")),
        "{v}"
    );
}

fn token_client(d: &Daemon, token: Option<&str>) -> warmpool::client::Client {
    warmpool::client::Client::new(&d.addr, token.map(str::to_string))
}

#[tokio::test]
async fn the_token_guards_v1_and_a_reload_switches_it() {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, "first-secret-token\n").unwrap();
    let pools = r#"
[pools.t]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
"#;
    let server = format!("token_file = \"{}\"", token_file.display());
    let d = Daemon::start(&format!("[server]\n{server}\n{pools}")).await;
    d.wait_ready(LONG).await;

    let none = token_client(&d, None);
    let wrong = token_client(&d, Some("first-secret-tokeN"));
    let right = token_client(&d, Some("first-secret-token"));
    let task = json!({"shell": "echo ok"});
    for (who, client) in [("missing", &none), ("wrong", &wrong)] {
        for (method, path, body) in [
            ("GET", "/v1/pools", None),
            ("POST", "/v1/pools/t/tasks", Some(task.clone())),
            ("POST", "/v1/sessions", Some(json!({"pool": "t"}))),
            ("GET", "/v1/sessions", None),
            ("POST", "/v1/admin/reload", None),
        ] {
            let (status, v) = call(client, method, path, body).await;
            assert_eq!(status, 401, "{who} token, {method} {path}: {v}");
            assert_eq!(v["error"]["code"], "unauthorized", "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{v}"
            );
        }
    }
    // Another scheme than Bearer, or the token without one: refused as well.
    let tcp = d.addr.trim_start_matches("http://").to_string();
    for auth in [
        "Basic first-secret-token",
        "first-secret-token",
        "Bearer first-secret-token2",
    ] {
        let stream = tokio::net::TcpStream::connect(&tcp).await.unwrap();
        let (status, v) = send(stream, "GET", "/v1/pools", &[("authorization", auth)], None).await;
        assert_eq!(
            (status, &v["error"]["code"]),
            (401, &json!("unauthorized")),
            "{auth:?}: {v}"
        );
    }

    // The scheme is case-insensitive (RFC 9110), as some clients write it in lower case.
    let stream = tokio::net::TcpStream::connect(&tcp).await.unwrap();
    let auth = [("authorization", "bearer first-secret-token")];
    let (status, v) = send(stream, "GET", "/v1/pools", &auth, None).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = call(&right, "POST", "/v1/pools/t/tasks", Some(task.clone())).await;
    assert_eq!((status, v["stdout"].as_str()), (200, Some("ok\n")), "{v}");
    assert_eq!(call(&right, "GET", "/v1/pools", None).await.0, 200);
    let (_, v) = call(&right, "GET", "/v1/sessions", None).await;
    assert_eq!(
        v["sessions"],
        json!([]),
        "a refused call created a session: {v}"
    );
    for open in ["/metrics", "/healthz", "/readyz"] {
        let (status, _, _) = common::send(&none, "GET", open, None).await;
        assert_eq!(status, 200, "{open} needs no token");
    }
    // The CLI takes the token from WARMPOOL_TOKEN.
    let cli = |token: &str| {
        Command::new(env!("CARGO_BIN_EXE_warmpool"))
            .args(["run", "t", "--addr", &d.addr, "--", "echo", "via-cli"])
            .env("WARMPOOL_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = cli("first-secret-token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-cli\n");
    let out = cli("nope");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A reload that reads a changed token file switches tokens at once.
    std::fs::write(&token_file, "second-secret-token").unwrap();
    let (status, v) = call(&right, "POST", "/v1/admin/reload", None).await;
    assert_eq!(status, 200, "{v}");
    let second = token_client(&d, Some("second-secret-token"));
    assert_eq!(
        call(&right, "GET", "/v1/pools", None).await.0,
        401,
        "the old token still works"
    );
    let (status, v) = call(&second, "POST", "/v1/pools/t/tasks", Some(task)).await;
    assert_eq!((status, v["stdout"].as_str()), (200, Some("ok\n")), "{v}");

    // An emptied token file is refused by the reload: the daemon never falls open.
    std::fs::write(&token_file, "").unwrap();
    let (status, v) = call(&second, "POST", "/v1/admin/reload", None).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("invalid_config")),
        "{v}"
    );
    let (status, v) = call(&none, "GET", "/v1/pools", None).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (401, &json!("unauthorized")),
        "{v}"
    );
    assert_eq!(call(&second, "GET", "/v1/pools", None).await.0, 200);
}

/// One HTTP/1 request over a connected stream (TCP or unix).
async fn send<S>(
    stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Full};
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "warmpool")
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    common::deadline(format!("{method} {path}"), async move {
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
    .await
}

async fn over_socket(socket: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    send(stream, method, path, &[], body).await
}

#[tokio::test]
async fn the_api_answers_on_a_unix_socket_of_mode_0660() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    // A stale socket file from a previous run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let d = Daemon::start(&format!(
        "[server]\nunix_socket = \"{}\"\n[pools.u]\nimage = \"warmpool/agent:latest\"\nmin = 1\nwarm = 1\nmax = 2\n",
        socket.display()
    ))
    .await;
    d.wait_ready(LONG).await;

    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o660,
        "mode {:o}",
        meta.permissions().mode()
    );

    let (status, v) = over_socket(&socket, "GET", "/v1/pools", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["pools"][0]["name"], "u", "{v}");
    let (status, v) = over_socket(
        &socket,
        "POST",
        "/v1/pools/u/tasks",
        Some(json!({"shell": "echo via-socket"})),
    )
    .await;
    assert_eq!(
        (status, v["stdout"].as_str()),
        (200, Some("via-socket\n")),
        "{v}"
    );
    let (status, _) = over_socket(&socket, "GET", "/healthz", None).await;
    assert_eq!(status, 200);
    // curl, as an operator would. A missing curl fails the test: a skip proves nothing.
    let out = Command::new("curl")
        .args(["-s", "--max-time", "60", "--unix-socket"])
        .arg(&socket)
        .arg("http://warmpool/v1/pools/u")
        .output()
        .unwrap_or_else(|e| {
            panic!("curl not runnable ({e}): run scripts/install-test-deps.sh (or apt-get install curl)")
        });
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(v["name"], "u", "{}", String::from_utf8_lossy(&out.stdout));
    // And the TCP listener still serves beside it.
    assert_eq!(d.get("/v1/pools/u").await.unwrap().0, 200);
}

/// A stand-in engine on a unix socket that answers the version handshake and then fails
/// every other call, like an engine still starting: the daemon comes up (HTTP answers) but
/// stays in start-up, waiting for it.
fn engine_that_is_not_ready(socket: &Path) {
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&req);
            let (status, body) = if head.lines().next().unwrap_or("").contains("/version") {
                (
                    "200 OK",
                    r#"{"ApiVersion":"1.41","Version":"20.10.0","MinAPIVersion":"1.12"}"#,
                )
            } else {
                (
                    "500 Internal Server Error",
                    r#"{"message":"the engine is still starting"}"#,
                )
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

#[tokio::test]
async fn a_reload_during_start_up_is_refused_or_held_never_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    engine_that_is_not_ready(&socket);
    let d = Daemon::start(&format!(
        "[docker]\nhost = \"unix://{}\"\n[pools.x]\nimage = \"warmpool/agent:latest\"\n",
        socket.display()
    ))
    .await;
    let (status, v) = d.get("/readyz").await.unwrap();
    assert_eq!(
        (status, &v["error"]["code"]),
        (503, &json!("not_ready")),
        "{v}"
    );

    // The endpoint says plainly that it is too early.
    let (status, v) = reload(&d).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("invalid_config")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("still starting"),
        "{v}"
    );
    // SIGHUP must not end the process (its default action) while start-up waits.
    sighup(&d);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = d.get("/healthz").await.unwrap_or_else(|e| {
        panic!(
            "the daemon died of a SIGHUP during start-up ({e}):\n{}",
            d.log()
        )
    });
    assert_eq!(status, 200);
    assert!(containers(&d.instance, None).is_empty());
}
