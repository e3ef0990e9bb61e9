//! The contract table: every pools.toml key, every API error code, every metric and every
//! label value that docs/configuration.md, docs/api.md and docs/monitoring.md name, each
//! mapped to the test that fails when it is ignored or wrong.
//!
//! The tests below keep the table honest both ways:
//! - a name the docs (or the code's key tables, error codes and rendered metrics) have and
//!   the table lacks fails, with the line to add;
//! - a table entry the docs no longer name fails (drop it, or document it);
//! - a table entry whose test does not exist (`fn NAME` in the file it names) fails.
//!
//! A test is written `path/of/file.rs::function_name`. When you add a key, a code or a
//! metric: document it, write the test that fails when it is ignored, add the row here.

use std::collections::BTreeSet;
use std::path::Path;

/// `section.key`: sections `server`, `docker`, `pool` (`[defaults]` and `[pools.NAME]`),
/// `security` (`[defaults.security]` and `[pools.NAME.security]`).
const KEYS: &[(&str, &str)] = &[
    ("server.listen", "tests/smoke.rs::a_task_runs_and_shutdown_removes_everything"),
    ("server.unix_socket", "tests/operations.rs::the_api_answers_on_a_unix_socket_of_mode_0660"),
    ("server.token_file", "tests/operations.rs::the_token_guards_v1_and_a_reload_switches_it"),
    ("server.max_request_body", "tests/tasks.rs::refusals_have_their_status_code_and_retry_after"),
    ("server.max_sessions", "tests/sessions.rs::the_least_recently_used_session_is_ended_to_make_room"),
    ("server.trace_file", "src/daemon.rs::trace_file_records_tasks_and_rotates_at_trace_file_max_size"),
    ("server.trace_file_max_size", "src/daemon.rs::trace_file_records_tasks_and_rotates_at_trace_file_max_size"),
    ("server.shutdown_grace", "tests/lifecycle_engine.rs::shutdown_grace_from_pools_toml_bounds_the_stop"),
    ("docker.host", "tests/lifecycle.rs::a_daemon_started_before_the_engine_waits_for_it_then_serves"),
    ("pool.image", "tests/containers.rs::inspect_shows_every_configured_setting"),
    ("pool.min", "src/lifecycle_tests.rs::idle_containers_above_min_are_removed_after_idle_timeout"),
    ("pool.max", "src/lifecycle_tests.rs::a_burst_grows_the_pool_to_max_at_once_and_quiet_shrinks_it_to_min"),
    ("pool.warm", "src/lifecycle_tests.rs::warm_containers_are_created_at_start_and_serve_tasks"),
    ("pool.health_check_interval", "src/lifecycle_tests.rs::health_checks_run_every_interval"),
    ("pool.health_check_timeout", "src/api/contract_tests.rs::health_check_timeout_is_how_long_a_probe_may_take"),
    ("pool.max_age", "src/lifecycle_tests.rs::max_age_renews_containers_surge_first"),
    ("pool.max_uses", "src/lifecycle_tests.rs::max_uses_replaces_a_container_after_that_many_tasks"),
    ("pool.idle_timeout", "src/lifecycle_tests.rs::idle_containers_above_min_are_removed_after_idle_timeout"),
    ("pool.scale_up_threshold", "src/api/contract_tests.rs::scale_up_threshold_decides_when_a_busy_pool_grows"),
    ("pool.scale_down_threshold", "src/api/contract_tests.rs::scale_down_threshold_decides_when_a_quiet_pool_shrinks"),
    ("pool.scale_interval", "src/api/contract_tests.rs::scale_interval_sets_the_stabilization_window"),
    ("pool.spare", "src/api/contract_tests.rs::spare_keeps_idle_containers_beyond_the_busy_ones"),
    ("pool.predictive", "src/simulate/tests.rs::the_burst_trace_is_warm_with_the_forecast_and_not_without"),
    ("pool.forecast_window", "src/api/contract_tests.rs::forecast_window_is_how_long_the_forecast_remembers_a_peak"),
    ("pool.schedule", "src/api/contract_tests.rs::a_schedule_floors_the_pool_while_it_is_active"),
    ("pool.task_timeout", "src/api/contract_tests.rs::task_timeout_is_the_default_and_the_upper_bound_of_a_timeout"),
    ("pool.acquire_timeout", "src/lifecycle_tests.rs::a_queued_task_gives_up_at_acquire_timeout_and_leaves_the_queue"),
    ("pool.on_exhausted", "src/lifecycle_tests.rs::on_exhausted_fail_refuses_at_once_at_max"),
    ("pool.max_queue", "src/lifecycle_tests.rs::a_full_queue_refuses_at_once"),
    ("pool.max_output", "tests/shim.rs::output_past_max_output_is_drained_flagged_and_does_not_grow_the_daemon"),
    ("pool.pids_limit", "tests/containers.rs::inspect_shows_every_configured_setting"),
    ("pool.memory", "tests/containers.rs::inspect_shows_every_configured_setting"),
    ("pool.cpus", "tests/containers.rs::inspect_shows_every_configured_setting"),
    ("pool.workdir", "tests/containers.rs::inspect_shows_every_configured_setting"),
    ("pool.exec", "tests/tasks.rs::docker_exec_pools_run_tasks"),
    ("pool.description", "src/config/tests.rs::a_blank_or_overlong_description_is_refused_with_the_fix"),
    ("pool.exec_transport", "tests/transport.rs::the_task_suite_over_attach"),
    ("pool.max_concurrent_tasks", "tests/workspaces.rs::two_tasks_of_a_session_overlap_with_max_concurrent_tasks_2"),
    ("pool.mounts", "tests/workspaces.rs::a_bind_mount_is_read_only_unless_asked_and_shows_in_docker_inspect"),
    ("pool.session_max_cpus", "tests/workspaces.rs::a_session_size_is_applied_live_to_a_warm_container"),
    ("pool.session_max_memory", "tests/workspaces.rs::a_session_size_is_applied_live_to_a_warm_container"),
    ("pool.session_max_pids", "tests/workspaces.rs::a_session_size_is_applied_live_to_a_warm_container"),
    ("pool.session_workspace", "tests/workspaces.rs::a_persistent_workspace_outlives_idle_kills_and_restarts_until_deleted"),
    ("pool.workspace_root", "tests/workspaces.rs::a_persistent_workspace_outlives_idle_kills_and_restarts_until_deleted"),
    ("pool.workspace_max_size", "tests/workspaces.rs::a_workspace_over_workspace_max_size_gets_no_new_task"),
    ("pool.workspace_ttl", "tests/workspaces.rs::a_workspace_unused_past_workspace_ttl_is_removed"),
    ("pool.health_cmd", "src/api/contract_tests.rs::a_failing_health_cmd_replaces_the_container_and_a_passing_one_keeps_it"),
    ("pool.network", "tests/containers.rs::isolated_pools_cannot_reach_each_other_and_none_has_only_loopback"),
    ("pool.env", "tests/containers.rs::inspect_shows_every_configured_setting"),
    ("pool.session_idle_timeout", "src/api/contract_tests.rs::session_idle_timeout_ends_a_session_that_asks_for_none"),
    ("pool.reset_workdir", "src/lifecycle_tests.rs::the_next_pool_task_finds_the_workdir_wiped_unless_reset_workdir_is_off"),
    ("pool.session_end_command", "tests/sessions.rs::session_end_command_runs_in_the_container_before_it_is_removed"),
    ("security.read_only_rootfs", "tests/containers.rs::changed_security_settings_reach_the_engine"),
    ("security.cap_drop", "tests/containers.rs::changed_security_settings_reach_the_engine"),
    ("security.no_new_privileges", "tests/containers.rs::changed_security_settings_reach_the_engine"),
    ("security.user", "tests/containers.rs::inspect_shows_every_configured_setting"),
    ("security.runtime", "tests/containers.rs::changed_security_settings_reach_the_engine"),
];

