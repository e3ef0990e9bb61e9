//! Every lifecycle rule of a pool, against the in-memory engine with paused tokio time:
//! claims, queueing, cancellation, refresh, health, scaling, start-up hygiene and shutdown.
//! Each test fails when the rule it names is ignored.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{Config, OnExhausted, PoolConfig};
use crate::exec::ExecError;
use crate::metrics::Metrics;
use crate::pool::{AcquireError, Counts};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{LABEL_INSTANCE, LABEL_MANAGED, LABEL_POOL};
use crate::supervisor::{
    confirm_pause, confirm_wait_over, Leftovers, SubmitError, Supervisor, TaskReport, TaskRequest,
    CONFIRM_MAX, CONFIRM_TIMEOUT,
};

fn pool_cfg(min: usize, warm: usize, max: usize) -> PoolConfig {
    let mut c = PoolConfig::new("p", "img");
    c.min = min;
    c.warm = warm;
    c.max = max;
    c
}

async fn setup(cfg: PoolConfig) -> (Arc<Supervisor>, Arc<FakeRuntime>) {
    let fake = FakeRuntime::new();
    let sup = Supervisor::new(fake.clone(), Arc::new(Metrics::new()), None, "test", 100);
    let config = Config {
        server: Default::default(),
        docker: Default::default(),
        pools: BTreeMap::from([(cfg.name.clone(), cfg)]),
    };
    sup.start(&config).await.unwrap();
    (sup, fake)
}

fn counts(sup: &Supervisor) -> Counts {
    sup.pool("p").unwrap().counts()
}

