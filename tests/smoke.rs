//! The shortest path through the real engine: a task on a warm pool, and a clean stop.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_task_runs_and_shutdown_removes_everything() {
    let mut d = Daemon::start(
        r#"
[pools.smoke]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 2
network = "isolated"
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(30)).await;
    let (status, v) = d.task("smoke", json!({"shell": "echo hello; id -u"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "hello\n1000\n");
    assert_eq!(v["exit_code"], 0);
    assert!(!containers(&d.instance, None).is_empty());
    assert_eq!(networks(&d.instance).len(), 1);
    assert!(d.stop().success());
    assert!(
        containers(&d.instance, None).is_empty(),
        "containers left after shutdown"
    );
    assert!(
        networks(&d.instance).is_empty(),
        "network left after shutdown"
    );
}
