//! The metrics contract (DESIGN section 3), checked on a rendered page.

use super::*;

/// Every family name of DESIGN section 3.
const CONTRACT: &[&str] = &[
    "warmpool_containers",
    "warmpool_pool_target_containers",
    "warmpool_pool_forecast_containers",
    "warmpool_pool_min_containers",
    "warmpool_pool_max_containers",
    "warmpool_pool_utilization_ratio",
    "warmpool_queue_length",
    "warmpool_tasks_total",
    "warmpool_task_duration_seconds",
    "warmpool_queue_wait_seconds",
    "warmpool_acquisitions_total",
    "warmpool_acquire_seconds",
    "warmpool_container_start_seconds",
    "warmpool_containers_created_total",
    "warmpool_containers_removed_total",
    "warmpool_health_checks_total",
    "warmpool_scale_events_total",
    "warmpool_sessions",
    "warmpool_pool_prewarm_containers",
    "warmpool_pool_failed",
    "warmpool_workspaces",
    "warmpool_workspace_bytes",
    "warmpool_workspace_resume_seconds",
    "warmpool_config_reloads_total",
    "warmpool_engine_up",
];

/// Lines of the rendered page that are samples (not HELP/TYPE comments).
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

/// The value of the one sample whose line starts with `series` followed by a space.
fn value(text: &str, series: &str) -> Option<f64> {
    samples(text).into_iter().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|v| v.trim().parse().expect("numeric sample"))
    })
}

#[test]
fn every_contract_family_is_rendered_after_init_pool() {
    let m = Metrics::new();
    m.init_pool("coder");
    let text = m.render();
    for name in CONTRACT {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from:\n{text}"
        );
    }
    // and nothing else with our prefix: the contract is exactly these names
    for line in text.lines().filter(|l| l.starts_with("# TYPE warmpool_")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(CONTRACT.contains(&name), "{name} is not in the contract");
    }
}

#[test]
fn families_have_the_contract_types() {
    let m = Metrics::new();
    m.init_pool("coder");
    let text = m.render();
    let ty = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))
            .map(str::to_owned)
    };
    for name in CONTRACT {
        let expected = if name.ends_with("_total") {
            "counter"
        } else if name.ends_with("_seconds") {
            "histogram"
        } else {
            "gauge"
        };
        assert_eq!(ty(name).as_deref(), Some(expected), "{name}");
    }
}

#[test]
fn init_pool_creates_every_label_value_at_zero() {
    let m = Metrics::new();
    m.init_pool("coder");
    let text = m.render();
    let at_zero = |series: String| {
        assert_eq!(value(&text, &series), Some(0.0), "{series} in:\n{text}");
    };
    for s in ContainerState::ALL {
        at_zero(format!(
            "warmpool_containers{{pool=\"coder\",state=\"{s}\"}}"
        ));
    }
    for o in Outcome::ALL {
        at_zero(format!(
            "warmpool_tasks_total{{outcome=\"{o}\",pool=\"coder\"}}"
        ));
    }
    for r in Acquisition::ALL {
        at_zero(format!(
            "warmpool_acquisitions_total{{pool=\"coder\",result=\"{r}\"}}"
        ));
    }
    for r in RemoveReason::ALL {
        at_zero(format!(
            "warmpool_containers_removed_total{{pool=\"coder\",reason=\"{r}\"}}"
        ));
    }
    for r in HealthResult::ALL {
        at_zero(format!(
            "warmpool_health_checks_total{{pool=\"coder\",result=\"{r}\"}}"
        ));
    }
    for d in ScaleDirection::ALL {
        at_zero(format!(
            "warmpool_scale_events_total{{direction=\"{d}\",pool=\"coder\"}}"
        ));
    }
    for r in ReloadResult::ALL {
        at_zero(format!("warmpool_config_reloads_total{{result=\"{r}\"}}"));
    }
    at_zero("warmpool_task_duration_seconds_count{pool=\"coder\"}".into());
    at_zero("warmpool_container_start_seconds_count{pool=\"coder\"}".into());
    at_zero("warmpool_engine_up".into());
}

#[test]
fn label_values_match_the_contract() {
    let all = |v: Vec<&'static str>| v.join("/");
    assert_eq!(
        all(ContainerState::ALL.iter().map(|x| x.as_str()).collect()),
        "starting/idle/busy/unhealthy/retiring"
    );
    assert_eq!(
        all(Outcome::ALL.iter().map(|x| x.as_str()).collect()),
        "ok/nonzero_exit/timeout/error/rejected"
    );
    assert_eq!(
        all(Acquisition::ALL.iter().map(|x| x.as_str()).collect()),
        "warm/cold"
    );
    assert_eq!(
        all(RemoveReason::ALL.iter().map(|x| x.as_str()).collect()),
        "age/uses/unhealthy/idle/scale_down/session_end/shutdown/reload/orphan"
    );
    assert_eq!(
        all(HealthResult::ALL.iter().map(|x| x.as_str()).collect()),
        "healthy/unhealthy"
    );
    assert_eq!(
        all(ScaleDirection::ALL.iter().map(|x| x.as_str()).collect()),
        "up/down"
    );
    assert_eq!(
        all(ReloadResult::ALL.iter().map(|x| x.as_str()).collect()),
        "ok/error"
    );
}