/// Waits (in paused time, so instantly) until the pool's counts satisfy `pred`, for at
/// most 20 minutes of paused time.
async fn settle(sup: &Supervisor, what: &str, pred: impl Fn(&Counts) -> bool) {
    for _ in 0..120_000 {
        if pred(&counts(sup)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pool never reached: {what}; counts {:?}", counts(sup));
}

fn task(argv: &[&str]) -> TaskRequest {
    TaskRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn run(sup: &Supervisor, argv: &[&str]) -> Result<TaskReport, SubmitError> {
    let (tx, _rx) = mpsc::unbounded_channel();
    sup.submit("p", task(argv), tx).await
}

fn metric(sup: &Supervisor, needle: &str) -> f64 {
    sup.metrics
        .render()
        .lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric line starting with {needle}"))
}

#[tokio::test(start_paused = true)]
async fn warm_containers_are_created_at_start_and_serve_tasks() {
    let (sup, fake) = setup(pool_cfg(1, 3, 5)).await;
    settle(&sup, "3 idle", |c| c.idle == 3).await;
    assert_eq!(fake.live().len(), 3);
    let r = run(&sup, &["echo", "hi"]).await.unwrap();
    assert_eq!(r.exit.exit_code, Some(0));
    assert!(!r.cold_start);
}

#[tokio::test(start_paused = true)]
async fn a_claim_is_exclusive_and_the_second_task_waits_for_the_release() {
    let (sup, _fake) = setup(pool_cfg(1, 1, 1)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let pool = sup.pool("p").unwrap();
    let first = pool.acquire().await.unwrap();
    let p2 = pool.clone();
    let second = tokio::spawn(async move { p2.acquire().await.map(|l| l.container.clone()) });
    settle(&sup, "second queued", |c| c.queued == 1).await;
    let container = first.container.clone();
    drop(first);
    assert_eq!(second.await.unwrap().unwrap(), container);
}

#[tokio::test(start_paused = true)]
async fn a_queued_task_gives_up_at_acquire_timeout_and_leaves_the_queue() {
    let mut cfg = pool_cfg(1, 1, 1);
    cfg.acquire_timeout = Duration::from_secs(2);
    let (sup, _fake) = setup(cfg).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let pool = sup.pool("p").unwrap();
    let _held = pool.acquire().await.unwrap();
    let started = tokio::time::Instant::now();
    let err = pool.acquire().await.unwrap_err();
    assert!(matches!(err, AcquireError::Timeout { .. }), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(counts(&sup).queued, 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_leaks_no_lease() {
    let (sup, _fake) = setup(pool_cfg(1, 1, 1)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let pool = sup.pool("p").unwrap();
    let held = pool.acquire().await.unwrap();
    let p2 = pool.clone();
    let waiter = tokio::spawn(async move { p2.acquire().await.map(|_| ()) });
    settle(&sup, "waiter queued", |c| c.queued == 1).await;
    waiter.abort();
    let _ = waiter.await;
    drop(held);
    // The container went back to idle, not to the cancelled waiter's dropped channel.
    settle(&sup, "container idle again", |c| c.idle == 1 && c.busy == 0).await;
    let again = tokio::time::timeout(Duration::from_secs(1), pool.acquire()).await;
    assert!(again.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_lease_dropped_mid_task_retires_its_container() {
    let (sup, fake) = setup(pool_cfg(1, 1, 2)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let pool = sup.pool("p").unwrap();
    let mut lease = pool.acquire().await.unwrap();
    let id = lease.container.clone();
    lease.begin();
    drop(lease);
    settle(&sup, "replaced", |c| {
        c.idle == 1 && c.retiring == 0 && c.unhealthy == 0
    })
    .await;
    assert!(
        !fake.live().contains(&id),
        "the container that ran the task must be gone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_cancelled_mid_task_retires_the_container_and_a_new_one_serves() {
    let (sup, fake) = setup(pool_cfg(1, 1, 2)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let first = fake.live()[0].clone();
    let s2 = sup.clone();
    let running = tokio::spawn(async move { run(&s2, &["sleep", "100"]).await });
    settle(&sup, "task running", |c| c.busy == 1).await;
    running.abort();
    let _ = running.await;
    settle(&sup, "pool healed", |c| {
        c.idle == 1 && c.busy == 0 && c.retiring == 0
    })
    .await;
    assert!(!fake.live().contains(&first));
}

#[tokio::test(start_paused = true)]
async fn max_uses_replaces_a_container_after_that_many_tasks() {
    let mut cfg = pool_cfg(1, 1, 1);
    cfg.max_uses = 3;
    let (sup, _fake) = setup(cfg).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = run(&sup, &["echo", "x"]).await.unwrap();
        seen.push(r.container);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);
    assert_ne!(
        seen[2], seen[3],
        "the fourth task must get a fresh container"
    );
    assert_eq!(seen[3], seen[5]);
    assert!(
        metric(
            &sup,
            "warmpool_containers_removed_total{pool=\"p\",reason=\"uses\"}"
        ) >= 1.0
    );
}

#[tokio::test(start_paused = true)]
async fn max_uses_one_gives_every_task_a_fresh_container() {
    let mut cfg = pool_cfg(1, 1, 2);
    cfg.max_uses = 1;
    let (sup, _fake) = setup(cfg).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(run(&sup, &["echo", "x"]).await.unwrap().container);
    }
    assert_eq!(seen.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let mut cfg = pool_cfg(1, 1, 1);
    cfg.max_queue = 1;
    let (sup, _fake) = setup(cfg).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let pool = sup.pool("p").unwrap();
    let _held = pool.acquire().await.unwrap();
    let p2 = pool.clone();
    let _queued = tokio::spawn(async move { p2.acquire().await.map(|_| ()) });
    settle(&sup, "one queued", |c| c.queued == 1).await;
    let err = pool.acquire().await.unwrap_err();
    assert!(matches!(err, AcquireError::QueueFull { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn on_exhausted_fail_refuses_at_once_at_max() {
    let mut cfg = pool_cfg(1, 1, 1);
    cfg.on_exhausted = OnExhausted::Fail;
    let (sup, _fake) = setup(cfg).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let pool = sup.pool("p").unwrap();
    let _held = pool.acquire().await.unwrap();
    let err = pool.acquire().await.unwrap_err();
    assert!(matches!(err, AcquireError::Exhausted { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn on_exhausted_cold_starts_one_beyond_max_and_retires_it_after() {
    let mut cfg = pool_cfg(1, 1, 1);
    cfg.on_exhausted = OnExhausted::Cold;
    let (sup, fake) = setup(cfg).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let pool = sup.pool("p").unwrap();
    let _held = pool.acquire().await.unwrap();
    let r = run(&sup, &["echo", "x"]).await.unwrap();
    assert!(r.cold_start);
    assert_eq!(fake.creates.load(Ordering::SeqCst), 2);
    settle(&sup, "extra retired", |c| {
        c.idle == 0 && c.busy == 1 && c.retiring == 0
    })
    .await;
    assert_eq!(fake.live().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_task_is_reported_and_its_container_retired() {
    let (sup, fake) = setup(pool_cfg(1, 1, 2)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let mut req = task(&["sleep", "60"]);
    req.timeout = Some(Duration::from_secs(1));
    let (tx, _rx) = mpsc::unbounded_channel();
    let r = sup.submit("p", req, tx).await.unwrap();
    assert!(r.exit.timed_out);
    assert_eq!(r.run, Duration::from_secs(1));
    settle(&sup, "replaced", |c| {
        c.idle == 1 && c.retiring == 0 && c.unhealthy == 0
    })
    .await;
    assert!(!fake.live().contains(&r.container));
}

#[tokio::test(start_paused = true)]
async fn a_shim_that_never_answers_is_given_up_on_after_the_backstop() {
    let (sup, fake) = setup(pool_cfg(1, 1, 2)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let first = fake.live()[0].clone();
    let mut req = task(&["hang"]);
    req.timeout = Some(Duration::from_secs(1));
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = sup.submit("p", req, tx).await.unwrap_err();
    assert!(
        matches!(err, SubmitError::Exec(ExecError::Hung(_))),
        "{err}"
    );
    settle(&sup, "replaced", |c| {
        c.idle == 1 && c.retiring == 0 && c.unhealthy == 0
    })
    .await;
    assert!(!fake.live().contains(&first));
}

#[tokio::test(start_paused = true)]
async fn a_container_dying_mid_task_fails_the_task_clearly_and_is_replaced() {
    let (sup, fake) = setup(pool_cfg(1, 1, 2)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let first = fake.live()[0].clone();
    let err = run(&sup, &["die"]).await.unwrap_err();
    assert!(
        matches!(err, SubmitError::Exec(ExecError::Dead(_))),
        "{err}"
    );
    assert!(err.to_string().contains("replaced"), "{err}");
    settle(&sup, "replaced", |c| {
        c.idle == 1 && c.retiring == 0 && c.unhealthy == 0
    })
    .await;
    assert!(!fake.live().contains(&first));
}

/// Runs a task and returns its stdout.
async fn stdout_of(sup: &Supervisor, argv: &[&str]) -> Result<String, SubmitError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    sup.submit("p", task(argv), tx).await?;
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let crate::exec::TaskEvent::Stdout(b) = ev {
            out.extend_from_slice(&b);
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(start_paused = true)]
async fn the_next_pool_task_finds_the_workdir_wiped_unless_reset_workdir_is_off() {
    for reset_workdir in [true, false] {
        let mut cfg = pool_cfg(1, 1, 1);
        cfg.reset_workdir = reset_workdir;
        let (sup, _fake) = setup(cfg).await;
        settle(&sup, "1 idle", |c| c.idle == 1).await;
        run(&sup, &["touch", "left-over"]).await.unwrap();
        let listing = stdout_of(&sup, &["ls"]).await.unwrap();
        let expected = if reset_workdir { "" } else { "left-over\n" };
        assert_eq!(listing, expected, "reset_workdir = {reset_workdir}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_wipe_fails_the_next_task_and_replaces_the_container() {
    let mut cfg = pool_cfg(1, 1, 1);
    cfg.workdir = "/unwipeable".into();
    let (sup, fake) = setup(cfg).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let first = fake.live()[0].clone();
    run(&sup, &["touch", "x"]).await.unwrap();
    let err = run(&sup, &["echo", "never"]).await.unwrap_err();
    assert!(
        matches!(err, SubmitError::Exec(ExecError::Dead(_))),
        "{err}"
    );
    assert!(err.to_string().contains("workdir reset failed"), "{err}");
    settle(&sup, "replaced", |c| c.idle == 1 && c.retiring == 0).await;
    assert!(!fake.live().contains(&first));
    // The replacement is clean, so the next task runs.
    run(&sup, &["echo", "ok"]).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_killed_idle_container_is_replaced() {
    let mut cfg = pool_cfg(1, 1, 2);
    cfg.health_check_interval = Duration::from_secs(30);
    let (sup, fake) = setup(cfg).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let first = fake.live()[0].clone();
    let t0 = tokio::time::Instant::now();
    fake.kill(&first);
    settle(&sup, "replacement idle", |c| c.idle == 1).await;
    settle(&sup, "old one gone", |_| !fake.live().contains(&first)).await;
    assert!(
        t0.elapsed() <= Duration::from_secs(30),
        "replaced within one interval"
    );
}

#[tokio::test(start_paused = true)]
async fn health_checks_run_every_interval() {
    let mut cfg = pool_cfg(2, 2, 2);
    cfg.health_check_interval = Duration::from_secs(10);
    let (sup, _fake) = setup(cfg).await;
    settle(&sup, "2 idle", |c| c.idle == 2).await;
    let line = "warmpool_health_checks_total{pool=\"p\",result=\"healthy\"}";
    assert_eq!(metric(&sup, line), 0.0);
    // Spread over the interval, a share at a time (one of two idle per round, four rounds
    // per interval): both are probed within one interval and a round.
    tokio::time::sleep(Duration::from_millis(12_600)).await;
    settle(&sup, "probes done", |c| c.idle == 2).await;
    assert_eq!(metric(&sup, line), 2.0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle(&sup, "probes done", |c| c.idle == 2).await;
    assert_eq!(metric(&sup, line), 4.0);
}

#[tokio::test(start_paused = true)]
async fn a_lazy_pool_starts_nothing_until_its_first_task() {
    let (sup, fake) = setup(pool_cfg(0, 0, 3)).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(fake.creates.load(Ordering::SeqCst), 0);
    let r = run(&sup, &["echo", "x"]).await.unwrap();
    assert!(r.cold_start);
    let r2 = run(&sup, &["echo", "x"]).await.unwrap();
    assert!(!r2.cold_start);
    assert_eq!(
        r.container, r2.container,
        "later tasks reuse the first container"
    );
    assert_eq!(fake.creates.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_burst_grows_the_pool_to_max_at_once_and_quiet_shrinks_it_to_min() {
    let mut cfg = pool_cfg(1, 1, 6);
    cfg.scale_interval = Duration::from_secs(1);
    cfg.idle_timeout = Duration::from_secs(3600);
    let (sup, fake) = setup(cfg).await;
    *fake.create_delay.lock() = Duration::from_millis(300);
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let s = sup.clone();
        tasks.push(tokio::spawn(async move { run(&s, &["sleep", "2"]).await }));
    }
    settle(&sup, "target 6", |c| c.target == 6).await;
    settle(&sup, "6 live", |c| c.busy + c.idle == 6).await;
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    assert!(
        fake.max_parallel_creates.load(Ordering::SeqCst) <= 3,
        "creates are capped"
    );
    // Quiet: after the stabilization window (6 looks) the pool steps back to min.
    settle(&sup, "back to 1", |c| c.idle + c.busy == 1 && c.target == 1).await;
    assert!(
        metric(
            &sup,
            "warmpool_scale_events_total{direction=\"down\",pool=\"p\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &sup,
            "warmpool_scale_events_total{direction=\"up\",pool=\"p\"}"
        ) >= 1.0
    );
}

#[tokio::test(start_paused = true)]
async fn idle_containers_above_min_are_removed_after_idle_timeout() {
    let mut cfg = pool_cfg(1, 3, 5);
    cfg.idle_timeout = Duration::from_secs(60);
    // A stabilization window far longer than idle_timeout: only idle_timeout can act.
    cfg.scale_interval = Duration::from_secs(600);
    cfg.health_check_interval = Duration::from_secs(10);
    let (sup, _fake) = setup(cfg).await;
    settle(&sup, "3 idle", |c| c.idle == 3).await;
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert_eq!(counts(&sup).idle, 3, "not before idle_timeout");
    settle(&sup, "down to min", |c| c.idle == 1).await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(counts(&sup).idle, 1, "never below min, and not re-created");
    assert!(
        metric(
            &sup,
            "warmpool_containers_removed_total{pool=\"p\",reason=\"idle\"}"
        ) >= 2.0
    );
}

#[tokio::test(start_paused = true)]
async fn max_age_renews_containers_surge_first() {
    let mut cfg = pool_cfg(2, 2, 4);
    cfg.max_age = Duration::from_secs(100);
    cfg.scale_interval = Duration::from_secs(1);
    let (sup, fake) = setup(cfg).await;
    settle(&sup, "2 idle", |c| c.idle == 2).await;
    let originals = fake.live();
    *fake.create_delay.lock() = Duration::from_secs(2);
    // Watch capacity through the whole renewal, until the test has seen it end: it must
    // never dip below min.
    let t0 = tokio::time::Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, done2) = (sup.clone(), done.clone());
    let watcher = tokio::spawn(async move {
        let (mut lowest, mut samples) = (usize::MAX, 0u64);
        while !done2.load(Ordering::SeqCst) {
            let c = counts(&s2);
            lowest = lowest.min(c.idle + c.busy + c.probing);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (lowest, samples)
    });
    settle(&sup, "originals renewed", |_| {
        let live = fake.live();
        originals.iter().all(|o| !live.contains(o)) && live.len() >= 2
    })
    .await;
    let renewed_after = t0.elapsed();
    done.store(true, Ordering::SeqCst);
    let (lowest, samples) = watcher.await.unwrap();
    assert!(
        renewed_after >= Duration::from_secs(90),
        "renewed after {renewed_after:?}: max_age 100 s, at most 10% earlier"
    );
    assert!(samples > 1000, "the watcher sampled the renewal: {samples}");
    assert!(lowest >= 2, "capacity dipped below min during renewal");
    assert!(
        metric(
            &sup,
            "warmpool_containers_removed_total{pool=\"p\",reason=\"age\"}"
        ) >= 2.0
    );
}

#[tokio::test(start_paused = true)]
async fn failing_creates_back_off_then_recover() {
    let fake = FakeRuntime::new();
    fake.fail_creates.store(4, Ordering::SeqCst);
    let sup = Supervisor::new(fake.clone(), Arc::new(Metrics::new()), None, "test", 100);
    let cfg = pool_cfg(1, 1, 1);
    let config = Config {
        server: Default::default(),
        docker: Default::default(),
        pools: BTreeMap::from([("p".to_string(), cfg)]),
    };
    let t0 = tokio::time::Instant::now();
    sup.start(&config).await.unwrap();
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    // Four failures with back-off 0.5 s, 1 s, 2 s, 4 s before the fifth try succeeds.
    assert!(
        t0.elapsed() >= Duration::from_millis(7500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(fake.fail_creates.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn leftovers_of_this_instance_are_removed_at_start_in_any_state() {
    let fake = FakeRuntime::new();
    let labels = |instance: &str| {
        BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_POOL.to_string(), "p".to_string()),
            (LABEL_INSTANCE.to_string(), instance.to_string()),
        ])
    };
    let running = fake.add_leftover("warmpool-p-1", labels("test"), "running");
    let created = fake.add_leftover("warmpool-p-2", labels("test"), "created");
    let exited = fake.add_leftover("warmpool-p-3", labels("test"), "exited");
    let other = fake.add_leftover("warmpool-p-4", labels("other"), "running");
    let sup = Supervisor::new(fake.clone(), Arc::new(Metrics::new()), None, "test", 100);
    let config = Config {
        server: Default::default(),
        docker: Default::default(),
        pools: BTreeMap::from([("p".to_string(), pool_cfg(0, 0, 1))]),
    };
    sup.start(&config).await.unwrap();
    let live = fake.live();
    for gone in [&running, &created, &exited] {
        assert!(!live.contains(gone), "{gone} should be removed");
    }
    assert!(
        live.contains(&other),
        "another instance's container must stay"
    );
    assert_eq!(
        metric(
            &sup,
            "warmpool_containers_removed_total{pool=\"p\",reason=\"orphan\"}"
        ),
        3.0
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_running_tasks_then_removes_everything() {
    let mut cfg = pool_cfg(2, 2, 2);
    cfg.network = crate::config::NetworkMode::Isolated;
    let (sup, fake) = setup(cfg).await;
    settle(&sup, "2 idle", |c| c.idle == 2).await;
    assert_eq!(fake.networks(), vec!["warmpool-test-p".to_string()]);
    let s2 = sup.clone();
    let running = tokio::spawn(async move { run(&s2, &["sleep", "5"]).await });
    settle(&sup, "task running", |c| c.busy == 1).await;
    let t0 = tokio::time::Instant::now();
    sup.shutdown(Duration::from_secs(30)).await;
    assert!(
        t0.elapsed() >= Duration::from_secs(4),
        "shutdown must wait for the running task"
    );
    assert!(running.await.unwrap().is_ok(), "the running task finishes");
    assert!(fake.live().is_empty());
    assert!(fake.networks().is_empty());
    let err = run(&sup, &["echo"]).await.unwrap_err();
    assert!(matches!(err, SubmitError::Acquire(AcquireError::Closed(_))));
}

#[tokio::test(start_paused = true)]
async fn shutdown_grace_bounds_the_wait() {
    let (sup, fake) = setup(pool_cfg(1, 1, 1)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let s2 = sup.clone();
    let _running = tokio::spawn(async move { run(&s2, &["sleep", "1000"]).await });
    settle(&sup, "task running", |c| c.busy == 1).await;
    let t0 = tokio::time::Instant::now();
    sup.shutdown(Duration::from_secs(3)).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert!(fake.live().is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_starts_in_flight_and_their_removal() {
    // The process exits when shutdown returns: a container whose start was still in flight
    // (created after the final sweep) or whose removal was still running would outlive it.
    let (sup, fake) = setup(pool_cfg(1, 1, 3)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    *fake.create_delay.lock() = Duration::from_secs(5);
    let s2 = sup.clone();
    let _busy = tokio::spawn(async move { run(&s2, &["sleep", "1"]).await });
    let s3 = sup.clone();
    let _waiting = tokio::spawn(async move { run(&s3, &["echo"]).await });
    settle(&sup, "a start in flight", |c| c.starting > 0).await;
    sup.shutdown(Duration::from_secs(30)).await;
    let c = counts(&sup);
    assert_eq!(
        (c.starting, c.retiring),
        (0, 0),
        "shutdown returned with work in flight: {c:?}"
    );
    assert!(fake.live().is_empty(), "left behind: {:?}", fake.live());
}

#[tokio::test(start_paused = true)]
async fn the_reaper_removes_containers_no_pool_knows() {
    let (sup, fake) = setup(pool_cfg(1, 1, 1)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let stray = fake.add_leftover(
        "warmpool-p-stray",
        BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_POOL.to_string(), "p".to_string()),
            (LABEL_INSTANCE.to_string(), "test".to_string()),
            (
                crate::runtime::LABEL_DAEMON.to_string(),
                sup.daemon_id.clone(),
            ),
        ]),
        "created",
    );
    sup.reap_once().await;
    assert!(!fake.live().contains(&stray));
    assert_eq!(fake.live().len(), 1, "the pool's own container stays");
}

#[tokio::test(start_paused = true)]
async fn per_task_env_and_stdin_do_not_cost_a_cold_start() {
    let (sup, _fake) = setup(pool_cfg(1, 1, 1)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let a = run(&sup, &["echo", "a"]).await.unwrap();
    let mut req = task(&["echo", "b"]);
    req.env.insert("K".into(), "V".into());
    let (tx, _rx) = mpsc::unbounded_channel();
    let b = sup.submit("p", req, tx).await.unwrap();
    assert_eq!(a.container, b.container);
    assert!(!b.cold_start);
}

#[tokio::test(start_paused = true)]
async fn the_reaper_leaves_alone_a_container_whose_removal_is_under_way() {
    let mut cfg = pool_cfg(1, 1, 1);
    cfg.max_uses = 1;
    let (sup, fake) = setup(cfg).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    *fake.remove_delay.lock() = Duration::from_secs(2);
    let used = run(&sup, &["echo", "x"]).await.unwrap().container;
    settle(&sup, "its removal under way", |c| c.retiring == 1).await;
    assert!(fake.live().contains(&used));
    sup.reap_once().await;
    settle(&sup, "removed", |c| c.retiring == 0).await;
    assert!(!fake.live().contains(&used));
    assert_eq!(
        metric(
            &sup,
            "warmpool_containers_removed_total{pool=\"p\",reason=\"orphan\"}"
        ),
        0.0,
        "a retired container is not an orphan"
    );
    assert_eq!(
        metric(
            &sup,
            "warmpool_containers_removed_total{pool=\"p\",reason=\"uses\"}"
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn the_reaper_leaves_alone_a_session_container_while_its_session_ends() {
    let mut cfg = pool_cfg(1, 1, 2);
    cfg.session_end_command = Some(vec!["sleep".into(), "5".into()]);
    let (sup, fake) = setup(cfg).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    sup.create_session("p", Some("s1".into()), None).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let container = sup
        .session_task("p", "s1", task(&["echo", "x"]), tx)
        .await
        .unwrap()
        .container;
    let ending = {
        let sup = sup.clone();
        tokio::spawn(async move { sup.end_session("s1").await })
    };
    // The end command (state saving) runs for 5 s; a reaper pass comes by meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sup.reap_once().await;
    assert!(
        fake.live().contains(&container),
        "the reaper removed a session's container while its end command ran"
    );
    ending.await.unwrap().unwrap();
    assert!(!fake.live().contains(&container));
    assert_eq!(
        metric(
            &sup,
            "warmpool_containers_removed_total{pool=\"p\",reason=\"orphan\"}"
        ),
        0.0
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_with_no_container_start_in_flight() {
    let fake = FakeRuntime::new();
    *fake.create_delay.lock() = Duration::from_secs(2);
    let sup = Supervisor::new(fake.clone(), Arc::new(Metrics::new()), None, "test", 100);
    let config = Config {
        server: Default::default(),
        docker: Default::default(),
        pools: BTreeMap::from([("p".to_string(), pool_cfg(2, 2, 2))]),
    };
    sup.start(&config).await.unwrap();
    settle(&sup, "starts in flight", |c| c.starting == 2).await;
    sup.shutdown(Duration::ZERO).await;
    // The process exits here: a create still in flight would be completed by the engine
    // after the daemon is gone and leave its container behind.
    assert_eq!(counts(&sup).starting, 0, "a start was still in flight");
    assert!(fake.live().is_empty(), "{:?}", fake.live());
}

fn instance_labels(instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_POOL.to_string(), "p".to_string()),
    ])
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_removals_in_progress_and_does_not_count_ghosts() {
    let (sup, fake) = setup(pool_cfg(2, 2, 2)).await;
    settle(&sup, "2 idle", |c| c.idle == 2).await;
    // Listed, but inspect finds it no more: not a container, not counted, not waited for.
    fake.add_ghost("warmpool-test-p-ghost", instance_labels("test"));
    // A removal the engine has in progress, done 3 s from now: waited for.
    let removing = fake.add_leftover(
        "warmpool-test-p-removing",
        instance_labels("test"),
        "removing",
    );
    let (f2, r2) = (fake.clone(), removing.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        f2.finish_removal(&r2);
    });
    let t0 = tokio::time::Instant::now();
    let left = sup.shutdown(Duration::ZERO).await;
    assert_eq!(left, Leftovers::None);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "returned before the removal in progress ended: {took:?}"
    );
    assert!(took < CONFIRM_TIMEOUT, "waited for the ghost: {took:?}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_slow_removals_while_they_progress() {
    // 40 removals in progress, one done every 2 s: 80 s in all, well past the 30 s a
    // stalled wait allows, yet each look finds fewer left, so the wait goes on (seen with
    // 1,000 containers on a loaded 2-core engine: a fixed 30 s left 10 behind).
    let (sup, fake) = setup(pool_cfg(1, 1, 1)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    let removing: Vec<String> = (0..40)
        .map(|i| {
            fake.add_leftover(
                &format!("warmpool-test-p-slow{i}"),
                instance_labels("test"),
                "removing",
            )
        })
        .collect();
    let f2 = fake.clone();
    tokio::spawn(async move {
        for id in removing {
            tokio::time::sleep(Duration::from_secs(2)).await;
            f2.finish_removal(&id);
        }
    });
    let t0 = tokio::time::Instant::now();
    let left = sup.shutdown(Duration::ZERO).await;
    assert_eq!(left, Leftovers::None);
    assert!(
        t0.elapsed() >= Duration::from_secs(80),
        "returned before the last removal ended: {:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() < CONFIRM_MAX, "{:?}", t0.elapsed());
}

#[test]
fn the_confirmation_wait_ends_on_a_stall_or_at_the_cap() {
    let start = tokio::time::Instant::now();
    let s = Duration::from_secs;
    let over = |progress: u64, now: u64| {
        confirm_wait_over(start, start + s(progress), start + s(now), s(30), s(300))
    };
    assert!(!over(0, 29), "29 s without progress is not a stall");
    assert!(over(0, 30), "30 s without progress is");
    assert!(!over(100, 120), "progress 20 s ago: still waiting");
    assert!(over(290, 300), "the cap holds whatever the progress");
}

#[tokio::test(start_paused = true)]
async fn shutdown_removes_leftovers_again_and_counts_what_remains() {
    let (sup, fake) = setup(pool_cfg(2, 2, 2)).await;
    settle(&sup, "2 idle", |c| c.idle == 2).await;
    // Of this instance but not of this run (no daemon label): the confirmation removes it.
    let exited = fake.add_leftover("warmpool-test-p-exited", instance_labels("test"), "exited");
    // A removal that never ends: counted once the wait is over.
    fake.add_leftover("warmpool-test-p-stuck", instance_labels("test"), "removing");
    // Another installation's: neither removed nor counted.
    let other = fake.add_leftover("warmpool-other-p-x", instance_labels("other"), "running");
    let t0 = tokio::time::Instant::now();
    let left = sup.shutdown(Duration::ZERO).await;
    assert_eq!(
        left,
        Leftovers::Remain(vec!["warmpool-test-p-stuck".to_string()])
    );
    assert!(t0.elapsed() >= CONFIRM_TIMEOUT, "{:?}", t0.elapsed());
    // Asked on a back-off, not in a hot loop: about 20 rounds in 30 s.
    assert!(confirm_pause(0) >= Duration::from_millis(100));
    assert_eq!(confirm_pause(10), Duration::from_secs(2));
    let live = fake.live();
    assert!(
        !live.contains(&exited),
        "the leftover was not removed again"
    );
    assert!(
        live.contains(&other),
        "another instance's container was removed"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_says_when_the_engine_cannot_confirm() {
    let (sup, fake) = setup(pool_cfg(1, 1, 1)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    fake.down.store(true, Ordering::SeqCst);
    let left = sup.shutdown(Duration::ZERO).await;
    assert!(matches!(left, Leftovers::Unknown(_)), "{left:?}");
}

#[tokio::test(start_paused = true)]
async fn removals_are_bounded_across_the_daemon() {
    // 40 removals at once at shutdown (and a pool's, and the reaper's, and sessions'):
    // the engine never sees more than PARALLEL_REMOVES of them in flight.
    let (sup, fake) = setup(pool_cfg(40, 40, 40)).await;
    settle(&sup, "40 idle", |c| c.idle == 40).await;
    *fake.remove_delay.lock() = Duration::from_secs(1);
    assert_eq!(sup.shutdown(Duration::ZERO).await, Leftovers::None);
    assert!(fake.live().is_empty());
    assert_eq!(
        fake.max_parallel_removes.load(Ordering::SeqCst),
        crate::runtime::bounded::PARALLEL_REMOVES
    );
}

#[tokio::test(start_paused = true)]
async fn a_session_whose_container_dies_fails_as_the_container_not_the_request() {
    let (sup, _fake) = setup(pool_cfg(1, 1, 2)).await;
    settle(&sup, "1 idle", |c| c.idle == 1).await;
    sup.create_session("p", Some("s1".into()), None).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = sup
        .session_task("p", "s1", task(&["die"]), tx)
        .await
        .unwrap_err();
    // The API answers this 502 container_failed (an Invalid would be a 400).
    assert!(
        matches!(
            err,
            crate::session::SessionError::Submit(SubmitError::Exec(ExecError::Dead(_)))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("files are lost"), "{err}");
    let (tx, _rx) = mpsc::unbounded_channel();
    let report = sup
        .session_task("p", "s1", task(&["echo", "x"]), tx)
        .await
        .unwrap();
    assert_eq!(report.exit.exit_code, Some(0));
}

/// Every line logged at INFO or above on this thread while the guard lives (a paused-time
/// test runs its tasks on the one thread), as text.
fn capture_logs() -> (
    Arc<parking_lot::Mutex<Vec<u8>>>,
    tracing::subscriber::DefaultGuard,
) {
    #[derive(Clone)]
    struct Buf(Arc<parking_lot::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let writer = Buf(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

fn error_lines(logs: &parking_lot::Mutex<Vec<u8>>, needle: &str) -> usize {
    String::from_utf8_lossy(&logs.lock())
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains(needle))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_refused_start_fails_the_pool_once_it_retries_rarely_and_a_reload_clears_it() {
    let (logs, _guard) = capture_logs();
    let fake = FakeRuntime::new();
    *fake.refuse_creates.lock() =
        Some("unknown or invalid runtime name: nope; what to do: install it".into());
    // Three creates in flight at once (PARALLEL_CREATES) when the first refusal comes back.
    *fake.create_delay.lock() = Duration::from_secs(1);
    let mut cfg = pool_cfg(5, 5, 5);
    cfg.health_check_interval = Duration::from_secs(60);
    let sup = Supervisor::new(fake.clone(), Arc::new(Metrics::new()), None, "test", 100);
    let config = Config {
        server: Default::default(),
        docker: Default::default(),
        pools: BTreeMap::from([(cfg.name.clone(), cfg.clone())]),
    };
    sup.start(&config).await.unwrap();
    settle(&sup, "failed", |c| c.failed && c.starting == 0).await;
    let failure = sup.pool("p").unwrap().failure().expect("failed");
    assert_eq!(failure.reason, "unknown or invalid runtime name: nope");
    assert_eq!(failure.hint, "install it");
    // The three in flight reached the engine; the two waiting their turn never did.
    assert_eq!(fake.create_attempts.load(Ordering::SeqCst), 3);
    assert_eq!(metric(&sup, "warmpool_pool_failed{pool=\"p\"}"), 1.0);
    assert!(sup.ready().unwrap_err().contains("pool p is failed"));
    // A task is answered at once, with the engine's words and the fix.
    let began = tokio::time::Instant::now();
    let err = run(&sup, &["echo"]).await.unwrap_err();
    assert!(
        matches!(err, SubmitError::Acquire(AcquireError::Failed { .. })),
        "{err}"
    );
    assert_eq!(began.elapsed(), Duration::ZERO);
    let text = err.to_string();
    assert!(text.contains("pool p is failed"), "{text}");
    assert!(
        text.contains("unknown or invalid runtime name: nope"),
        "{text}"
    );
    assert!(text.contains("install it"), "{text}");
    // No retry loop: nothing more reaches the engine until health_check_interval passed.
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert_eq!(fake.create_attempts.load(Ordering::SeqCst), 3);
    // Then one start (at the loop's first look past the interval), refused the same way:
    // still failed, not logged again.
    for _ in 0..600 {
        if fake.create_attempts.load(Ordering::SeqCst) > 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle(&sup, "retry ended", |c| c.starting == 0).await;
    assert_eq!(fake.create_attempts.load(Ordering::SeqCst), 4);
    assert!(counts(&sup).failed);
    assert_eq!(error_lines(&logs, "refuses to start"), 1);
    // The operator fixes the engine and reloads (the same file): the pool starts again.
    *fake.refuse_creates.lock() = None;
    sup.reload(&config).await.unwrap();
    settle(&sup, "5 idle", |c| c.idle == 5 && !c.failed).await;
    assert!(sup.pool("p").unwrap().failure().is_none());
    assert_eq!(metric(&sup, "warmpool_pool_failed{pool=\"p\"}"), 0.0);
    assert!(run(&sup, &["echo"]).await.is_ok());
    assert_eq!(error_lines(&logs, "refuses to start"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_pool_recovers_by_itself_when_its_periodic_retry_is_not_refused() {
    let fake = FakeRuntime::new();
    *fake.refuse_creates.lock() = Some("refused".into());
    let mut cfg = pool_cfg(1, 1, 2);
    cfg.health_check_interval = Duration::from_secs(30);
    let sup = Supervisor::new(fake.clone(), Arc::new(Metrics::new()), None, "test", 100);
    let config = Config {
        server: Default::default(),
        docker: Default::default(),
        pools: BTreeMap::from([(cfg.name.clone(), cfg)]),
    };
    sup.start(&config).await.unwrap();
    settle(&sup, "failed", |c| c.failed).await;
    *fake.refuse_creates.lock() = None;
    let began = tokio::time::Instant::now();
    settle(&sup, "recovered", |c| !c.failed && c.idle == 1).await;
    // By its own retry, one health_check_interval after the refusal (at the loop's next
    // look, a quarter of it at most), not before.
    let took = began.elapsed();
    assert!(took >= Duration::from_secs(29), "{took:?}");
    assert!(took <= Duration::from_secs(40), "{took:?}");
    assert!(run(&sup, &["echo"]).await.is_ok());
}

/// warmpool never pulls: an image missing from the engine fails the pool at its first
/// create, with the image and the fix, rather than backing off and retrying for ever; the
/// pool comes back by its periodic retry once the image is there.
#[tokio::test(start_paused = true)]
async fn a_missing_image_fails_the_pool_with_the_fix_and_it_recovers_once_built() {
    let fake = FakeRuntime::new();
    let mut cfg = pool_cfg(1, 1, 2);
    cfg.image = "team/agent:missing".into();
    fake.missing_images.lock().insert(cfg.image.clone());
    let sup = Supervisor::new(fake.clone(), Arc::new(Metrics::new()), None, "test", 100);
    let config = Config {
        server: Default::default(),
        docker: Default::default(),
        pools: BTreeMap::from([(cfg.name.clone(), cfg)]),
    };
    sup.start(&config).await.unwrap();
    settle(&sup, "failed", |c| c.failed && c.starting == 0).await;
    let failure = sup.pool("p").unwrap().failure().expect("failed");
    assert!(
        failure
            .reason
            .starts_with("image team/agent:missing is not on the engine (No such image"),
        "{failure:?}"
    );
    assert!(failure.hint.contains("docker load"), "{failure:?}");
    assert!(failure.hint.contains("pools.toml"), "{failure:?}");
    assert_eq!(fake.create_attempts.load(Ordering::SeqCst), 1);
    let err = run(&sup, &["echo"]).await.unwrap_err();
    assert!(
        matches!(err, SubmitError::Acquire(AcquireError::Failed { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("team/agent:missing"), "{err}");
    // Someone builds it: the next retry (one health_check_interval on) starts the pool.
    fake.missing_images.lock().clear();
    settle(&sup, "recovered", |c| !c.failed && c.idle == 1).await;
    assert!(run(&sup, &["echo"]).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_start_failure_that_is_not_a_refusal_backs_off_and_never_fails_the_pool() {
    let fake = FakeRuntime::new();
    fake.fail_creates.store(3, Ordering::SeqCst);
    let sup = Supervisor::new(fake.clone(), Arc::new(Metrics::new()), None, "test", 100);
    let config = Config {
        server: Default::default(),
        docker: Default::default(),
        pools: BTreeMap::from([("p".to_string(), pool_cfg(1, 1, 2))]),
    };
    sup.start(&config).await.unwrap();
    let pool = sup.pool("p").unwrap();
    let mut was_failed = false;
    // Each retry waits for its back-off and the loop's next look (scale_interval, 5 s).
    for _ in 0..12_000 {
        was_failed |= pool.counts().failed;
        if pool.counts().idle == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!was_failed, "a transient failure made the pool failed");
    assert_eq!(pool.counts().idle, 1);
    assert_eq!(fake.create_attempts.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn a_task_queued_when_the_pool_becomes_failed_is_answered_then_not_at_acquire_timeout() {
    let fake = FakeRuntime::new();
    *fake.refuse_creates.lock() = Some("refused for good".into());
    *fake.create_delay.lock() = Duration::from_secs(1);
    // Lazy: the task's arrival starts the container it waits for.
    let sup = Supervisor::new(fake.clone(), Arc::new(Metrics::new()), None, "test", 100);
    let config = Config {
        server: Default::default(),
        docker: Default::default(),
        pools: BTreeMap::from([("p".to_string(), pool_cfg(0, 0, 1))]),
    };
    sup.start(&config).await.unwrap();
    let began = tokio::time::Instant::now();
    let err = run(&sup, &["echo"]).await.unwrap_err();
    assert!(
        matches!(err, SubmitError::Acquire(AcquireError::Failed { .. })),
        "{err}"
    );
    // At the refusal (the create takes 1 s), not at acquire_timeout (30 s).
    assert_eq!(began.elapsed(), Duration::from_secs(1));
    assert_eq!(fake.create_attempts.load(Ordering::SeqCst), 1);
}