/// Every `code` of docs/api.md's error table; the test asserts the code, not only the status.
const CODES: &[(&str, &str)] = &[
    ("invalid_json", "tests/tasks.rs::refusals_have_their_status_code_and_retry_after"),
    ("invalid_request", "src/api/mod.rs::a_bad_path_or_query_answers_400_in_the_error_envelope"),
    ("bad_body", "src/api/contract_tests.rs::a_body_that_cannot_be_read_answers_bad_body_and_a_server_fault_internal"),
    ("invalid_path", "tests/sessions.rs::file_endpoints_answer_clear_errors"),
    ("wrong_kind", "tests/sessions.rs::file_endpoints_answer_clear_errors"),
    ("bad_archive", "tests/sessions.rs::file_endpoints_answer_clear_errors"),
    ("files_unsupported", "tests/files.rs::a_docker_exec_session_answers_files_unsupported"),
    ("invalid_config", "tests/operations.rs::a_bad_reload_keeps_everything_running_and_lists_every_problem"),
    ("unauthorized", "src/api/mod.rs::the_token_guards_v1_and_a_wrong_method_stays_405"),
    ("forbidden_host", "src/mcp/mod.rs::without_a_token_a_foreign_host_answers_forbidden_host"),
    ("not_writable", "tests/sessions.rs::file_endpoints_answer_clear_errors"),
    ("not_readable", "tests/files.rs::unreadable_full_and_nul_paths_are_told_apart"),
    ("unknown_pool", "tests/tasks.rs::refusals_have_their_status_code_and_retry_after"),
    ("unknown_session", "src/api/contract_tests.rs::session_ids_live_created_again_on_another_pool_and_generated"),
    ("no_such_path", "tests/sessions.rs::file_endpoints_answer_clear_errors"),
    ("not_found", "src/api/mod.rs::an_unknown_path_answers_404_not_found_in_the_error_envelope"),
    ("method_not_allowed", "src/api/mod.rs::a_wrong_method_answers_405_in_the_error_envelope_with_allow"),
    ("session_pool_mismatch", "src/api/contract_tests.rs::session_ids_live_created_again_on_another_pool_and_generated"),
    ("body_too_large", "tests/tasks.rs::refusals_have_their_status_code_and_retry_after"),
    ("queue_full", "tests/tasks.rs::refusals_have_their_status_code_and_retry_after"),
    ("container_failed", "tests/tasks.rs::a_docker_exec_container_killed_under_its_task_is_not_handed_out_again"),
    ("no_container", "tests/tasks.rs::refusals_have_their_status_code_and_retry_after"),
    ("pool_exhausted", "tests/tasks.rs::on_exhausted_fail_refuses_at_once_and_cold_starts_beyond_max"),
    ("engine_unavailable", "src/api/contract_tests.rs::an_engine_outage_answers_engine_unavailable_and_readyz_not_ready"),
    ("pool_failed", "src/api/contract_tests.rs::a_pool_the_engine_refuses_answers_pool_failed_and_readyz_names_it"),
    ("shutting_down", "src/api/contract_tests.rs::after_shutdown_tasks_answer_shutting_down_and_containers_went_for_shutdown"),
    ("starting", "tests/lifecycle.rs::a_daemon_started_before_the_engine_waits_for_it_then_serves"),
    ("mcp_unavailable", "src/mcp/mod.rs::without_a_tcp_listen_address_mcp_answers_mcp_unavailable"),
    ("not_ready", "src/api/contract_tests.rs::an_engine_outage_answers_engine_unavailable_and_readyz_not_ready"),
    ("no_space", "tests/files.rs::unreadable_full_and_nul_paths_are_told_apart"),
    ("workspace_full", "tests/workspaces.rs::a_workspace_over_workspace_max_size_gets_no_new_task"),
    ("internal", "src/api/contract_tests.rs::a_body_that_cannot_be_read_answers_bad_body_and_a_server_fault_internal"),
    ("file_transfer_failed", "src/api/contract_tests.rs::a_file_command_ending_unknown_answers_file_transfer_failed"),
];

