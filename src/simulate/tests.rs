//! The simulator: trace errors, the oracle, and the policies on the shipped traces.

use super::*;

#[test]
fn a_malformed_line_names_its_line_and_the_form() {
    let text =
        "{\"at\": 0.5, \"pool\": \"coder\", \"duration\": 1}\n\n{\"at\": 1, \"pool\": \"coder\"}\n";
    let e = Trace::parse(text, "t.jsonl").unwrap_err().to_string();
    assert!(
        e.starts_with("t.jsonl:3: not a task (missing field `duration`"),
        "{e}"
    );
    assert!(
        e.contains(r#"such as {"at": 12.5, "pool": "coder", "duration": 0.8}"#),
        "{e}"
    );
    let e = Trace::parse(
        "{\"at\": -1, \"pool\": \"coder\", \"duration\": 1}",
        "t.jsonl",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("t.jsonl:1: at is -1: it must be a number of seconds"),
        "{e}"
    );
    let e = Trace::parse("at,pool,duration\n", "t.jsonl")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("t.jsonl:1: not a task"), "{e}");
    let e = Trace::parse("\n", "t.jsonl").unwrap_err().to_string();
    assert!(e.contains("t.jsonl has no task"), "{e}");
}

#[test]
fn an_unknown_pool_names_the_line_the_pools_there_are_and_the_fix() {
    let config = Config::parse("[pools.coder]\nimage = \"i\"\n", "pools.toml").unwrap();
    let text = "{\"at\": 0, \"pool\": \"coder\", \"duration\": 1}\n{\"at\": 1, \"pool\": \"tester\", \"duration\": 1}\n";
    let trace = Trace::parse(text, "t.jsonl").unwrap();
    let e = trace
        .check_pools(&config, "pools.toml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "t.jsonl:2: pool \"tester\" is not in pools.toml (its pools: coder): add \
         [pools.tester] to the config or replay with the config the trace was recorded with"
    );
}

#[test]
fn lines_out_of_order_are_put_in_order() {
    let text = "{\"at\": 5, \"pool\": \"a\", \"duration\": 1}\n{\"at\": 2, \"pool\": \"a\", \"duration\": 1}\n";
    let t = Trace::parse(text, "t").unwrap();
    assert_eq!(t.tasks[0].at, 2.0);
}

#[test]
fn the_oracle_chains_close_tasks_and_recreates_across_long_gaps() {
    // One task: created `latency` before, then runs.
    assert_eq!(oracle([(10.0, 1.0)].into_iter(), 0.3), (1.3, 1));
    // The next arrives 0.1 s after the first ends: the container waits 0.1 s.
    let (cs, creates) = oracle([(10.0, 1.0), (11.1, 1.0)].into_iter(), 0.3);
    assert!((cs - 2.4).abs() < 1e-9 && creates == 1, "{cs} {creates}");
    // 5 s later: cheaper to remove it and create another 0.3 s before.
    let (cs, creates) = oracle([(10.0, 1.0), (16.0, 1.0)].into_iter(), 0.3);
    assert!((cs - 2.6).abs() < 1e-9 && creates == 2, "{cs} {creates}");
    // Two at once need two containers.
    assert_eq!(oracle([(1.0, 1.0), (1.0, 1.0)].into_iter(), 0.5).1, 2);
    // The container freed last is the one taken: freed at 2 and 2.9, task at 3 takes the
    // 2.9 one (gap 0.1) and the one at 3.05 the other (gap 1.05 > 0.3: created anew).
    let tasks = [(1.0, 1.0), (1.5, 1.4), (3.0, 1.0), (3.05, 1.0)];
    let (cs, _) = oracle(tasks.into_iter(), 0.3);
    assert!((cs - (4.4 + 0.3 + 0.3 + 0.1 + 0.3)).abs() < 1e-9, "{cs}");
}

fn shipped(name: &str) -> Trace {
    let path = format!("{}/benches/traces/{name}.jsonl", env!("CARGO_MANIFEST_DIR"));
    Trace::load(Path::new(&path)).unwrap()
}

fn bench_config() -> Config {
    let path = format!("{}/benches/pools.toml", env!("CARGO_MANIFEST_DIR"));
    Config::load(Path::new(&path)).unwrap()
}

/// The forecast is what makes the burst trace warm: with it at least 99 % of tasks find a
/// warm container, without it (today's thresholds) fewer do.
#[test]
fn the_burst_trace_is_warm_with_the_forecast_and_not_without() {
    let trace = shipped("bursts");
    let config = bench_config();
    let opts = Options::default();
    let new = simulate(&config, &trace, &opts, "new").unwrap();
    let mut off = config.clone();
    for p in off.pools.values_mut() {
        p.predictive = false;
    }
    let without = simulate(&off, &trace, &opts, "no-forecast").unwrap();
    assert!(new[0].warm_hit_rate >= 0.99, "{new:?}");
    assert!(without[0].warm_hit_rate < 0.99, "{without:?}");
    assert_eq!(new[0].tasks, 4879);
    assert_eq!(new[0].failed, 0);
}

/// `[server] trace_file`: the daemon's path (Supervisor::submit) records each task that ran,
/// and the file replays.
#[tokio::test(start_paused = true)]
async fn the_supervisor_records_every_task_that_ran_in_the_simulators_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.jsonl");
    let config = Config::parse("[pools.coder]\nimage = \"i\"\n", "pools.toml").unwrap();
    let sup = Supervisor::new(
        SimEngine::new(EngineModel::default()),
        Arc::new(Metrics::new()),
        None,
        "test",
        10,
    );
    sup.start(&config).await.unwrap();
    let recorder = record::TraceRecorder::open(&path, 1 << 20).unwrap();
    sup.set_trace_recorder(Some(Arc::new(recorder)));
    for secs in ["0.5", "1.25"] {
        let (tx, _rx) = mpsc::unbounded_channel();
        let request = TaskRequest {
            argv: vec!["sleep".into(), secs.into()],
            ..Default::default()
        };
        sup.submit("coder", request, tx).await.unwrap();
    }
    // Unknown pool: not a task that ran, not recorded.
    let (tx, _rx) = mpsc::unbounded_channel();
    assert!(sup
        .submit("nope", TaskRequest::default(), tx)
        .await
        .is_err());
    sup.set_trace_recorder(None);
    let mut text = String::new();
    for _ in 0..200 {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let trace = Trace::parse(&text, "trace.jsonl").unwrap();
    assert_eq!(trace.tasks.len(), 2, "{text}");
    assert_eq!(trace.tasks[0].pool, "coder");
    assert!((trace.tasks[0].duration - 0.5).abs() < 0.01, "{text}");
    assert!((trace.tasks[1].duration - 1.25).abs() < 0.01, "{text}");
    trace.check_pools(&config, "pools.toml").unwrap();
}
