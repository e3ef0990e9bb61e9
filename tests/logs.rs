//! The daemon's log never carries an env value or the API token (issue 5), whatever the
//! task's outcome and whichever exec mode runs it; and a task's log lines carry its span
//! (pool, task id, container).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const TASK_SECRET: &str = "hunter2-value";
const POOL_SECRET: &str = "pool-secret-4f9a";
const TOKEN: &str = "token-secret-77c1";

/// One shim pool and one docker-exec pool, both with a secret in their env.
fn config(dir: &std::path::Path) -> String {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    format!(
        r#"
[server]
token_file = "{}"

[defaults]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
env = {{ POOL_SECRET = "{POOL_SECRET}" }}

[pools.shim]

[pools.dexec]
exec = "docker-exec"
"#,
        token_file.display()
    )
}

/// Runs tasks of every outcome with a secret in their env on both pools, a request with a
/// wrong token, and checks the whole log for the secrets.
async fn secrets_stay_out_of_the_log(rust_log: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_with(&config(dir.path()), &[("RUST_LOG", rust_log)]).await;
    d.wait_ready(Duration::from_secs(60)).await;
    let client = warmpool::client::Client::new(&d.addr, Some(TOKEN.to_string()));
    let env = json!({"SECRET_X": TASK_SECRET});
    for pool in ["shim", "dexec"] {
        let (s, v) = run_task(
            &client,
            pool,
            // The values arrive (checked by length: the secrets must not appear in the argv
            // either, which the engine client logs at debug level too).
            json!({"cmd": ["sh", "-c", "test ${#SECRET_X} = 13 && test ${#POOL_SECRET} = 16"], "env": env}),
        )
        .await;
        assert_eq!(
            (s, &v["exit_code"]),
            (200, &json!(0)),
            "{pool}: the env arrives: {v}"
        );
        let (s, v) = run_task(
            &client,
            pool,
            json!({"shell": "echo \"$SECRET_X\" >&2; exit 4", "env": env}),
        )
        .await;
        assert_eq!((s, &v["exit_code"]), (200, &json!(4)), "{pool}: {v}");
        let (s, v) = run_task(
            &client,
            pool,
            json!({"cmd": ["/no/such/command"], "env": env}),
        )
        .await;
        // A command that cannot start is an error (not a nonzero exit) in both exec modes.
        assert_eq!(s, 200, "{pool}: {v}");
        assert!(
            v["error"].is_string(),
            "{pool}: a missing command is an error: {v}"
        );
        let (s, v) = run_task(
            &client,
            pool,
            json!({"cmd": ["sleep", "30"], "env": env, "timeout": "1s"}),
        )
        .await;
        assert_eq!((s, &v["timed_out"]), (200, &json!(true)), "{pool}: {v}");
    }
    let wrong = warmpool::client::Client::new(&d.addr, Some(format!("{TOKEN}-wrong")));
    let (s, v) = run_task(&wrong, "shim", json!({"cmd": ["true"], "env": env})).await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (401, &json!("unauthorized")),
        "{v}"
    );

    // Shut down too: removal and shutdown paths log as well.
    assert!(d.stop().success());
    let log = d.log();
    for secret in [TASK_SECRET, POOL_SECRET, TOKEN] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            lines.is_empty(),
            "RUST_LOG={rust_log}: {secret:?} is in {} log line(s), e.g.:\n{}",
            lines.len(),
            lines
                .iter()
                .take(3)
                .map(|l| l.chars().take(400).collect::<String>())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    d
}

#[tokio::test]
async fn no_env_value_or_token_in_the_log_at_debug() {
    let d = secrets_stay_out_of_the_log("warmpool=debug").await;
    let log = d.log();
    assert!(
        !log.contains('\u{1b}'),
        "the log is written to a file: no terminal colour codes"
    );
    // Every task's lines carry its span: pool, task id and container.
    let done: Vec<&str> = log.lines().filter(|l| l.contains("task done")).collect();
    assert_eq!(
        done.len(),
        8,
        "a \"task done\" line per task that ran (4 per pool):\n{log}"
    );
    for line in done {
        assert!(
            line.contains("task{pool=")
                && line.contains("task_id=t-")
                && line.contains("container="),
            "no task span on: {line}"
        );
    }
    // ... including lines logged deeper down, like retiring the timed-out task's container.
    assert!(
        log.lines()
            .any(|l| l.contains("retiring container") && l.contains("task{pool=")),
        "the timed-out task's container is retired inside the task span:\n{log}"
    );
}

/// At trace level every dependency logs too, the engine client with its request and response
/// bodies, which carry container and exec env.
#[tokio::test]
async fn no_env_value_or_token_in_the_log_at_trace() {
    let d = secrets_stay_out_of_the_log("trace").await;
    assert!(d.log().contains("task done"), "the log was written");
}