/// Every metric, and every value of its labels other than `pool` as
/// `metric{label="value"}`; the test asserts the value after a known sequence of events.
const METRICS: &[(&str, &str)] = &[
    ("warmpool_containers", "src/api/contract_tests.rs::gauges_show_states_target_and_utilization_after_known_events"),
    ("warmpool_containers{state=\"starting\"}", "src/api/contract_tests.rs::gauges_show_states_target_and_utilization_after_known_events"),
    ("warmpool_containers{state=\"idle\"}", "src/api/contract_tests.rs::gauges_show_states_target_and_utilization_after_known_events"),
    ("warmpool_containers{state=\"busy\"}", "src/api/contract_tests.rs::gauges_show_states_target_and_utilization_after_known_events"),
    ("warmpool_containers{state=\"unhealthy\"}", "src/api/contract_tests.rs::task_timeout_is_the_default_and_the_upper_bound_of_a_timeout"),
    ("warmpool_containers{state=\"retiring\"}", "src/api/contract_tests.rs::a_container_past_max_uses_shows_as_retiring_until_removed"),
    ("warmpool_pool_target_containers", "src/api/contract_tests.rs::scale_up_threshold_decides_when_a_busy_pool_grows"),
    ("warmpool_pool_forecast_containers", "src/api/contract_tests.rs::forecast_window_is_how_long_the_forecast_remembers_a_peak"),
    ("warmpool_pool_min_containers", "src/api/contract_tests.rs::gauges_show_states_target_and_utilization_after_known_events"),
    ("warmpool_pool_max_containers", "src/api/contract_tests.rs::gauges_show_states_target_and_utilization_after_known_events"),
    ("warmpool_pool_utilization_ratio", "src/api/contract_tests.rs::gauges_show_states_target_and_utilization_after_known_events"),
    ("warmpool_queue_length", "src/api/contract_tests.rs::gauges_show_states_target_and_utilization_after_known_events"),
    ("warmpool_tasks_total", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_tasks_total{outcome=\"ok\"}", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_tasks_total{outcome=\"nonzero_exit\"}", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_tasks_total{outcome=\"timeout\"}", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_tasks_total{outcome=\"error\"}", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_tasks_total{outcome=\"rejected\"}", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_task_duration_seconds", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_queue_wait_seconds", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_acquisitions_total", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_acquisitions_total{result=\"warm\"}", "src/api/contract_tests.rs::cold_start_is_false_for_a_task_that_waited_for_a_busy_container"),
    ("warmpool_acquisitions_total{result=\"cold\"}", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_acquire_seconds", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_container_start_seconds", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_containers_created_total", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_containers_removed_total", "src/api/contract_tests.rs::task_outcomes_and_histograms_count_what_happened"),
    ("warmpool_containers_removed_total{reason=\"age\"}", "src/lifecycle_tests.rs::max_age_renews_containers_surge_first"),
    ("warmpool_containers_removed_total{reason=\"uses\"}", "src/lifecycle_tests.rs::max_uses_replaces_a_container_after_that_many_tasks"),
    ("warmpool_containers_removed_total{reason=\"unhealthy\"}", "src/api/contract_tests.rs::task_timeout_is_the_default_and_the_upper_bound_of_a_timeout"),
    ("warmpool_containers_removed_total{reason=\"idle\"}", "src/lifecycle_tests.rs::idle_containers_above_min_are_removed_after_idle_timeout"),
    ("warmpool_containers_removed_total{reason=\"scale_down\"}", "src/api/contract_tests.rs::scale_down_threshold_decides_when_a_quiet_pool_shrinks"),
    ("warmpool_containers_removed_total{reason=\"session_end\"}", "src/api/contract_tests.rs::session_ids_live_created_again_on_another_pool_and_generated"),
    ("warmpool_containers_removed_total{reason=\"shutdown\"}", "src/api/contract_tests.rs::after_shutdown_tasks_answer_shutting_down_and_containers_went_for_shutdown"),
    ("warmpool_containers_removed_total{reason=\"reload\"}", "src/api/contract_tests.rs::a_spec_change_by_reload_replaces_the_containers_counted_as_reload"),
    ("warmpool_containers_removed_total{reason=\"orphan\"}", "src/lifecycle_tests.rs::the_reaper_removes_containers_no_pool_knows"),
    ("warmpool_pool_prewarm_containers", "tests/workspaces.rs::prewarm_raises_the_floor_for_a_while_then_falls_back"),
    ("warmpool_pool_failed", "src/api/contract_tests.rs::a_pool_the_engine_refuses_answers_pool_failed_and_readyz_names_it"),
    ("warmpool_workspaces", "tests/workspaces.rs::a_persistent_workspace_outlives_idle_kills_and_restarts_until_deleted"),
    ("warmpool_workspace_bytes", "tests/workspaces.rs::a_persistent_workspace_outlives_idle_kills_and_restarts_until_deleted"),
    ("warmpool_workspace_resume_seconds", "tests/workspaces.rs::a_resume_binds_the_workspace_into_a_warm_container_in_one_mount"),
    ("warmpool_health_checks_total", "src/api/contract_tests.rs::a_failing_health_cmd_replaces_the_container_and_a_passing_one_keeps_it"),
    ("warmpool_health_checks_total{result=\"healthy\"}", "src/api/contract_tests.rs::a_failing_health_cmd_replaces_the_container_and_a_passing_one_keeps_it"),
    ("warmpool_health_checks_total{result=\"unhealthy\"}", "src/api/contract_tests.rs::a_failing_health_cmd_replaces_the_container_and_a_passing_one_keeps_it"),
    ("warmpool_scale_events_total", "src/api/contract_tests.rs::scale_up_threshold_decides_when_a_busy_pool_grows"),
    ("warmpool_scale_events_total{direction=\"up\"}", "src/api/contract_tests.rs::scale_up_threshold_decides_when_a_busy_pool_grows"),
    ("warmpool_scale_events_total{direction=\"down\"}", "src/api/contract_tests.rs::scale_down_threshold_decides_when_a_quiet_pool_shrinks"),
    ("warmpool_sessions", "src/api/contract_tests.rs::session_ids_live_created_again_on_another_pool_and_generated"),
    ("warmpool_config_reloads_total", "tests/operations.rs::a_bad_reload_keeps_everything_running_and_lists_every_problem"),
    ("warmpool_config_reloads_total{result=\"ok\"}", "tests/operations.rs::a_bad_reload_keeps_everything_running_and_lists_every_problem"),
    ("warmpool_config_reloads_total{result=\"error\"}", "tests/operations.rs::a_bad_reload_keeps_everything_running_and_lists_every_problem"),
    ("warmpool_engine_up", "src/api/contract_tests.rs::an_engine_outage_answers_engine_unavailable_and_readyz_not_ready"),
    ("process_*", "src/metrics/tests.rs::process_collector_is_registered"),
];

const TABLE: &str = "src/contract_tests.rs";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The backticked words of `text`, in order.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The cells of a Markdown table row (`| a | b |`), or `None` for any other line.
fn cells(line: &str) -> Option<Vec<&str>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(str::trim).collect())
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// docs/configuration.md: the first backticked cell of each row of the key tables, under the
/// `## [server]`, `## [docker]`, `## [defaults] and [pools.NAME]` and `### [...security]`
/// headings.
fn documented_keys() -> BTreeSet<String> {
    let mut section = None;
    let mut keys = BTreeSet::new();
    for line in read("docs/configuration.md").lines() {
        if line.starts_with('#') {
            section = if line.contains("security]") {
                Some("security")
            } else if line.contains("[pools.NAME]") {
                Some("pool")
            } else if line.contains("[server]") {
                Some("server")
            } else if line.contains("[docker]") {
                Some("docker")
            } else {
                None
            };
            continue;
        }
        let (Some(section), Some(cells)) = (section, cells(line)) else {
            continue;
        };
        if let Some(key) = backticked(cells[0]).first().filter(|k| is_name(k)) {
            keys.insert(format!("{section}.{key}"));
        }
    }
    assert!(
        keys.len() > 30,
        "docs/configuration.md parsed to only {keys:?}"
    );
    keys
}

/// docs/api.md: the backticked snake_case words of the `codes` cell of every row of the
/// error table (rows whose first cell is a status).
fn documented_codes() -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    for line in read("docs/api.md").lines() {
        let Some(cells) = cells(line) else { continue };
        if cells.len() < 2 || cells[0].len() != 3 || !cells[0].chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        codes.extend(
            backticked(cells[1])
                .into_iter()
                .filter(|c| is_name(c))
                .map(String::from),
        );
    }
    assert!(codes.len() > 20, "docs/api.md parsed to only {codes:?}");
    codes
}

/// docs/monitoring.md: each row of the metric table whose first cell is a backticked
/// metric: the metric, and for a metric with a label besides `pool`, each backticked
/// snake_case word of its meaning, as `metric{label="value"}`, except a pools.toml key
/// (`max_age`, `idle_timeout`) unless a colon follows it (`` `warm`: a running container``).
fn documented_metrics() -> BTreeSet<String> {
    let pool_keys: BTreeSet<String> = documented_keys()
        .into_iter()
        .filter_map(|k| k.split_once('.').map(|(_, k)| k.to_string()))
        .collect();
    let mut metrics = BTreeSet::new();
    for line in read("docs/monitoring.md").lines() {
        let Some(cells) = cells(line) else { continue };
        if cells.len() < 4 {
            continue;
        }
        let Some(name) = backticked(cells[0]).first().copied() else {
            continue;
        };
        if !(name.starts_with("warmpool_") || name == "process_*") {
            continue;
        }
        metrics.insert(name.to_string());
        let labels: Vec<&str> = backticked(cells[2])
            .into_iter()
            .filter(|l| *l != "pool")
            .collect();
        if let [label] = labels[..] {
            let meaning = cells[3];
            for value in backticked(meaning) {
                let defined = meaning.contains(&format!("`{value}`:"));
                if is_name(value) && (defined || !pool_keys.contains(value)) {
                    metrics.insert(format!("{name}{{{label}=\"{value}\"}}"));
                }
            }
        } else {
            assert!(
                labels.is_empty(),
                "{name}: one label besides pool at most, got {labels:?}"
            );
        }
    }
    assert!(
        metrics.len() > 30,
        "docs/monitoring.md parsed to only {metrics:?}"
    );
    metrics
}

/// Fails listing every name of `found` (from `source`) that `table` lacks, with the row to add.
fn assert_covered(
    kind: &str,
    table_name: &str,
    table: &[(&str, &str)],
    found: &BTreeSet<String>,
    source: &str,
) {
    let have: BTreeSet<&str> = table.iter().map(|(n, _)| *n).collect();
    let missing: Vec<String> = found
        .iter()
        .filter(|n| !have.contains(n.as_str()))
        .map(|n| {
            format!(
                "    ({:?}, \"tests/FILE.rs::the_test_that_fails_when_it_is_ignored_or_wrong\"),",
                n
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{source} names {kind} the contract table lacks. Write a test that fails when it is \
         ignored or wrong, then add to {table_name} in {TABLE}:\n{}",
        missing.join("\n")
    );
}

fn assert_documented(kind: &str, table: &[(&str, &str)], documented: &BTreeSet<String>, doc: &str) {
    let stale: Vec<&str> = table
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !documented.contains(*n))
        .collect();
    assert!(
        stale.is_empty(),
        "{TABLE} maps {kind} that {doc} does not name (document them in {doc}, or drop the rows): {stale:?}"
    );
}

#[test]
fn every_documented_key_is_in_the_contract_table() {
    let documented = documented_keys();
    assert_covered(
        "pools.toml keys",
        "KEYS",
        KEYS,
        &documented,
        "docs/configuration.md",
    );
    let in_code: BTreeSet<String> = crate::config::all_keys().into_iter().collect();
    assert_covered(
        "pools.toml keys",
        "KEYS",
        KEYS,
        &in_code,
        "the key tables in src/config/",
    );
    assert_documented("keys", KEYS, &documented, "docs/configuration.md");
}

#[test]
fn every_documented_error_code_is_in_the_contract_table() {
    let documented = documented_codes();
    assert_covered("error codes", "CODES", CODES, &documented, "docs/api.md");
    assert_covered("error codes", "CODES", CODES, &codes_in_code(), "src/api/");
    assert_documented("error codes", CODES, &documented, "docs/api.md");
}

#[test]
fn every_documented_metric_and_label_value_is_in_the_contract_table() {
    let documented = documented_metrics();
    assert_covered(
        "metrics or label values",
        "METRICS",
        METRICS,
        &documented,
        "docs/monitoring.md",
    );
    assert_covered(
        "metrics or label values",
        "METRICS",
        METRICS,
        &metrics_in_code(),
        "Metrics::render",
    );
    assert_documented(
        "metrics or label values",
        METRICS,
        &documented,
        "docs/monitoring.md",
    );
}

#[test]
fn every_test_the_contract_table_names_exists() {
    let mut missing = Vec::new();
    for (name, test) in KEYS.iter().chain(CODES).chain(METRICS) {
        let (file, func) = test
            .split_once("::")
            .unwrap_or_else(|| panic!("{name}: {test:?} is not path/file.rs::function"));
        let src = read(file);
        let found = [format!("fn {func}("), format!("fn {func}<")]
            .iter()
            .any(|needle| src.contains(needle.as_str()));
        if !found {
            missing.push(format!("{name} -> {test}"));
        }
    }
    assert!(
        missing.is_empty(),
        "{TABLE} names tests that do not exist (no `fn NAME` in the file):\n{}",
        missing.join("\n")
    );
}

/// `NoSuchPath` as `no_such_path`, as serde's `rename_all = "snake_case"` spells a variant.
fn snake_case(variant: &str) -> String {
    let mut out = String::new();
    for (i, c) in variant.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The codes the API can answer: the `ErrorCode::Variant` (as its snake_case code) or string
/// after `StatusCode::X,` in an `ApiError::new`, and any `"code": "..."` written inline.
fn codes_in_code() -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("src/api")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("test"))
        {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        for (i, _) in src.match_indices("StatusCode::") {
            let rest = &src[i..];
            let Some(comma) = rest.find(',') else {
                continue;
            };
            let after = rest[comma + 1..].trim_start();
            if rest[..comma].contains(['(', ')', '\n', ' ']) {
                continue;
            }
            if let Some(lit) = after.strip_prefix('"') {
                let code = &lit[..lit.find('"').unwrap()];
                if is_name(code) {
                    codes.insert(code.to_string());
                }
            } else if let Some(variant) = after.strip_prefix("ErrorCode::") {
                // `ErrorCode::NoSuchPath` answers `no_such_path` (serde's snake_case).
                let end = variant
                    .find(|c: char| !c.is_ascii_alphanumeric())
                    .unwrap_or(variant.len());
                let code = snake_case(&variant[..end]);
                if is_name(&code) {
                    codes.insert(code);
                }
            }
        }
        for (i, _) in src.match_indices("\"code\": \"") {
            let lit = &src[i + 9..];
            let code = &lit[..lit.find('"').unwrap()];
            if is_name(code) {
                codes.insert(code.to_string());
            }
        }
    }
    assert!(codes.len() > 20, "src/api/ scanned to only {codes:?}");
    codes
}

/// Every family the daemon renders once a pool exists, and every value of a label besides
/// `pool` (and a histogram's `le`).
fn metrics_in_code() -> BTreeSet<String> {
    let m = crate::metrics::Metrics::new();
    m.init_pool("p");
    let text = m.render();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap();
            out.insert(if name.starts_with("process_") {
                "process_*".to_string()
            } else {
                name.to_string()
            });
            continue;
        }
        if line.starts_with('#') || !line.starts_with("warmpool_") {
            continue;
        }
        let Some((name, labels)) = line.split_once('{') else {
            continue;
        };
        let labels = labels.split('}').next().unwrap();
        for pair in labels.split(',') {
            let (label, value) = pair.split_once('=').unwrap();
            if label != "pool" && label != "le" {
                out.insert(format!("{name}{{{label}={value}}}"));
            }
        }
    }
    out
}
