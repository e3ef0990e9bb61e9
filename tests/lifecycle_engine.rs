//! The daemon's life on the real engine: a clean stop removes everything it made, and a start
//! after a `kill -9` removes what the dead run left (running, created or exited).

mod common;
mod support;

use std::time::Duration;

use common::*;
use serde_json::json;
use support::*;

const TWO_POOLS: &str = r#"
[server]
shutdown_grace = "10s"

[defaults]
image = "warmpool/agent:latest"
min = 2
warm = 2
max = 3

[pools.web]
network = "isolated"

[pools.batch]
"#;

/// Twenty containers: their removals at shutdown all start at once, more than the daemon's
/// bound on removals in flight (16), so the bound and the engine's confirmation are both in
/// play.
const TWENTY: &str = r#"
[server]
shutdown_grace = "10s"

[defaults]
image = "warmpool/agent:latest"
min = 10
warm = 10
max = 11

[pools.web]
network = "isolated"

[pools.batch]
"#;

#[tokio::test]
async fn sigterm_lets_a_running_task_finish_then_leaves_nothing() {
    let d = Daemon::start(TWENTY).await;
    d.wait_ready(Duration::from_secs(120)).await;
    assert_eq!(containers(&d.instance, None).len(), 20);
    assert_eq!(networks(&d.instance).len(), 1);
    let daemon_id = inspect(&containers(&d.instance, None)[0])["Config"]["Labels"]
        ["warmpool.daemon"]
        .as_str()
        .unwrap()
        .to_string();

    let running = {
        let client = warmpool::client::Client::new(&d.addr, None);
        tokio::spawn(async move {
            run_task(&client, "web", json!({"shell": "sleep 4; echo finished"})).await
        })
    };
    wait_pool(&d, "web", "the task to run", Duration::from_secs(60), |v| {
        v["busy"] == 1
    })
    .await;
    // The signal must reach the daemon while the task runs, or the test proves nothing.
    assert!(!running.is_finished(), "the task ended before SIGTERM");
    // `stop` blocks until the process is gone; the request above must go on meanwhile.
    let (d, exit) = tokio::task::spawn_blocking(move || {
        let mut d = d;
        let exit = d.stop();
        (d, exit)
    })
    .await
    .unwrap();
    assert!(exit.success(), "daemon exit {exit}:\n{}", d.log());
    let (status, v) = running.await.unwrap();
    assert_eq!(status, 200, "the running task was cut short: {v}");
    assert_eq!(v["stdout"], "finished\n");
    assert!(
        containers(&d.instance, None).is_empty(),
        "containers left after shutdown: {:?}",
        containers(&d.instance, None)
    );
    assert!(
        networks(&d.instance).is_empty(),
        "networks left after shutdown: {:?}\n{}",
        networks(&d.instance),
        d.log()
    );
    // Nor anything else this daemon made, whatever its other labels.
    let by_daemon = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=warmpool.daemon={daemon_id}"),
    ]);
    assert!(by_daemon.trim().is_empty(), "{by_daemon}");
    // The last word is the engine's: said only because it lists none of them.
    let log = d.log();
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains("stopped"))
        .unwrap_or_default();
    assert!(
        last.contains("every container removed (engine confirms none left)"),
        "final line: {last:?}\n{log}"
    );
}