#[test]
fn helpers_count_and_set() {
    let m = Metrics::new();
    m.init_pool("coder");
    m.task_done("coder", Outcome::Ok, 0.002);
    m.task_done("coder", Outcome::Ok, 0.004);
    m.task_done("coder", Outcome::Timeout, 30.0);
    m.task_rejected("coder");
    m.acquired("coder", Acquisition::Warm, 0.0003);
    m.acquired("coder", Acquisition::Cold, 0.3);
    m.acquired("coder", Acquisition::Warm, 0.0004);
    m.queue_waited("coder", 0.01);
    m.created("coder");
    m.started("coder", 0.29);
    m.removed("coder", RemoveReason::ScaleDown);
    m.removed("coder", RemoveReason::ScaleDown);
    m.health_checked("coder", HealthResult::Unhealthy);
    m.scaled("coder", ScaleDirection::Up);
    m.reloaded(ReloadResult::Error);
    m.set_containers("coder", ContainerState::Busy, 3);
    m.set_bounds("coder", 2, 8);
    m.set_target("coder", 4);
    m.set_utilization("coder", 0.75);
    m.set_queue_length("coder", 5);
    m.set_sessions("coder", 2);
    m.set_engine_up(true);

    let t = m.render();
    let v = |s: &str| value(&t, s).unwrap_or_else(|| panic!("{s} missing in:\n{t}"));
    assert_eq!(v(r#"warmpool_tasks_total{outcome="ok",pool="coder"}"#), 2.0);
    assert_eq!(
        v(r#"warmpool_tasks_total{outcome="timeout",pool="coder"}"#),
        1.0
    );
    assert_eq!(
        v(r#"warmpool_tasks_total{outcome="rejected",pool="coder"}"#),
        1.0
    );
    assert_eq!(
        v(r#"warmpool_tasks_total{outcome="error",pool="coder"}"#),
        0.0
    );
    // the rejected task is counted but does not enter the duration histogram
    assert_eq!(
        v(r#"warmpool_task_duration_seconds_count{pool="coder"}"#),
        3.0
    );
    assert_eq!(
        v(r#"warmpool_task_duration_seconds_bucket{pool="coder",le="0.005"}"#),
        2.0
    );
    assert_eq!(
        v(r#"warmpool_acquisitions_total{pool="coder",result="warm"}"#),
        2.0
    );
    assert_eq!(
        v(r#"warmpool_acquisitions_total{pool="coder",result="cold"}"#),
        1.0
    );
    assert_eq!(v(r#"warmpool_acquire_seconds_count{pool="coder"}"#), 3.0);
    assert_eq!(
        v(r#"warmpool_acquire_seconds_bucket{pool="coder",le="0.0005"}"#),
        2.0
    );
    assert_eq!(v(r#"warmpool_queue_wait_seconds_count{pool="coder"}"#), 1.0);
    assert_eq!(v(r#"warmpool_containers_created_total{pool="coder"}"#), 1.0);
    assert_eq!(
        v(r#"warmpool_container_start_seconds_count{pool="coder"}"#),
        1.0
    );
    assert_eq!(
        v(r#"warmpool_containers_removed_total{pool="coder",reason="scale_down"}"#),
        2.0
    );
    assert_eq!(
        v(r#"warmpool_health_checks_total{pool="coder",result="unhealthy"}"#),
        1.0
    );
    assert_eq!(
        v(r#"warmpool_scale_events_total{direction="up",pool="coder"}"#),
        1.0
    );
    assert_eq!(v(r#"warmpool_config_reloads_total{result="error"}"#), 1.0);
    assert_eq!(v(r#"warmpool_containers{pool="coder",state="busy"}"#), 3.0);
    assert_eq!(v(r#"warmpool_pool_min_containers{pool="coder"}"#), 2.0);
    assert_eq!(v(r#"warmpool_pool_max_containers{pool="coder"}"#), 8.0);
    assert_eq!(v(r#"warmpool_pool_target_containers{pool="coder"}"#), 4.0);
    assert_eq!(v(r#"warmpool_pool_utilization_ratio{pool="coder"}"#), 0.75);
    assert_eq!(v(r#"warmpool_queue_length{pool="coder"}"#), 5.0);
    assert_eq!(v(r#"warmpool_sessions{pool="coder"}"#), 2.0);
    assert_eq!(v("warmpool_engine_up"), 1.0);
}

#[test]
fn forget_pool_removes_only_that_pool() {
    let m = Metrics::new();
    m.init_pool("coder");
    m.init_pool("tester");
    m.task_done("coder", Outcome::Ok, 0.1);
    m.set_containers("coder", ContainerState::Idle, 2);
    m.forget_pool("coder");
    let text = m.render();
    assert!(
        !text.contains("pool=\"coder\""),
        "coder series left:\n{text}"
    );
    assert!(text.contains("pool=\"tester\""));
    // families without a pool label survive
    assert!(text.contains("warmpool_config_reloads_total{result=\"ok\"} 0"));
    // and forgetting twice, or an unknown pool, is harmless
    m.forget_pool("coder");
    m.forget_pool("nope");
}

#[test]
fn instances_are_independent() {
    let a = Metrics::new();
    let b = Metrics::new();
    a.init_pool("coder");
    a.created("coder");
    assert!(!b.render().contains("pool=\"coder\""));
}

#[cfg(target_os = "linux")]
#[test]
fn process_collector_is_registered() {
    let text = Metrics::new().render();
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
}

/// `promtool check metrics` lints names, types and HELP texts the way Prometheus
/// maintainers expect; fails with the install hint where promtool is not installed.
#[test]
fn rendered_text_passes_promtool() {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let m = Metrics::new();
    m.init_pool("coder");
    m.task_done("coder", Outcome::Ok, 0.01);
    m.acquired("coder", Acquisition::Warm, 0.0002);
    let text = m.render();

    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    // A missing tool fails the test: a skipped check proves nothing.
    let mut child = child.unwrap_or_else(|e| {
        panic!(
            "promtool not runnable ({e}): run scripts/install-test-deps.sh \
             (or apt-get install prometheus)"
        )
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics:\n{report}");
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );
}
