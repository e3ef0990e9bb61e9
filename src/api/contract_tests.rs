//! The documented knobs, error codes and metric values, through the real router over a
//! started supervisor on the in-memory engine, in paused time (fast and deterministic).
//! Each test fails when the key it names is ignored, the code it names changes, or the
//! metric it reads is not updated; src/contract_tests.rs maps every one of them here.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};

use super::{router, AppState, Reload, Token};
use crate::config::{Config, PoolConfig};
use crate::metrics::Metrics;
use crate::runtime::fake::FakeRuntime;
use crate::supervisor::{ReloadSummary, Supervisor};

/// The daemon owns reloads; these tests call `Supervisor::reload` themselves.
struct NoReload;

#[async_trait::async_trait]
impl Reload for NoReload {
    async fn reload(&self) -> Result<ReloadSummary, String> {
        Err("no configuration file in this test".into())
    }
}

struct App {
    router: Router,
    sup: Arc<Supervisor>,
    fake: Arc<FakeRuntime>,
}

fn pool(name: &str, min: usize, warm: usize, max: usize) -> PoolConfig {
    let mut c = PoolConfig::new(name, "img");
    c.min = min;
    c.warm = warm;
    c.max = max;
    c
}

fn config(pools: &[PoolConfig]) -> Config {
    Config {
        server: Default::default(),
        docker: Default::default(),
        pools: pools
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

async fn start(pools: &[PoolConfig]) -> App {
    let fake = FakeRuntime::new();
    let sup = Supervisor::new(fake.clone(), Arc::new(Metrics::new()), None, "test", 100);
    sup.start(&config(pools)).await.unwrap();
    let router = router(AppState {
        supervisor: sup.clone(),
        token: Token::new(None),
        reloader: Arc::new(NoReload),
        max_body: 1 << 20,
    });
    let app = App { router, sup, fake };
    for p in pools {
        let warm = p.warm;
        app.settle(&p.name, "warm containers idle", |c| c.idle == warm)
            .await;
    }
    app
}

impl App {
    async fn raw(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        use tower::Service;
        let resp = self.router.clone().call(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, body.to_vec())
    }

    /// Status, headers and JSON body of one request with an optional JSON body.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let (status, _, body) = self.raw(req).await;
        let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: body {:?} is not JSON: {e}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, json)
    }

    async fn task(&self, pool: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", &format!("/v1/pools/{pool}/tasks"), Some(body))
            .await
    }

    fn counts(&self, pool: &str) -> crate::pool::Counts {
        self.sup.pool(pool).unwrap().counts()
    }

    /// Waits (paused time: instantly) for the pool's counts, at most 20 minutes of it.
    async fn settle(&self, pool: &str, what: &str, pred: impl Fn(&crate::pool::Counts) -> bool) {
        for _ in 0..120_000 {
            if pred(&self.counts(pool)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "pool {pool} never reached: {what}; counts {:?}",
            self.counts(pool)
        );
    }

    /// The value of one series, written exactly as rendered (labels in name order).
    fn metric(&self, series: &str) -> f64 {
        let text = self.sup.metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    }
}

/// Asserts the documented error: status, code, and a message that is a sentence.
fn assert_error(got: &(StatusCode, Value), status: u16, code: &str) -> String {
    assert_eq!(got.0.as_u16(), status, "{code}: {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    let message = got.1["error"]["message"].as_str().unwrap_or_default();
    assert!(message.len() > 10, "a message for a person: {}", got.1);
    message.to_string()
}

#[tokio::test(start_paused = true)]
async fn task_timeout_is_the_default_and_the_upper_bound_of_a_timeout() {
    let mut p = pool("p", 1, 1, 2);
    p.task_timeout = Duration::from_secs(7);
    let app = start(&[p]).await;
    let refused = app
        .task("p", json!({"cmd": ["echo"], "timeout": "8s"}))
        .await;
    let message = assert_error(&refused, 400, "invalid_request");
    assert!(message.contains("task_timeout"), "{message}");
    // At the bound: accepted.
    let (status, ok) = app
        .task("p", json!({"cmd": ["echo", "x"], "timeout": "7s"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{ok}");
    // No timeout asked: task_timeout applies, and the documented answer comes back.
    *app.fake.remove_delay.lock() = Duration::from_secs(20);
    let t0 = tokio::time::Instant::now();
    let (status, r) = app.task("p", json!({"cmd": ["sleep", "600"]})).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(t0.elapsed().as_secs(), 7, "{r}");
    assert_eq!(r["timed_out"], true, "{r}");
    assert_eq!(r["signal"], 9, "{r}");
    assert_eq!(r["exit_code"], Value::Null, "{r}");
    assert_eq!(r["run_ms"], 7000.0, "{r}");
    assert_eq!(
        app.metric("warmpool_tasks_total{outcome=\"timeout\",pool=\"p\"}"),
        1.0
    );
    assert_eq!(
        app.metric("warmpool_tasks_total{outcome=\"ok\",pool=\"p\"}"),
        1.0
    );
    // A timed-out task's container is never reused: removed as unhealthy.
    app.settle("p", "being removed", |c| c.unhealthy == 1).await;
    assert_eq!(
        app.metric("warmpool_containers{pool=\"p\",state=\"unhealthy\"}"),
        1.0
    );
    app.settle("p", "replaced", |c| c.idle == 1 && c.unhealthy == 0)
        .await;
    assert_eq!(
        app.metric("warmpool_containers_removed_total{pool=\"p\",reason=\"unhealthy\"}"),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn the_ndjson_stream_carries_output_lines_then_the_exit_line() {
    let app = start(&[pool("p", 1, 1, 1)]).await;
    let req = Request::builder()
        .method("POST")
        .uri("/v1/pools/p/tasks?stream=true")
        .body(Body::from(json!({"cmd": ["echo", "streamed"]}).to_string()))
        .unwrap();
    let (status, headers, body) = app.raw(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let text = String::from_utf8(body).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(
        lines.first(),
        Some(&json!({"stdout": "streamed\n"})),
        "{text}"
    );
    let exit = &lines.last().unwrap()["exit"];
    assert_eq!(exit["exit_code"], 0, "{text}");
    assert_eq!(exit["pool"], "p", "{text}");
    assert!(
        exit.get("stdout").is_none(),
        "no stdout in the exit line: {text}"
    );
    // A refused task keeps its status, even when streaming.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/pools/p/tasks?stream=true")
        .body(Body::from(
            json!({"cmd": ["echo"], "timeout": "1h"}).to_string(),
        ))
        .unwrap();
    let (status, _, body) = app.raw(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
}

#[tokio::test(start_paused = true)]
async fn session_ids_live_created_again_on_another_pool_and_generated() {
    let app = start(&[pool("p", 1, 1, 2), pool("q", 1, 1, 2)]).await;
    let (status, s) = app
        .call(
            "POST",
            "/v1/sessions",
            Some(json!({"pool": "p", "id": "s1"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{s}");
    assert_eq!(
        (&s["id"], &s["pool"], &s["state"]),
        (&json!("s1"), &json!("p"), &json!("not_started"))
    );
    let (status, r) = app
        .task("p", json!({"cmd": ["echo", "in session"], "session": "s1"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    // The same id again: 200 with the live session, its task count kept.
    let (status, again) = app
        .call(
            "POST",
            "/v1/sessions",
            Some(json!({"pool": "p", "id": "s1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["tasks"], 1, "{again}");
    assert_eq!(again["state"], "running", "{again}");
    // The id on another pool: 409, by create and by task.
    let clash = app
        .call(
            "POST",
            "/v1/sessions",
            Some(json!({"pool": "q", "id": "s1"})),
        )
        .await;
    let message = assert_error(&clash, 409, "session_pool_mismatch");
    assert!(message.contains('p') && message.contains('q'), "{message}");
    let clash = app
        .task("q", json!({"cmd": ["echo"], "session": "s1"}))
        .await;
    assert_error(&clash, 409, "session_pool_mismatch");
    let unknown = app
        .task("p", json!({"cmd": ["echo"], "session": "nope"}))
        .await;
    assert_error(&unknown, 404, "unknown_session");
    // No id: one is generated, in the documented alphabet.
    let (status, gen) = app
        .call("POST", "/v1/sessions", Some(json!({"pool": "q"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{gen}");
    let id = gen["id"].as_str().unwrap();
    assert!(
        (1..=64).contains(&id.len())
            && id.chars().next().unwrap().is_ascii_alphanumeric()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
        "generated id {id:?}"
    );
    let (_, other) = app
        .call("POST", "/v1/sessions", Some(json!({"pool": "q"})))
        .await;
    assert_ne!(other["id"], gen["id"], "generated ids differ");
    assert_eq!(app.metric("warmpool_sessions{pool=\"p\"}"), 1.0);
    assert_eq!(app.metric("warmpool_sessions{pool=\"q\"}"), 2.0);
    // Ending it removes its container, counted as session_end.
    let (status, ended) = app.call("DELETE", "/v1/sessions/s1", None).await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    let gone = app.call("GET", "/v1/sessions/s1", None).await;
    assert_error(&gone, 404, "unknown_session");
    assert_eq!(
        app.metric("warmpool_containers_removed_total{pool=\"p\",reason=\"session_end\"}"),
        1.0
    );
    assert_eq!(app.metric("warmpool_sessions{pool=\"p\"}"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn session_idle_timeout_ends_a_session_that_asks_for_none() {
    let mut p = pool("p", 1, 1, 2);
    p.session_idle_timeout = Duration::from_secs(40);
    let app = start(&[p]).await;
    let (status, s) = app
        .call(
            "POST",
            "/v1/sessions",
            Some(json!({"pool": "p", "id": "idle"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{s}");
    assert_eq!(s["idle_timeout"], "40s", "{s}");
    let (status, r) = app
        .task("p", json!({"cmd": ["echo"], "session": "idle"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (status, _) = app.call("GET", "/v1/sessions/idle", None).await;
    assert_eq!(status, StatusCode::OK, "alive before its idle timeout");
    // The built-in default (5m) would keep it for minutes more.
    tokio::time::sleep(Duration::from_secs(20)).await;
    for _ in 0..1000 {
        if app.call("GET", "/v1/sessions/idle", None).await.0 == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = app.call("GET", "/v1/sessions/idle", None).await;
    assert_error(&gone, 404, "unknown_session");
    for _ in 0..1000 {
        if app.metric("warmpool_containers_removed_total{pool=\"p\",reason=\"session_end\"}") == 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        app.metric("warmpool_containers_removed_total{pool=\"p\",reason=\"session_end\"}"),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn an_engine_outage_answers_engine_unavailable_and_readyz_not_ready() {
    let app = start(&[pool("p", 1, 1, 2)]).await;
    assert_eq!(app.metric("warmpool_engine_up"), 1.0);
    app.fake.down.store(true, Ordering::SeqCst);
    for _ in 0..600 {
        if !app.sup.engine_up() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.metric("warmpool_engine_up"), 0.0);
    // An idle container still serves: it needs the in-container agent, not the engine.
    let (status, r) = app.task("p", json!({"cmd": ["echo"]})).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    // None idle: no container could start, so the task is refused at once.
    let held = hold_one_busy(&app, "p");
    app.settle("p", "one busy", |c| c.busy == 1).await;
    let refused = app.task("p", json!({"cmd": ["echo"]})).await;
    assert_error(&refused, 503, "engine_unavailable");
    let not_ready = app.call("GET", "/readyz", None).await;
    assert_error(&not_ready, 503, "not_ready");
    assert_eq!(
        app.metric("warmpool_tasks_total{outcome=\"rejected\",pool=\"p\"}"),
        1.0
    );
    // Back up: tasks run again.
    held.abort();
    app.fake.down.store(false, Ordering::SeqCst);
    for _ in 0..600 {
        if app.sup.engine_up() && app.counts("p").idle == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, r) = app.task("p", json!({"cmd": ["echo"]})).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(app.metric("warmpool_engine_up"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_pool_the_engine_refuses_answers_pool_failed_and_readyz_names_it() {
    let app = start(&[pool("p", 1, 1, 2)]).await;
    // From now on the engine refuses every create; p has its container already.
    *app.fake.refuse_creates.lock() = Some(
        "unknown or invalid runtime name: nope; what to do: install it or remove the key".into(),
    );
    let mut bad = pool("bad", 1, 1, 2);
    bad.health_check_interval = Duration::from_secs(40);
    app.sup.add_pool(bad).await.unwrap();
    app.settle("bad", "failed", |c| c.failed).await;
    // The pool list shows it, with the engine's words and the fix.
    let (status, list) = app.call("GET", "/v1/pools", None).await;
    assert_eq!(status, StatusCode::OK);
    let shown = |name: &str| {
        list["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    let bad = shown("bad");
    assert_eq!(bad["state"], "failed", "{bad}");
    assert_eq!(
        bad["failure"]["reason"],
        "unknown or invalid runtime name: nope"
    );
    assert_eq!(bad["failure"]["hint"], "install it or remove the key");
    assert_eq!(bad["failure"]["retry_every_seconds"], 40.0);
    assert!(
        bad["failure"]["since"].as_str().unwrap().ends_with('Z'),
        "{bad}"
    );
    assert_eq!(shown("p")["state"], "ok");
    assert_eq!(shown("p")["failure"], Value::Null);
    let (_, one) = app.call("GET", "/v1/pools/bad", None).await;
    assert_eq!(one["state"], "failed", "{one}");
    // A task answers 503 pool_failed at once, naming the pool, the words and the fix, with
    // Retry-After at the pool's next try.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/pools/bad/tasks")
        .body(Body::from(json!({"cmd": ["echo"]}).to_string()))
        .unwrap();
    let (status, headers, body) = app.raw(req).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    let message = assert_error(&(status, body), 503, "pool_failed");
    assert!(message.contains("pool bad"), "{message}");
    assert!(
        message.contains("unknown or invalid runtime name: nope"),
        "{message}"
    );
    assert!(
        message.contains("install it or remove the key"),
        "{message}"
    );
    assert_eq!(headers["retry-after"], "40");
    // A session's task too.
    let (status, _) = app
        .call(
            "POST",
            "/v1/sessions",
            Some(json!({"pool": "bad", "id": "s1"})),
        )
        .await;
    assert!(status.is_success(), "{status}");
    let refused = app
        .call(
            "POST",
            "/v1/pools/bad/tasks",
            Some(json!({"cmd": ["echo"], "session": "s1"})),
        )
        .await;
    assert_error(&refused, 503, "pool_failed");
    // /readyz names it.
    let not_ready = app.call("GET", "/readyz", None).await;
    let why = assert_error(&not_ready, 503, "not_ready");
    assert!(why.contains("pool bad is failed"), "{why}");
    assert!(
        why.contains("unknown or invalid runtime name: nope"),
        "{why}"
    );
    assert_eq!(app.metric("warmpool_pool_failed{pool=\"bad\"}"), 1.0);
    assert_eq!(app.metric("warmpool_pool_failed{pool=\"p\"}"), 0.0);
    // The other pool serves.
    let (status, r) = app.task("p", json!({"cmd": ["echo", "hi"]})).await;
    assert_eq!(status, StatusCode::OK, "{r}");
}

#[tokio::test(start_paused = true)]
async fn after_shutdown_tasks_answer_shutting_down_and_containers_went_for_shutdown() {
    let app = start(&[pool("p", 2, 2, 2)]).await;
    app.sup.shutdown(Duration::from_secs(1)).await;
    let refused = app.task("p", json!({"cmd": ["echo"]})).await;
    assert_error(&refused, 503, "shutting_down");
    assert_eq!(
        app.metric("warmpool_containers_removed_total{pool=\"p\",reason=\"shutdown\"}"),
        2.0
    );
    assert!(app.fake.live().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_read_answers_bad_body_and_a_server_fault_internal() {
    let app = start(&[pool("p", 1, 1, 1)]).await;
    let broken = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"cmd\"")),
        Err(std::io::Error::other("the client went away")),
    ]);
    let req = Request::builder()
        .method("POST")
        .uri("/v1/pools/p/tasks")
        .body(Body::from_stream(broken))
        .unwrap();
    let (status, _, body) = app.raw(req).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_error(&(status, body), 400, "bad_body");
    // An extractor's server-side refusal (a route wired wrong) is `internal`, not a 4xx.
    let resp = axum::response::IntoResponse::into_response(super::rejected(
        StatusCode::INTERNAL_SERVER_ERROR,
        "route wired wrong".into(),
    ));
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "internal", "{body}");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    // Over max_request_body: 413 body_too_large.
    let big = vec![b' '; (1 << 20) + 1];
    let req = Request::builder()
        .method("POST")
        .uri("/v1/pools/p/tasks")
        .body(Body::from(big))
        .unwrap();
    let (status, _, body) = app.raw(req).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_error(&(status, body), 413, "body_too_large");
}

#[tokio::test(start_paused = true)]
async fn a_failing_health_cmd_replaces_the_container_and_a_passing_one_keeps_it() {
    let mut bad = pool("bad", 1, 1, 1);
    bad.health_check_interval = Duration::from_secs(10);
    bad.health_cmd = Some(vec!["exit".into(), "1".into()]);
    let mut good = pool("good", 1, 1, 1);
    good.health_check_interval = Duration::from_secs(10);
    good.health_cmd = Some(vec!["exit".into(), "0".into()]);
    let app = start(&[bad, good]).await;
    let first_bad = app.fake.live();
    tokio::time::sleep(Duration::from_secs(11)).await;
    app.settle("bad", "replaced", |c| c.idle == 1).await;
    for _ in 0..1000 {
        if app.metric("warmpool_containers_removed_total{pool=\"bad\",reason=\"unhealthy\"}") >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        app.metric("warmpool_health_checks_total{pool=\"bad\",result=\"unhealthy\"}"),
        1.0
    );
    assert_eq!(
        app.metric("warmpool_health_checks_total{pool=\"bad\",result=\"healthy\"}"),
        0.0
    );
    assert_eq!(
        app.metric("warmpool_containers_removed_total{pool=\"bad\",reason=\"unhealthy\"}"),
        1.0
    );
    assert_eq!(
        app.metric("warmpool_health_checks_total{pool=\"good\",result=\"healthy\"}"),
        1.0
    );
    assert_eq!(
        app.metric("warmpool_containers_removed_total{pool=\"good\",reason=\"unhealthy\"}"),
        0.0
    );
    let now = app.fake.live();
    assert_eq!(
        first_bad.iter().filter(|id| now.contains(id)).count(),
        1,
        "the good pool's container stayed, the bad pool's was replaced: {first_bad:?} -> {now:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn gauges_show_states_target_and_utilization_after_known_events() {
    let mut p = pool("p", 2, 2, 4);
    p.scale_interval = Duration::from_secs(600);
    let app = start(&[p]).await;
    let state = |s: &str| format!("warmpool_containers{{pool=\"p\",state=\"{s}\"}}");
    assert_eq!(app.metric(&state("idle")), 2.0);
    assert_eq!(app.metric(&state("busy")), 0.0);
    assert_eq!(
        app.metric("warmpool_pool_target_containers{pool=\"p\"}"),
        2.0
    );
    assert_eq!(app.metric("warmpool_pool_min_containers{pool=\"p\"}"), 2.0);
    assert_eq!(app.metric("warmpool_pool_max_containers{pool=\"p\"}"), 4.0);
    assert_eq!(
        app.metric("warmpool_pool_utilization_ratio{pool=\"p\"}"),
        0.0
    );
    let sup = app.sup.clone();
    let running = tokio::spawn(async move {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let req = crate::supervisor::TaskRequest {
            argv: vec!["sleep".into(), "100".into()],
            ..Default::default()
        };
        sup.submit("p", req, tx).await
    });
    app.settle("p", "one busy", |c| c.busy == 1).await;
    assert_eq!(app.metric(&state("busy")), 1.0);
    assert_eq!(app.metric(&state("idle")), 1.0);
    assert_eq!(
        app.metric("warmpool_pool_utilization_ratio{pool=\"p\"}"),
        0.5
    );
    let (_, view) = app.call("GET", "/v1/pools/p", None).await;
    assert_eq!(
        (
            &view["busy"],
            &view["idle"],
            &view["utilization"],
            &view["target"]
        ),
        (&json!(1), &json!(1), &json!(0.5), &json!(2)),
        "{view}"
    );
    assert_eq!(running.await.unwrap().unwrap().exit.exit_code, Some(0));
    app.settle("p", "idle again", |c| c.idle == 2).await;
    assert_eq!(app.metric(&state("busy")), 0.0);
    assert_eq!(app.metric(&state("idle")), 2.0);
    assert_eq!(
        app.metric("warmpool_pool_utilization_ratio{pool=\"p\"}"),
        0.0
    );
    assert_eq!(
        app.metric("warmpool_acquisitions_total{pool=\"p\",result=\"warm\"}"),
        1.0
    );
    assert_eq!(
        app.metric("warmpool_containers_created_total{pool=\"p\"}"),
        2.0
    );

    // Starts that take a while: two busy, a third task queues, the pool grows at once.
    *app.fake.create_delay.lock() = Duration::from_secs(30);
    let _b1 = hold_one_busy(&app, "p");
    let _b2 = hold_one_busy(&app, "p");
    app.settle("p", "two busy", |c| c.busy == 2).await;
    let _queued = hold_one_busy(&app, "p");
    app.settle("p", "one queued, one starting", |c| {
        c.queued == 1 && c.starting >= 1
    })
    .await;
    assert_eq!(app.metric("warmpool_queue_length{pool=\"p\"}"), 1.0);
    assert_eq!(
        app.metric(&state("starting")),
        app.counts("p").starting as f64
    );
    let c = app.counts("p");
    let live = (c.idle + c.busy + c.starting) as f64;
    assert_eq!(
        app.metric("warmpool_pool_utilization_ratio{pool=\"p\"}"),
        (3.0 / live).min(1.0),
        "(busy + queued) / live, {c:?}"
    );
    assert!(app.metric(&state("starting")) >= 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_container_past_max_uses_shows_as_retiring_until_removed() {
    let mut p = pool("p", 1, 1, 2);
    p.max_uses = 1;
    let app = start(&[p]).await;
    *app.fake.remove_delay.lock() = Duration::from_secs(30);
    let (status, r) = app.task("p", json!({"cmd": ["echo"]})).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    app.settle("p", "retiring", |c| c.retiring == 1).await;
    assert_eq!(
        app.metric("warmpool_containers{pool=\"p\",state=\"retiring\"}"),
        1.0
    );
    app.settle("p", "removed", |c| c.retiring == 0).await;
    assert_eq!(
        app.metric("warmpool_containers{pool=\"p\",state=\"retiring\"}"),
        0.0
    );
    assert_eq!(
        app.metric("warmpool_containers_removed_total{pool=\"p\",reason=\"uses\"}"),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_spec_change_by_reload_replaces_the_containers_counted_as_reload() {
    let p = pool("p", 2, 2, 3);
    let app = start(std::slice::from_ref(&p)).await;
    let before = app.fake.live();
    let mut changed = p.clone();
    changed.env.insert("NEW".into(), "1".into());
    let summary = app.sup.reload(&config(&[changed])).await.unwrap();
    assert_eq!(summary.replaced, vec!["p".to_string()]);
    for _ in 0..120_000 {
        let live = app.fake.live();
        if live.len() == 2
            && live.iter().all(|id| !before.contains(id))
            && app.counts("p").idle == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(app.fake.live().iter().all(|id| !before.contains(id)));
    assert_eq!(
        app.metric("warmpool_containers_removed_total{pool=\"p\",reason=\"reload\"}"),
        2.0
    );
}

#[tokio::test(start_paused = true)]
async fn security_runtime_reaches_the_container_spec() {
    let mut p = pool("p", 1, 1, 1);
    p.security.runtime = Some("runsc".into());
    p.security.read_only_rootfs = false;
    p.security.no_new_privileges = false;
    p.security.cap_drop = vec!["NET_RAW".into()];
    let app = start(&[p, pool("plain", 1, 1, 1)]).await;
    let mut runtimes = Vec::new();
    for id in app.fake.live() {
        let spec = app.fake.spec_of(&id).unwrap();
        runtimes.push((
            spec.runtime.clone(),
            spec.read_only_rootfs,
            spec.no_new_privileges,
            spec.cap_drop.clone(),
        ));
    }
    runtimes.sort();
    assert_eq!(
        runtimes,
        vec![
            (None, true, true, vec!["ALL".to_string()]),
            (
                Some("runsc".to_string()),
                false,
                false,
                vec!["NET_RAW".to_string()]
            ),
        ]
    );
}

/// Holds one task running on `pool` until the returned handle is aborted.
fn hold_one_busy(app: &App, pool: &str) -> tokio::task::JoinHandle<()> {
    let sup = app.sup.clone();
    let pool = pool.to_string();
    tokio::spawn(async move {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let req = crate::supervisor::TaskRequest {
            argv: vec!["sleep".into(), "100000".into()],
            ..Default::default()
        };
        let _ = sup.submit(&pool, req, tx).await;
    })
}

#[tokio::test(start_paused = true)]
async fn scale_up_threshold_decides_when_a_busy_pool_grows() {
    let mut low = pool("low", 2, 2, 4);
    low.scale_interval = Duration::from_secs(1);
    low.scale_up_threshold = 0.4;
    let mut usual = pool("usual", 2, 2, 4);
    usual.scale_interval = Duration::from_secs(1);
    let app = start(&[low, usual]).await;
    let _a = hold_one_busy(&app, "low");
    let _b = hold_one_busy(&app, "usual");
    app.settle("low", "one busy", |c| c.busy == 1).await;
    app.settle("usual", "one busy", |c| c.busy == 1).await;
    // Utilization 1/2 = 0.5: above 0.4, below the default 0.8. One busy container at 0.4
    // wants ceil(1 / 0.4) = 3.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(app.counts("low").target, 3, "{:?}", app.counts("low"));
    assert_eq!(app.counts("usual").target, 2, "{:?}", app.counts("usual"));
    assert_eq!(
        app.metric("warmpool_scale_events_total{direction=\"up\",pool=\"low\"}"),
        1.0
    );
    assert_eq!(
        app.metric("warmpool_scale_events_total{direction=\"up\",pool=\"usual\"}"),
        0.0
    );
    assert_eq!(
        app.metric("warmpool_pool_target_containers{pool=\"low\"}"),
        3.0
    );
}

#[tokio::test(start_paused = true)]
async fn scale_down_threshold_decides_when_a_quiet_pool_shrinks() {
    // The thresholds alone: the forecast (on by default) would keep or shed containers of
    // its own and hide what the threshold does.
    let mut high = pool("high", 1, 4, 4);
    high.scale_interval = Duration::from_secs(1);
    high.scale_down_threshold = 0.3;
    high.idle_timeout = Duration::from_secs(36_000);
    high.predictive = false;
    let mut usual = pool("usual", 1, 4, 4);
    usual.scale_interval = Duration::from_secs(1);
    usual.idle_timeout = Duration::from_secs(36_000);
    usual.predictive = false;
    let app = start(&[high, usual]).await;
    let _a = hold_one_busy(&app, "high");
    let _b = hold_one_busy(&app, "usual");
    app.settle("high", "one busy", |c| c.busy == 1).await;
    app.settle("usual", "one busy", |c| c.busy == 1).await;
    // Utilization 1/4 = 0.25: below 0.3, above the default 0.2. The window is 12 looks
    // (12 s); after 60 s the pool at 0.3 stepped down to ceil(1 / 0.8) = 2, the other not.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(app.counts("high").target, 2, "{:?}", app.counts("high"));
    assert_eq!(app.counts("usual").target, 4, "{:?}", app.counts("usual"));
    app.settle("high", "two live", |c| c.idle + c.busy == 2)
        .await;
    assert_eq!(
        app.metric("warmpool_containers_removed_total{pool=\"high\",reason=\"scale_down\"}"),
        2.0
    );
    assert_eq!(
        app.metric("warmpool_scale_events_total{direction=\"down\",pool=\"high\"}"),
        1.0
    );
    assert_eq!(
        app.metric("warmpool_scale_events_total{direction=\"down\",pool=\"usual\"}"),
        0.0
    );
}

#[tokio::test(start_paused = true)]
async fn scale_interval_sets_the_stabilization_window() {
    let mut slow = pool("slow", 1, 3, 3);
    slow.scale_interval = Duration::from_secs(10);
    slow.idle_timeout = Duration::from_secs(36_000);
    let mut fast = pool("fast", 1, 3, 3);
    fast.scale_interval = Duration::from_secs(2);
    fast.idle_timeout = Duration::from_secs(36_000);
    let app = start(&[slow, fast]).await;
    // Quiet pools: the window is 12 looks, 24 s for `fast`, 120 s for `slow` (60 s with the
    // default interval of 5 s).
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(app.counts("fast").target, 1, "{:?}", app.counts("fast"));
    assert_eq!(app.counts("slow").target, 3, "{:?}", app.counts("slow"));
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert_eq!(app.counts("slow").target, 1, "{:?}", app.counts("slow"));
}

#[tokio::test(start_paused = true)]
async fn a_file_command_ending_unknown_answers_file_transfer_failed() {
    let app = start(&[pool("p", 1, 1, 2)]).await;
    let (status, s) = app
        .call(
            "POST",
            "/v1/sessions",
            Some(json!({"pool": "p", "id": "f"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{s}");
    let (status, r) = app
        .task("p", json!({"cmd": ["echo"], "session": "f"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    // The file command (an exec in the fake engine) exits 99, a code the API does not know.
    let failed = app
        .call("GET", "/v1/sessions/f/files/fake-exit-99", None)
        .await;
    let message = assert_error(&failed, 500, "file_transfer_failed");
    assert!(message.contains("99"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn task_outcomes_and_histograms_count_what_happened() {
    let mut p = pool("p", 0, 0, 1);
    p.on_exhausted = crate::config::OnExhausted::Fail;
    let app = start(&[p]).await;
    let count = |s: &str| app.metric(&format!("{s}{{pool=\"p\"}}"));
    let outcome = |o: &str| {
        app.metric(&format!(
            "warmpool_tasks_total{{outcome=\"{o}\",pool=\"p\"}}"
        ))
    };
    // Lazy pool: the first task waits for a cold start.
    let (_, r) = app.task("p", json!({"cmd": ["echo", "1"]})).await;
    assert_eq!(
        (&r["exit_code"], &r["cold_start"]),
        (&json!(0), &json!(true)),
        "{r}"
    );
    let (_, r) = app.task("p", json!({"cmd": ["exit", "3"]})).await;
    assert_eq!(
        (&r["exit_code"], &r["cold_start"]),
        (&json!(3), &json!(false)),
        "{r}"
    );
    let (_, r) = app.task("p", json!({"cmd": ["missing-tool"]})).await;
    assert_eq!(r["exit_code"], Value::Null, "{r}");
    assert!(r["error"].as_str().unwrap().contains("missing-tool"), "{r}");
    let (_, r) = app
        .task("p", json!({"cmd": ["sleep", "60"], "timeout": "2s"}))
        .await;
    assert_eq!(r["timed_out"], true, "{r}");
    // The timed-out container goes; hold the next one busy, then one more is refused.
    app.settle("p", "replaced", |c| c.idle == 1).await;
    let busy = hold_one_busy(&app, "p");
    app.settle("p", "busy", |c| c.busy == 1).await;
    let refused = app.task("p", json!({"cmd": ["echo"]})).await;
    assert_error(&refused, 503, "pool_exhausted");
    // Two containers so far: the first, and the timed-out one's replacement.
    assert_eq!(count("warmpool_containers_created_total"), 2.0);
    assert_eq!(count("warmpool_container_start_seconds_count"), 2.0);
    assert_eq!(
        app.metric("warmpool_containers_removed_total{pool=\"p\",reason=\"unhealthy\"}"),
        1.0
    );
    busy.abort();
    // Invalid requests are not tasks.
    let invalid = app.task("p", json!({"cmd": []})).await;
    assert_error(&invalid, 400, "invalid_request");

    assert_eq!(outcome("ok"), 1.0);
    assert_eq!(outcome("nonzero_exit"), 1.0);
    assert_eq!(outcome("error"), 1.0);
    assert_eq!(outcome("timeout"), 1.0);
    assert_eq!(outcome("rejected"), 1.0);
    // Four ran to an end (the held one still runs): each histogram saw each of them.
    assert_eq!(count("warmpool_task_duration_seconds_count"), 4.0);
    assert_eq!(
        count("warmpool_task_duration_seconds_sum"),
        2.0,
        "only the 2 s timeout took time"
    );
    // Five got a container: the first cold, the others warm (the held one too: the
    // timed-out container's replacement started at once, before it was asked for).
    assert_eq!(
        app.metric("warmpool_acquisitions_total{pool=\"p\",result=\"cold\"}"),
        1.0
    );
    assert_eq!(
        app.metric("warmpool_acquisitions_total{pool=\"p\",result=\"warm\"}"),
        4.0
    );
    assert_eq!(count("warmpool_acquire_seconds_count"), 5.0);
    assert_eq!(count("warmpool_queue_wait_seconds_count"), 5.0);
}

/// docs/api.md: `cold_start` is true only for a container started while the task waited; a
/// task that waited for a busy one to free up answers `false` (and counts as `warm`).
#[tokio::test(start_paused = true)]
async fn cold_start_is_false_for_a_task_that_waited_for_a_busy_container() {
    let app = start(&[pool("p", 1, 1, 1)]).await;
    let sup = app.sup.clone();
    let first = tokio::spawn(async move {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let req = crate::supervisor::TaskRequest {
            argv: vec!["sleep".into(), "5".into()],
            ..Default::default()
        };
        sup.submit("p", req, tx).await
    });
    app.settle("p", "busy", |c| c.busy == 1).await;
    let (status, r) = app.task("p", json!({"cmd": ["echo", "after"]})).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["cold_start"], false, "{r}");
    assert!(r["queued_ms"].as_f64().unwrap() >= 4000.0, "it waited: {r}");
    let first = first.await.unwrap().unwrap().container;
    assert_eq!(
        r["container"],
        first.chars().take(12).collect::<String>(),
        "the same container, freed by the first task"
    );
    assert_eq!(
        app.metric("warmpool_acquisitions_total{pool=\"p\",result=\"warm\"}"),
        2.0
    );
    assert_eq!(
        app.metric("warmpool_acquisitions_total{pool=\"p\",result=\"cold\"}"),
        0.0
    );
}

#[tokio::test(start_paused = true)]
async fn spare_keeps_idle_containers_beyond_the_busy_ones() {
    // The policies alone: no forecast, no thresholds' growth (min 0, one task).
    let mut spare = pool("spare", 0, 0, 4);
    spare.spare = 1;
    spare.predictive = false;
    let mut none = pool("none", 0, 0, 4);
    none.predictive = false;
    let app = start(&[spare, none]).await;
    // At rest: spare = 1 keeps one idle container, spare = 0 keeps the pool empty.
    app.settle("spare", "one idle", |c| c.idle == 1).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let (s, n) = (app.counts("spare"), app.counts("none"));
    assert_eq!((s.idle, s.busy, s.target), (1, 0, 1), "{s:?}");
    assert_eq!((n.idle, n.busy, n.target), (0, 0, 0), "{n:?}");
    // A busy one: one idle beyond it, so the next task finds a container warm.
    let _a = hold_one_busy(&app, "spare");
    app.settle("spare", "one busy, one idle", |c| {
        c.busy == 1 && c.idle == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let s = app.counts("spare");
    assert_eq!((s.idle, s.busy), (1, 1), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_schedule_floors_the_pool_while_it_is_active() {
    let mut p = pool("p", 0, 0, 4);
    p.predictive = false;
    p.schedule =
        vec![
            crate::scaling::ScheduleFloor::parse("0 9 * * MON-FRI", 3, Duration::from_secs(3600))
                .unwrap(),
        ];
    let app = start(&[p]).await;
    // Monday 2026-11-30, 08:50 UTC.
    let monday = |h: u32, m: u32| {
        use chrono::TimeZone;
        chrono::Utc.with_ymd_and_hms(2026, 11, 30, h, m, 0).unwrap()
    };
    app.sup.set_wall_clock(monday(8, 50));
    tokio::time::sleep(Duration::from_secs(9 * 60)).await;
    let c = app.counts("p");
    assert_eq!((c.idle, c.target), (0, 0), "08:59, before the floor: {c:?}");
    // 09:00 (started a little early, by scale_interval and the create time).
    tokio::time::sleep(Duration::from_secs(60)).await;
    let c = app.counts("p");
    assert_eq!((c.idle, c.target), (3, 3), "09:00: {c:?}");
    // It holds for its hour, idle as the containers are, then the pool shrinks to min.
    tokio::time::sleep(Duration::from_secs(58 * 60)).await;
    assert_eq!(app.counts("p").idle, 3, "09:58: {:?}", app.counts("p"));
    tokio::time::sleep(Duration::from_secs(30 * 60)).await;
    let c = app.counts("p");
    assert_eq!((c.idle, c.target), (0, 0), "10:28: {c:?}");
}

/// Runs `n` tasks of `secs` seconds in `pool`, one every `every`, each on its own.
async fn burst(app: &App, pool: &str, n: usize, secs: &str, every: Duration) {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let sup = app.sup.clone();
        let (pool, secs) = (pool.to_string(), secs.to_string());
        tasks.push(tokio::spawn(async move {
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            let req = crate::supervisor::TaskRequest {
                argv: vec!["sleep".into(), secs],
                ..Default::default()
            };
            sup.submit(&pool, req, tx).await.unwrap();
        }));
        tokio::time::sleep(every).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn forecast_window_is_how_long_the_forecast_remembers_a_peak() {
    let mut long = pool("long", 0, 0, 20);
    long.forecast_window = Duration::from_secs(600);
    let mut short = pool("short", 0, 0, 20);
    short.forecast_window = Duration::from_secs(0);
    let app = start(&[long, short]).await;
    let forecast = |p: &str| {
        app.metric(&format!(
            "warmpool_pool_forecast_containers{{pool=\"{p}\"}}"
        ))
    };
    assert_eq!((forecast("long"), forecast("short")), (0.0, 0.0));
    // The same burst in both: 40 tasks of 4 s, two a second.
    let every = Duration::from_millis(500);
    tokio::join!(
        burst(&app, "long", 40, "4", every),
        burst(&app, "short", 40, "4", every)
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let peak = forecast("long");
    assert!(
        peak >= 5.0,
        "a burst of about 8 busy containers forecasts {peak}"
    );
    // Two minutes of quiet: the rate (smoothed over 30 s) has fallen to a few percent; the
    // pool remembering 10 minutes still shows the peak, the one remembering nothing not.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(forecast("long"), peak);
    assert!(
        forecast("short") < peak / 2.0,
        "{} of {peak}",
        forecast("short")
    );
    // The peak held the pool that acts on it (predictive, the default), not the other.
    assert!(
        app.counts("long").target as f64 >= peak,
        "{:?}",
        app.counts("long")
    );
    assert!(
        (app.counts("short").target as f64) < peak,
        "{:?}",
        app.counts("short")
    );
    // Past its window, the long one forgets too.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(
        forecast("long") < peak / 2.0,
        "{} of {peak}",
        forecast("long")
    );
}

#[tokio::test(start_paused = true)]
async fn health_check_timeout_is_how_long_a_probe_may_take() {
    // A health_cmd of 7 s: failed against the default 5 s, passed against 10 s.
    let mut usual = pool("usual", 1, 1, 1);
    usual.health_check_interval = Duration::from_secs(20);
    usual.health_cmd = Some(vec!["sleep".into(), "7".into()]);
    let mut patient = usual.clone();
    patient.name = "patient".into();
    patient.health_check_timeout = Duration::from_secs(10);
    let app = start(&[usual, patient]).await;
    let checks = |p: &str, r: &str| {
        app.metric(&format!(
            "warmpool_health_checks_total{{pool=\"{p}\",result=\"{r}\"}}"
        ))
    };
    for _ in 0..6000 {
        if checks("usual", "unhealthy") >= 1.0 && checks("patient", "healthy") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(checks("usual", "unhealthy"), 1.0);
    assert_eq!(checks("usual", "healthy"), 0.0);
    assert_eq!(checks("patient", "healthy"), 1.0);
    assert_eq!(checks("patient", "unhealthy"), 0.0);
}