/// A container carrying this instance's labels, as a crashed run could leave one: `run`
/// gives an exited container, otherwise it stays in `created`.
fn leftover(instance: &str, run: bool) -> String {
    let labels = [
        "warmpool.managed=true".to_string(),
        "warmpool.pool=batch".to_string(),
        "warmpool.daemon=000000000000".to_string(),
        format!("warmpool.instance={instance}"),
    ];
    let mut args = vec![if run { "run" } else { "create" }.to_string()];
    if run {
        args.push("-d".into());
    }
    for l in &labels {
        args.push("--label".into());
        args.push(l.clone());
    }
    args.extend(["--network", "none", IMAGE, "true"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args).trim().to_string()
}

fn state(id: &str) -> String {
    docker(&["inspect", "--format", "{{.State.Status}}", id])
        .trim()
        .to_string()
}

#[tokio::test]
async fn a_start_after_kill_9_adopts_idle_containers_and_removes_the_rest() {
    let mut d = Daemon::start(TWO_POOLS).await;
    d.wait_ready(Duration::from_secs(30)).await;
    let old = containers(&d.instance, None);
    assert_eq!(old.len(), 4);
    // One busy at the time of the crash, too.
    let _busy = {
        let client = warmpool::client::Client::new(&d.addr, None);
        tokio::spawn(async move {
            let body = json!({"cmd": ["sleep", "30"]});
            let _ = client
                .request(
                    "POST",
                    "/v1/pools/batch/tasks",
                    Some(body.to_string().into_bytes()),
                )
                .await;
        })
    };
    wait_pool(
        &d,
        "batch",
        "a busy container",
        Duration::from_secs(10),
        |v| v["busy"] == 1,
    )
    .await;
    d.kill9();
    // The crash left them all behind, plus a container stuck in `created` and an exited one.
    for id in &old {
        assert!(exists(id), "{id} vanished without a daemon");
    }
    let created = leftover(&d.instance, false);
    let exited = leftover(&d.instance, true);
    assert_eq!(state(&created), "created");
    wait_for("the leftover to exit", Duration::from_secs(10), || {
        (state(&exited) == "exited").then_some(())
    })
    .await;

    d.restart().await;
    d.wait_ready(Duration::from_secs(30)).await;
    // Stuck and exited ones are removed; the idle ones of the same spec are re-attached and
    // adopted; the one that was busy at the crash is removed (its task is nobody's now).
    for id in [&created, &exited] {
        wait_for(
            &format!("{id} to be removed"),
            Duration::from_secs(10),
            || (!exists(id)).then_some(()),
        )
        .await;
    }
    wait_for(
        "the busy one to be removed",
        Duration::from_secs(10),
        || (old.iter().filter(|id| exists(id)).count() == old.len() - 1).then_some(()),
    )
    .await;
    wait_for("4 containers again", Duration::from_secs(30), || {
        let now = containers(&d.instance, None);
        (now.len() == 4 && now.iter().all(|id| is_running(id))).then_some(())
    })
    .await;
    let new = containers(&d.instance, None);
    let adopted = new.iter().filter(|id| old.contains(id)).count();
    assert_eq!(
        adopted, 3,
        "the three idle containers are adopted, not recreated"
    );
    assert_eq!(d.log().matches("adopted an idle container").count(), 3);
    assert_eq!(
        networks(&d.instance).len(),
        1,
        "the bridge is reused, not doubled"
    );
    let (status, v) = d.task("web", json!({"cmd": ["echo", "again"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "again\n");
    assert!(
        metric(
            &d,
            "warmpool_containers_removed_total",
            &[("pool", "batch"), ("reason", "orphan")]
        )
        .await
            == 3.0,
        "batch's busy container and the two leftovers are counted as orphans (its idle one was adopted)"
    );
}

#[tokio::test]
async fn sigterm_while_the_pools_warm_still_stops_cleanly() {
    // The daemon answers /healthz before its pools exist; a SIGTERM then (round 0), or while
    // containers are being created (round 1), must still be an orderly stop.
    for round in 0..2 {
        let mut d = Daemon::start(
            r#"
[defaults]
image = "warmpool/agent:latest"
min = 3
warm = 3
max = 3
network = "isolated"

[pools.first]

[pools.second]
"#,
        )
        .await;
        if round == 1 {
            // Later: the first container is there, the others are being created.
            let instance = d.instance.clone();
            wait_for("a first container", Duration::from_secs(20), || {
                (!containers(&instance, None).is_empty()).then_some(())
            })
            .await;
        }
        let (d, exit) = tokio::task::spawn_blocking(move || {
            let exit = d.stop();
            (d, exit)
        })
        .await
        .unwrap();
        assert_eq!(
            exit.code(),
            Some(0),
            "round {round}: the daemon died of the signal ({exit}) instead of stopping:\n{}",
            d.log()
        );
        assert!(
            containers(&d.instance, None).is_empty(),
            "round {round}: containers left: {:?}",
            containers(&d.instance, None)
        );
        assert!(
            networks(&d.instance).is_empty(),
            "round {round}: networks left: {:?}\n{}",
            networks(&d.instance),
            d.log()
        );
    }
}

#[tokio::test]
async fn a_start_that_fails_leaves_nothing_behind() {
    ensure_image();
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("tfail{}", std::process::id());
    let config = dir.path().join("pools.toml");
    // Pools start in name order: `early` is up (network, containers warming) when `late`
    // finds its network missing and the start fails.
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[defaults]
image = "warmpool/agent:latest"
min = 3
warm = 3
max = 3

[pools.early]
network = "isolated"

[pools.late]
network = "warmpool-no-such-network-{instance}"
"#
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let instance = instance.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_warmpool"))
                .args(["serve", "--config"])
                .arg(&config)
                .env("WARMPOOL_INSTANCE", &instance)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let left = containers(&instance, None);
    let nets = networks(&instance);
    for id in &left {
        let _ = docker_try(&["rm", "-f", id]);
    }
    for id in &nets {
        let _ = docker_try(&["network", "rm", id]);
    }
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("no-such-network"),
        "the error names the network:\n{log}"
    );
    assert!(
        left.is_empty(),
        "containers left by a failed start: {left:?}\n{log}"
    );
    assert!(
        nets.is_empty(),
        "networks left by a failed start: {nets:?}\n{log}"
    );
}

/// `server.shutdown_grace` from pools.toml bounds how long SIGTERM waits for a running task:
/// at least the grace, and far less than the built-in 30 s.
#[tokio::test]
async fn shutdown_grace_from_pools_toml_bounds_the_stop() {
    let d = Daemon::start(
        r#"
[server]
shutdown_grace = "2s"

[pools.g]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(60)).await;
    let running = {
        let client = warmpool::client::Client::new(&d.addr, None);
        tokio::spawn(async move { run_task(&client, "g", json!({"cmd": ["sleep", "50"]})).await })
    };
    wait_pool(&d, "g", "the task to run", Duration::from_secs(60), |v| {
        v["busy"] == 1
    })
    .await;
    assert!(
        !running.is_finished(),
        "the task must still run when SIGTERM is sent"
    );
    let t0 = std::time::Instant::now();
    let (d, exit) = tokio::task::spawn_blocking(move || {
        let mut d = d;
        let exit = d.stop();
        (d, exit)
    })
    .await
    .unwrap();
    let took = t0.elapsed();
    assert!(exit.success(), "daemon exit {exit}:\n{}", d.log());
    assert!(
        took >= Duration::from_secs(2),
        "stopped after {took:?}, before shutdown_grace (2s) was up:\n{}",
        d.log()
    );
    // 10x the grace, and below the built-in 30 s a daemon ignoring the key would wait.
    assert!(
        took < Duration::from_secs(20),
        "stopped after {took:?}: shutdown_grace = \"2s\" was not applied:\n{}",
        d.log()
    );
    let _ = running.await;
    assert!(containers(&d.instance, None).is_empty());
}
