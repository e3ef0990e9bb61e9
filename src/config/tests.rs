use super::pool::LAYER_KEYS;
use super::server::DOCKER_KEYS;
use super::suggest::{did_you_mean, edit_distance};
use super::values::{GIB, MIB};
use super::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The example of DESIGN.md section 1, comments included.
const DESIGN_EXAMPLE: &str = r#"[server]
listen = "127.0.0.1:7070"        # HTTP API and /metrics; loopback by default
# unix_socket = "/run/warmpool/api.sock"
# token_file = "/etc/warmpool/token"   # when set, /v1/* needs "Authorization: Bearer <token>"
max_request_body = "16MiB"
max_sessions = 1000              # live sessions at once; the least recently used is ended for a new one
shutdown_grace = "30s"           # how long running tasks may finish after SIGTERM

[docker]
# host = "unix:///var/run/docker.sock"   # default: DOCKER_HOST, then the local socket

[defaults]
min = 1                          # never fewer containers than this (0 = created on first task)
max = 10                         # never more
warm = 2                         # containers created at start (min <= warm <= max)
health_check_interval = "30s"
max_age = "1h"                   # replaced after this age (with jitter), never while busy
max_uses = 100                   # replaced after this many tasks (1 = a fresh container per task)
idle_timeout = "10m"             # idle containers above `min` are removed after this
scale_up_threshold = 0.8         # utilization = busy / live containers, as a fraction
scale_down_threshold = 0.2
scale_interval = "5s"            # how often the autoscaler looks
task_timeout = "5m"              # default per-task limit; a task may ask for less
acquire_timeout = "30s"          # how long a task may queue for a free container
on_exhausted = "wait"            # "wait" (queue up to acquire_timeout) | "fail" (503 at once) | "cold" (start one beyond max for this task)
max_queue = 1000                 # queued tasks beyond this are refused at once (429)
max_output = "4MiB"              # per stream; the rest is drained and dropped, flagged truncated
pids_limit = 256                 # per container; memory and cpus are set per pool (no default limit)
workdir = "/work"
exec = "shim"                    # "shim" (in-container agent, ~1 ms a task) | "docker-exec"
exec_transport = "direct"        # "direct" (a unix socket per container; local engines only, else attach) | "attach"
# health_cmd = ["true"]          # extra in-container probe; the shim's ping is always done
session_idle_timeout = "5m"      # a session with no task for this long is ended
reset_workdir = true             # wipe the workdir and /tmp after every pool task (a session's tasks share theirs)
# session_end_command = ["sh", "-c", "git -C /work commit -am wip && git -C /work push"]  # run before a session's container is recycled (state saving)

[defaults.security]
read_only_rootfs = true          # with tmpfs on /tmp and on the workdir
cap_drop = ["ALL"]
no_new_privileges = true
user = "1000:1000"
# runtime = "runsc"              # any OCI runtime the engine knows (gVisor, kata)

[pools.coder]
image = "warmpool/agent:latest"
min = 2
max = 8
memory = "512MiB"
cpus = 1.0
network = "isolated"             # "none" (default) | "isolated": a bridge of its own per pool | an existing network's name
env = { CODER_MODE = "true" }

[pools.tester]
image = "warmpool/agent:latest"
memory = "256MiB"
cpus = 0.5
env = { TEST_FRAMEWORKS = "pytest" }

[pools.reviewer]
image = "warmpool/agent:latest"
min = 0                          # lazy: no container until the first task
warm = 0
memory = "128MiB"
cpus = 0.25
"#;

fn problems(text: &str) -> Vec<Problem> {
    match Config::parse(text, "pools.toml") {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected problems, got {other:#?}"),
    }
}

/// Asserts exactly one problem, at `line:col`, whose message contains every fragment.
#[track_caller]
fn one(text: &str, line: usize, col: usize, fragments: &[&str]) {
    let p = problems(text);
    assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
    assert_eq!((p[0].line, p[0].col), (line, col), "{}", p[0]);
    for f in fragments {
        assert!(p[0].message.contains(f), "{:?} lacks {f:?}", p[0].message);
    }
}

fn ok(text: &str) -> Config {
    Config::parse(text, "pools.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// One valid pool after `extra` lines of the pool table.
fn pool(extra: &str) -> String {
    format!("[pools.coder]\nimage = \"img\"\n{extra}")
}

#[test]
fn design_example_resolves() {
    let c = ok(DESIGN_EXAMPLE);
    assert_eq!(c.server, ServerConfig::default());
    assert_eq!(c.server.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
    assert_eq!(c.docker.host, None);
    assert_eq!(
        c.pools.keys().collect::<Vec<_>>(),
        ["coder", "reviewer", "tester"]
    );

    let coder = &c.pools["coder"];
    assert_eq!((coder.min, coder.max, coder.warm), (2, 8, 2));
    assert_eq!(coder.memory, Some(536_870_912));
    assert_eq!(coder.cpus, Some(1.0));
    assert_eq!(coder.network, NetworkMode::Isolated);
    assert_eq!(
        coder.env,
        BTreeMap::from([("CODER_MODE".to_string(), "true".to_string())])
    );

    let mut expected = PoolConfig::new("coder", "warmpool/agent:latest");
    expected.min = 2;
    expected.max = 8;
    expected.memory = Some(512 * MIB);
    expected.cpus = Some(1.0);
    expected.network = NetworkMode::Isolated;
    expected.env = coder.env.clone();
    assert_eq!(coder, &expected);

    let tester = &c.pools["tester"];
    assert_eq!((tester.min, tester.max, tester.warm), (1, 10, 2));
    assert_eq!(tester.memory, Some(256 * MIB));
    assert_eq!(tester.cpus, Some(0.5));
    assert_eq!(tester.network, NetworkMode::None);
    assert_eq!(tester.env["TEST_FRAMEWORKS"], "pytest");

    let reviewer = &c.pools["reviewer"];
    assert_eq!((reviewer.min, reviewer.max, reviewer.warm), (0, 10, 0));
    assert_eq!(reviewer.memory, Some(128 * MIB));
    assert_eq!(reviewer.cpus, Some(0.25));
    assert_eq!(reviewer.task_timeout, Duration::from_secs(300));
    assert_eq!(reviewer.security, SecurityConfig::default());
    assert_eq!(reviewer.max_output, 4 * MIB);
    assert_eq!(reviewer.exec, ExecMode::Shim);
    assert!(reviewer.env.is_empty());
}

#[test]
fn minimal_file_gets_builtin_defaults() {
    let c = ok("[pools.a]\nimage = \"img\"\n");
    assert_eq!(c.pools["a"], PoolConfig::new("a", "img"));
    assert_eq!(c.server, ServerConfig::default());
    assert_eq!(c.docker, DockerConfig::default());
}

#[test]
fn every_key_can_be_set_in_defaults_and_pools() {
    let body = r#"image = "img:1"
description = "for the tests"
min = 0
max = 3
warm = 1
health_check_interval = "10s"
health_check_timeout = "2s"
max_age = "2h"
max_uses = 1
idle_timeout = "1m"
scale_up_threshold = 1
scale_down_threshold = 0.5
spare = 2
predictive = false
forecast_window = "1m"
schedule = [{ cron = "0 9 * * 1-5", min = 3, for = "9h" }]
scale_interval = "1s"
task_timeout = "1m"
acquire_timeout = "5s"
on_exhausted = "cold"
max_queue = 0
max_output = "1KiB"
pids_limit = 64
workdir = "/home/agent"
exec = "docker-exec"
exec_transport = "attach"
health_cmd = ["true"]
session_idle_timeout = "1h"
reset_workdir = false
session_end_command = ["sh", "-c", "sync"]
memory = "1GiB"
cpus = 2
network = "agents-net"
env = { A = "1" }
mounts = [{ type = "tmpfs", target = "/scratch", size = "1MiB" }]
max_concurrent_tasks = 4
session_workspace = "persistent"
workspace_root = "/srv/ws"
workspace_ttl = "1h"
workspace_max_size = "1GiB"
session_max_memory = "2GiB"
session_max_cpus = 2
session_max_pids = 512
security = { read_only_rootfs = false, cap_drop = ["NET_RAW"], no_new_privileges = false, user = "agent:agent", runtime = "runsc" }
"#;
    let expected = PoolConfig {
        name: "p".to_string(),
        description: Some("for the tests".to_string()),
        image: "img:1".to_string(),
        min: 0,
        max: 3,
        warm: 1,
        health_check_interval: Duration::from_secs(10),
        health_check_timeout: Duration::from_secs(2),
        max_age: Duration::from_secs(7200),
        max_uses: 1,
        idle_timeout: Duration::from_secs(60),
        scale_up_threshold: 1.0,
        scale_down_threshold: 0.5,
        spare: 2,
        predictive: false,
        forecast_window: Duration::from_secs(60),
        schedule: vec![crate::scaling::ScheduleFloor::parse(
            "0 9 * * 1-5",
            3,
            Duration::from_secs(9 * 3600),
        )
        .unwrap()],
        scale_interval: Duration::from_secs(1),
        task_timeout: Duration::from_secs(60),
        acquire_timeout: Duration::from_secs(5),
        on_exhausted: OnExhausted::Cold,
        max_queue: 0,
        max_output: 1024,
        pids_limit: 64,
        workdir: "/home/agent".to_string(),
        exec: ExecMode::DockerExec,
        exec_transport: ExecTransport::Attach,
        health_cmd: Some(vec!["true".to_string()]),
        session_idle_timeout: Duration::from_secs(3600),
        reset_workdir: false,
        session_end_command: Some(vec!["sh".into(), "-c".into(), "sync".into()]),
        memory: Some(GIB),
        cpus: Some(2.0),
        network: NetworkMode::Named("agents-net".to_string()),
        env: BTreeMap::from([("A".to_string(), "1".to_string())]),
        max_concurrent_tasks: 4,
        session_workspace: crate::config::WorkspaceMode::Persistent,
        workspace_root: "/srv/ws".to_string(),
        workspace_ttl: Duration::from_secs(3600),
        workspace_max_size: Some(GIB),

        session_max_memory: Some(2 * GIB),
        session_max_cpus: Some(2.0),
        session_max_pids: Some(512),
        mounts: vec![crate::config::Mount {
            kind: crate::config::MountKind::Tmpfs,
            source: None,
            target: "/scratch".to_string(),
            read_only: false,
            size: Some(1024 * 1024),
        }],
        security: SecurityConfig {
            read_only_rootfs: false,
            cap_drop: vec!["NET_RAW".to_string()],
            no_new_privileges: false,
            user: "agent:agent".to_string(),
            runtime: Some("runsc".to_string()),
        },
    };
    // Every layer key appears in the body, so no key is read but left unresolved.
    for key in LAYER_KEYS {
        assert!(
            body.contains(&format!("\n{key} =")) || body.starts_with(key),
            "{key}"
        );
    }
    let in_pool = ok(&format!("[pools.p]\n{body}"));
    assert_eq!(in_pool.pools["p"], expected);
    let in_defaults = ok(&format!("[defaults]\n{body}[pools.p]\n"));
    assert_eq!(in_defaults.pools["p"], expected);
}

#[test]
fn pool_overrides_defaults_env_and_security_merge() {
    let c = ok(r#"[defaults]
image = "base"
memory = "64MiB"
env = { A = "defaults", B = "defaults" }
[defaults.security]
user = "agent"
runtime = "runsc"
[pools.a]
env = { B = "pool", C = "pool" }
[pools.a.security]
cap_drop = ["NET_RAW"]
[pools.b]
image = "other"
memory = "128MiB"
"#);
    let a = &c.pools["a"];
    assert_eq!(a.image, "base");
    assert_eq!(a.memory, Some(64 * MIB));
    assert_eq!(
        a.env,
        BTreeMap::from([
            ("A".to_string(), "defaults".to_string()),
            ("B".to_string(), "pool".to_string()),
            ("C".to_string(), "pool".to_string()),
        ])
    );
    assert_eq!(a.security.user, "agent");
    assert_eq!(a.security.runtime.as_deref(), Some("runsc"));
    assert_eq!(a.security.cap_drop, ["NET_RAW"]);
    assert!(a.security.read_only_rootfs);
    let b = &c.pools["b"];
    assert_eq!((b.image.as_str(), b.memory), ("other", Some(128 * MIB)));
    assert_eq!(b.security.cap_drop, ["ALL"]);
}

#[test]
fn other_toml_spellings_of_tables_work() {
    let c = ok(r#"pools.a.image = "img"
pools.a.security.user = "7"
[defaults.env]
D = "d"
"#);
    assert_eq!(c.pools["a"].security.user, "7");
    assert_eq!(c.pools["a"].env["D"], "d");
    let c = ok(r#"[pools.b]
image = "img"
security.user = "8:8"
[pools.b.env]
K = "v"
"#);
    assert_eq!(c.pools["b"].security.user, "8:8");
    assert_eq!(c.pools["b"].env["K"], "v");
    let c = ok(r#"[pools]
c = { image = "img", env.X = "y" }
"#);
    assert_eq!(c.pools["c"].env["X"], "y");
}

#[test]
fn unset_warm_follows_min_and_max() {
    let c = ok(&pool("min = 5\n"));
    assert_eq!(c.pools["coder"].warm, 5);
    let c = ok(&pool("max = 1\n"));
    assert_eq!((c.pools["coder"].min, c.pools["coder"].warm), (1, 1));
}

#[test]
fn listen_can_be_turned_off_for_a_unix_socket() {
    let c = ok(&format!(
        "[server]\nlisten = \"\"\nunix_socket = \"/run/w.sock\"\n{}",
        pool("")
    ));
    assert_eq!(c.server.listen, None);
    assert_eq!(c.server.unix_socket, Some(PathBuf::from("/run/w.sock")));
    let c = ok(&format!("[server]\nlisten = \"[::]:80\"\n{}", pool("")));
    assert_eq!(c.server.listen, Some("[::]:80".parse().unwrap()));
}

// ---- syntax and structure

#[test]
fn syntax_error_has_position() {
    one(
        "[pools.a]\nimage = \"img\"\nmin = \n",
        3,
        7,
        &["invalid TOML"],
    );
    one("[pools.a]\nimage = \"img\n", 2, 13, &["invalid TOML"]);
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    one(&pool("min = 1\nmin = 2\n"), 4, 1, &["duplicate key"]);
}

#[test]
fn every_unknown_key_is_reported_with_suggestions() {
    let p = problems(
        r#"colour = 1
[server]
listne = "127.0.0.1:1"
[docker]
hots = "unix:///x"
[defaults]
healthcheck_interval = "1s"
[defaults.security]
usr = "1"
[pools.coder]
image = "img"
mem = "1GiB"
bogus = 1
[pools.coder.security]
runtim = "runsc"
"#,
    );
    let got: Vec<(usize, usize, &str)> = p
        .iter()
        .map(|p| (p.line, p.col, p.message.as_str()))
        .collect();
    assert_eq!(
            got,
            [
                (1, 1, "unknown key colour: remove it; the top level takes server, docker, defaults, pools"),
                (3, 1, "unknown key server.listne: did you mean listen?"),
                (5, 1, "unknown key docker.hots: did you mean host?"),
                (7, 1, "unknown key defaults.healthcheck_interval: did you mean health_check_interval?"),
                (9, 1, "unknown key defaults.security.usr: did you mean user?"),
                (12, 1, "unknown key pools.coder.mem: did you mean memory?"),
                (13, 1, "unknown key pools.coder.bogus: remove it or fix its spelling"),
                (15, 1, "unknown key pools.coder.security.runtim: did you mean runtime?"),
            ]
        );
}

#[test]
fn misplaced_key_says_where_it_belongs() {
    one(
        &pool("user = \"1000\"\n"),
        3,
        1,
        &["unknown key pools.coder.user: user belongs in [pools.coder.security]"],
    );
    one(
        &format!("[server]\nmemory = \"1GiB\"\n{}", pool("")),
        2,
        1,
        &["memory belongs in [defaults] or [pools.NAME]"],
    );
    one(
        &format!("{}[pools.coder.security]\nimage = \"x\"\n", pool("")),
        4,
        1,
        &["image belongs in [pools.coder]"],
    );
    one(
        "[coder]\nimage = \"img\"\n[pools.x]\nimage = \"img\"\n",
        1,
        2,
        &["unknown key coder: pools are declared as [pools.coder]"],
    );
}

#[test]
fn sections_must_be_tables() {
    one(
        &format!("server = 5\n{}", pool("")),
        1,
        10,
        &["server must be a table such as [server], not an integer (5)"],
    );
    one(
        &format!("{}[[pools.b]]\nimage = \"img\"\n", pool("")),
        3,
        1,
        &["pools.b must be a table", "not an array of tables"],
    );
    one(
        &pool("security = \"strict\"\n"),
        3,
        12,
        &["pools.coder.security must be a table"],
    );
}

#[test]
fn at_least_one_pool() {
    one("[server]\nmax_sessions = 5\n", 1, 1, &["no pools defined"]);
    one("[server]\n[pools]\n", 2, 1, &["no pools defined"]);
}

#[test]
fn pool_name_rules() {
    one(
        "[pools.Coder]\nimage = \"img\"\n",
        1,
        8,
        &[
            "pool name \"Coder\" must match [a-z0-9][a-z0-9_-]*",
            "metric labels (try \"coder\")",
        ],
    );
    one(
        "[pools._x]\nimage = \"img\"\n",
        1,
        8,
        &["pool name \"_x\" must match"],
    );
    let long = "a".repeat(33);
    one(
        &format!("[pools.{long}]\nimage = \"img\"\n"),
        1,
        8,
        &["is 33 characters long, more than 32", "container names"],
    );
    ok(&format!("[pools.{}]\nimage = \"img\"\n", "a".repeat(32)));
    ok("[pools.0-a_b]\nimage = \"img\"\n");
}

#[test]
fn image_is_required_and_non_empty() {
    one(
        "[pools.coder]\nmin = 1\n",
        1,
        1,
        &["pools.coder.image is not set: set image in [pools.coder] or in [defaults]"],
    );
    one(
        "[pools.coder]\nimage = \"\"\n",
        2,
        9,
        &["pools.coder.image (\"\") must not be empty"],
    );
    one(
        "[defaults]\nimage = \"a b\"\n[pools.coder]\n",
        2,
        9,
        &["defaults.image (\"a b\") must not contain whitespace"],
    );
}

// ---- types and single values

#[test]
fn wrong_types_are_named() {
    one(
        &pool("min = \"5\"\n"),
        3,
        7,
        &["pools.coder.min (\"5\") must be a whole number, not a string"],
    );
    one(
        &pool("reset_workdir = \"yes\"\n"),
        3,
        17,
        &["pools.coder.reset_workdir (\"yes\") must be true or false, not a string"],
    );
    one(
        &pool("max_age = 3600\n"),
        3,
        11,
        &["pools.coder.max_age (3600) must be a duration string such as \"30s\""],
    );
    one(
        &pool("[pools.coder.min]\n"),
        3,
        1,
        &["pools.coder.min must be a whole number, not a table"],
    );
}

#[test]
fn bad_duration() {
    one(
        &pool("max_age = \"30 parsecs\"\n"),
        3,
        11,
        &[
            "pools.coder.max_age (\"30 parsecs\") is not a duration (unknown unit \"parsecs\")",
            "\"30s\"",
        ],
    );
}

#[test]
fn zero_durations_where_they_make_no_sense() {
    for (key, hint) in [
        ("health_check_interval", "probe without pause"),
        ("max_age", "replaced as soon as it started"),
        ("idle_timeout", "removed at once"),
        ("scale_interval", "without pause"),
        ("task_timeout", "time out at once"),
        ("acquire_timeout", "on_exhausted = \"fail\""),
        ("session_idle_timeout", "end as soon as it started"),
    ] {
        let text = pool(&format!("{key} = \"0s\"\n"));
        let col = key.len() + 4;
        one(
            &text,
            3,
            col,
            &[
                &format!("pools.coder.{key} (\"0s\") must be longer than zero"),
                hint,
            ],
        );
    }
    let c = ok(&format!("[server]\nshutdown_grace = \"0s\"\n{}", pool("")));
    assert_eq!(c.server.shutdown_grace, Duration::ZERO);
}

#[test]
fn bad_enums() {
    one(
        &pool("on_exhausted = \"later\"\n"),
        3,
        16,
        &["pools.coder.on_exhausted (\"later\") must be one of \"wait\", \"fail\", \"cold\""],
    );
    one(
        &pool("exec = \"ssh\"\n"),
        3,
        8,
        &["pools.coder.exec (\"ssh\") must be one of \"shim\", \"docker-exec\""],
    );
}

#[test]
fn bad_sizes() {
    one(
        &pool("memory = \"512M\"\n"),
        3,
        10,
        &["pools.coder.memory (\"512M\") is not a valid size: unit \"M\" is ambiguous"],
    );
    one(
        &pool("max_output = \"lots\"\n"),
        3,
        14,
        &[
            "pools.coder.max_output (\"lots\") is not a valid size",
            "\"512MiB\"",
        ],
    );
    one(
        &pool("max_output = -1\n"),
        3,
        14,
        &["pools.coder.max_output (-1) must not be negative"],
    );
}

#[test]
fn memory_at_least_docker_minimum() {
    one(
        &pool("memory = \"4MiB\"\n"),
        3,
        10,
        &["pools.coder.memory (\"4MiB\") is too small: it must be at least 6MiB"],
    );
    assert_eq!(
        ok(&pool("memory = \"6MiB\"\n")).pools["coder"].memory,
        Some(6 * MIB)
    );
}

#[test]
fn max_at_least_one() {
    one(
        &pool("max = 0\nmin = 0\nwarm = 0\n"),
        3,
        7,
        &["pools.coder.max (0) must be at least 1"],
    );
}

#[test]
fn counts_not_negative() {
    one(
        &pool("min = -1\n"),
        3,
        7,
        &["pools.coder.min (-1) must not be negative"],
    );
    one(
        &pool("max_queue = -1\n"),
        3,
        13,
        &["pools.coder.max_queue (-1) must not be negative"],
    );
    assert_eq!(ok(&pool("max_queue = 0\n")).pools["coder"].max_queue, 0);
}

#[test]
fn max_uses_at_least_one() {
    one(
        &pool("max_uses = 0\n"),
        3,
        12,
        &[
            "pools.coder.max_uses (0) must be at least 1",
            "fresh container per task",
        ],
    );
}

#[test]
fn thresholds_are_fractions() {
    for (value, col) in [("0", 22), ("1.5", 22), ("-0.1", 22), ("nan", 22)] {
        one(
            &pool(&format!("scale_up_threshold = {value}\n")),
            3,
            col,
            &[&format!(
                "pools.coder.scale_up_threshold ({value}) must be above 0 and at most 1"
            )],
        );
    }
    one(
        &pool("scale_down_threshold = \"low\"\n"),
        3,
        24,
        &["must be a fraction such as 0.8, not a string"],
    );
}

#[test]
fn scale_down_below_scale_up() {
    one(
            &pool("scale_up_threshold = 0.5\nscale_down_threshold = 0.5\n"),
            4,
            24,
            &["pools.coder.scale_down_threshold (0.5) must be below pools.coder.scale_up_threshold (0.5)"],
        );
    one(
            &pool("scale_up_threshold = 0.1\n"),
            3,
            22,
            &["scale_down_threshold (0.2, the built-in default) must be below pools.coder.scale_up_threshold (0.1)"],
        );
}

#[test]
fn min_not_above_max() {
    one(
        &pool("min = 5\nmax = 3\n"),
        3,
        7,
        &["pools.coder.min (5) is larger than pools.coder.max (3): raise max or lower min"],
    );
    // The problem points at the setting closest to the pool.
    one(
        "[defaults]\nmin = 5\n[pools.coder]\nimage = \"img\"\nmax = 3\n",
        5,
        7,
        &["defaults.min (5) is larger than pools.coder.max (3)"],
    );
    one(
        &pool("min = 12\nwarm = 12\n"),
        3,
        7,
        &["pools.coder.min (12) is larger than max (10, the built-in default)"],
    );
}

#[test]
fn warm_between_min_and_max() {
    one(
        &pool("min = 3\nwarm = 1\n"),
        4,
        8,
        &["pools.coder.warm (1) is smaller than pools.coder.min (3): raise warm or lower min"],
    );
    one(
        &pool("max = 3\nwarm = 4\n"),
        4,
        8,
        &["pools.coder.warm (4) is larger than pools.coder.max (3): lower warm or raise max"],
    );
}

#[test]
fn defaults_conflict_is_reported_once() {
    let text = "[defaults]\nmin = 5\nmax = 3\nimage = \"i\"\n[pools.a]\n[pools.b]\n";
    one(
        text,
        2,
        7,
        &["defaults.min (5) is larger than defaults.max (3)"],
    );
}

#[test]
fn bad_value_in_defaults_is_reported_once_and_not_cascaded() {
    // min is bad in defaults; neither pool reports anything else about min.
    let text = "[defaults]\nmin = \"x\"\nimage = \"i\"\n[pools.a]\nmax = 1\n[pools.b]\n";
    one(text, 2, 7, &["defaults.min (\"x\") must be a whole number"]);
}

#[test]
fn cpus_positive_and_finite() {
    for value in ["0", "-1", "inf", "nan"] {
        one(
            &pool(&format!("cpus = {value}\n")),
            3,
            8,
            &[&format!(
                "pools.coder.cpus ({value}) must be a number of CPUs above 0"
            )],
        );
    }
    assert_eq!(ok(&pool("cpus = 2\n")).pools["coder"].cpus, Some(2.0));
}

#[test]
fn pids_limit_at_least_one() {
    one(
        &pool("pids_limit = -1\n"),
        3,
        14,
        &[
            "pools.coder.pids_limit (-1) must be at least 1",
            "no unlimited",
        ],
    );
}

#[test]
fn workdir_absolute() {
    one(
        &pool("workdir = \"work\"\n"),
        3,
        11,
        &["pools.coder.workdir (\"work\") must be an absolute path"],
    );
    one(&pool("workdir = \"/\"\n"), 3, 11, &["must not be \"/\""]);
    one(
        &pool("workdir = \"/a/../b\"\n"),
        3,
        11,
        &["must not contain \"..\""],
    );
}

#[test]
fn user_form() {
    for bad in ["", "1000:", ":1000", "a b", "1:2:3", "-x"] {
        one(
            &format!("{}[pools.coder.security]\nuser = \"{bad}\"\n", pool("")),
            4,
            8,
            &[&format!(
                "pools.coder.security.user (\"{bad}\") must be \"uid[:gid]\""
            )],
        );
    }
    for good in ["1000", "1000:1000", "agent", "agent:staff", "_svc", "0"] {
        let text = format!("{}[pools.coder.security]\nuser = \"{good}\"\n", pool(""));
        assert_eq!(ok(&text).pools["coder"].security.user, good);
    }
}

#[test]
fn cap_drop_upper_case() {
    one(
        &format!(
            "[defaults.security]\ncap_drop = [\"ALL\", \"net_raw\"]\n{}",
            pool("")
        ),
        2,
        20,
        &["defaults.security.cap_drop[1] (\"net_raw\") must be an upper-case capability name"],
    );
    one(
        &format!("[defaults.security]\ncap_drop = [\"\"]\n{}", pool("")),
        2,
        13,
        &["defaults.security.cap_drop[0] (\"\")"],
    );
    one(
        &format!("[defaults.security]\ncap_drop = \"ALL\"\n{}", pool("")),
        2,
        12,
        &["defaults.security.cap_drop (\"ALL\") must be a list of capabilities"],
    );
}

#[test]
fn runtime_non_empty() {
    one(
        &format!("{}[pools.coder.security]\nruntime = \"\"\n", pool("")),
        4,
        11,
        &["pools.coder.security.runtime (\"\") must name an OCI runtime"],
    );
}

#[test]
fn argv_non_empty() {
    one(
        &pool("health_cmd = []\n"),
        3,
        14,
        &["pools.coder.health_cmd ([]) must name at least the program"],
    );
    one(
        &pool("session_end_command = [\"\", \"x\"]\n"),
        3,
        24,
        &["pools.coder.session_end_command[0] (\"\") must name the program"],
    );
    one(
        &pool("health_cmd = [\"curl\", 5]\n"),
        3,
        23,
        &["pools.coder.health_cmd[1] (5) must be a string, not an integer"],
    );
    one(
        &pool("health_cmd = \"true\"\n"),
        3,
        14,
        &["pools.coder.health_cmd (\"true\") must be a command as a list of strings"],
    );
}

#[test]
fn env_keys_and_values() {
    one(
        &pool("env = { \"A=B\" = \"x\" }\n"),
        3,
        9,
        &["pools.coder.env: variable name \"A=B\" must not contain '='"],
    );
    one(
        &pool("env = { \"\" = \"x\" }\n"),
        3,
        9,
        &["pools.coder.env has an empty variable name"],
    );
    one(
        &pool("env = { PORT = 8080 }\n"),
        3,
        16,
        &["pools.coder.env.PORT (8080) must be a string: quote it, PORT = \"8080\""],
    );
    one(
        &pool("env = [\"A=B\"]\n"),
        3,
        7,
        &["pools.coder.env ([\"A=B\"]) must be a table of strings"],
    );
}

#[test]
fn network_name() {
    one(
        &pool("network = \"\"\n"),
        3,
        11,
        &["pools.coder.network (\"\") must be \"none\", \"isolated\""],
    );
    one(
        &pool("network = \"my net\"\n"),
        3,
        11,
        &["existing Docker network"],
    );
    assert_eq!(
        ok(&pool("network = \"none\"\n")).pools["coder"].network,
        NetworkMode::None
    );
}

#[test]
fn server_listen() {
    one(
        &format!("[server]\nlisten = \"localhost:7070\"\n{}", pool("")),
        2,
        10,
        &["server.listen (\"localhost:7070\") must be an IP address and port"],
    );
    one(
        &format!("[server]\nlisten = \"\"\n{}", pool("")),
        2,
        10,
        &["server.listen (\"\") turns the TCP listener off, but server.unix_socket is not set"],
    );
    one(
        &format!("[server]\nlisten = \"\"\nunix_socket = \"x\"\n{}", pool("")),
        3,
        15,
        &["server.unix_socket (\"x\") must be an absolute path"],
    );
}

#[test]
fn server_limits() {
    one(
        &format!("[server]\nmax_request_body = \"512B\"\n{}", pool("")),
        2,
        20,
        &["server.max_request_body (\"512B\") is too small: it must be at least 1KiB"],
    );
    one(
        &format!("[server]\nmax_sessions = 0\n{}", pool("")),
        2,
        16,
        &["server.max_sessions (0) must be at least 1"],
    );
    one(
        &format!("[server]\nshutdown_grace = \"soon\"\n{}", pool("")),
        2,
        18,
        &["server.shutdown_grace (\"soon\") is not a duration"],
    );
}

#[test]
fn server_paths() {
    one(
        &format!("[server]\nunix_socket = \"api.sock\"\n{}", pool("")),
        2,
        15,
        &["server.unix_socket (\"api.sock\") must be an absolute path"],
    );
    one(
        &format!("[server]\ntoken_file = \"\"\n{}", pool("")),
        2,
        14,
        &["server.token_file (\"\") must not be empty"],
    );
    let c = ok(&format!("[server]\ntoken_file = \"/etc/t\"\n{}", pool("")));
    assert_eq!(c.server.token_file, Some(PathBuf::from("/etc/t")));
}

#[test]
fn docker_host() {
    one(
        &format!("[docker]\nhost = \"/var/run/docker.sock\"\n{}", pool("")),
        2,
        8,
        &["docker.host (\"/var/run/docker.sock\") must be a URL"],
    );
    let c = ok(&format!(
        "[docker]\nhost = \"tcp://10.0.0.1:2375\"\n{}",
        pool("")
    ));
    assert_eq!(c.docker.host.as_deref(), Some("tcp://10.0.0.1:2375"));
}

#[test]
fn three_problems_reported_at_once_in_file_order() {
    let p = problems(
        r#"[pools.coder]
image = "img"
min = 5
max = 3
on_exhausted = "later"
mem = "1GiB"
"#,
    );
    assert_eq!(p.len(), 3, "{p:#?}");
    assert_eq!((p[0].line, p[0].col), (3, 7));
    assert!(p[0].message.contains("min (5) is larger than"));
    assert_eq!((p[1].line, p[1].col), (5, 16));
    assert!(p[1].message.contains("on_exhausted"));
    assert_eq!((p[2].line, p[2].col), (6, 1));
    assert!(p[2].message.contains("did you mean memory?"));

    let shown = ConfigError::Invalid(p).to_string();
    assert_eq!(shown.lines().count(), 3);
    assert!(
        shown.starts_with("pools.toml:3:7: pools.coder.min (5) is larger than pools.coder.max (3)")
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    one(
        "# ééé\n[pools.coder]\nimage = \"img\"\nenv = { \"é\" = 1 }\n",
        4,
        15,
        &["pools.coder.env.\"é\" (1) must be a string"],
    );
}

#[test]
fn load_reads_the_file_and_names_it() {
    let dir = std::env::temp_dir().join(format!("warmpool-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pools.toml");
    std::fs::write(&path, pool("min = -1\n")).unwrap();
    let err = Config::load(&path).unwrap_err();
    assert_eq!(err.problems()[0].file, path.display().to_string());
    assert!(err
        .to_string()
        .starts_with(&format!("{}:3:7: ", path.display())));
    std::fs::write(&path, pool("")).unwrap();
    assert_eq!(Config::load(&path).unwrap().pools["coder"].image, "img");
    std::fs::remove_dir_all(&dir).unwrap();

    let err = Config::load(&dir.join("missing.toml")).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
    assert!(err.to_string().starts_with("cannot read "), "{err}");
}

#[test]
fn parse_size_cases() {
    let cases = [
        ("512MiB", 536_870_912),
        ("1GiB", 1 << 30),
        ("16MiB", 16 << 20),
        ("4KiB", 4096),
        ("100B", 100),
        ("100", 100),
        ("0", 0),
        ("1KB", 1000),
        ("2MB", 2_000_000),
        ("3GB", 3_000_000_000),
        ("1TiB", 1 << 40),
        ("1.5GiB", 3 << 29),
        ("0.5KiB", 512),
        (" 512 MiB ", 536_870_912),
        ("512mib", 536_870_912),
    ];
    for (s, bytes) in cases {
        assert_eq!(parse_size(s), Ok(bytes), "{s}");
    }
    for bad in [
        "",
        "MiB",
        "-1",
        "1.MiB",
        ".5MiB",
        "1.2.3KiB",
        "12 parsecs",
        "1e3",
    ] {
        let err = parse_size(bad).unwrap_err();
        assert!(err.contains("\"512MiB\""), "{bad}: {err}");
    }
    assert_eq!(
        parse_size("512M").unwrap_err(),
        "unit \"M\" is ambiguous: write MiB (binary) or MB (decimal)"
    );
    assert!(parse_size("1.1B")
        .unwrap_err()
        .contains("whole number of bytes"));
    assert!(parse_size("99999999999999999999999")
        .unwrap_err()
        .contains("too large"));
    assert!(parse_size("16777216TiB").unwrap_err().contains("too large"));
}

#[test]
fn enums_serialize_as_in_the_file() {
    use serde::de::value::{Error, StrDeserializer};
    let de = |s| StrDeserializer::<Error>::new(s);
    assert_eq!(OnExhausted::deserialize(de("cold")), Ok(OnExhausted::Cold));
    assert_eq!(
        ExecMode::deserialize(de("docker-exec")),
        Ok(ExecMode::DockerExec)
    );
    assert_eq!(
        NetworkMode::deserialize(de("isolated")),
        Ok(NetworkMode::Isolated)
    );
    assert_eq!(
        NetworkMode::deserialize(de("agents")),
        Ok(NetworkMode::Named("agents".to_string()))
    );
    assert_eq!(OnExhausted::Wait.to_string(), "wait");
    assert_eq!(ExecMode::DockerExec.to_string(), "docker-exec");
    assert_eq!(NetworkMode::None.to_string(), "none");
}

#[test]
fn did_you_mean_is_conservative() {
    assert_eq!(did_you_mean("mem", LAYER_KEYS), Some("memory"));
    assert_eq!(did_you_mean("cpu", LAYER_KEYS), Some("cpus"));
    assert_eq!(did_you_mean("Image", LAYER_KEYS), Some("image"));
    assert_eq!(did_you_mean("bogus", LAYER_KEYS), None);
    assert_eq!(did_you_mean("xy", LAYER_KEYS), None);
    assert_eq!(did_you_mean("hots", DOCKER_KEYS), Some("host"));
    assert_eq!(edit_distance("listne", "listen"), 1);
}

#[test]
fn spare_above_max_names_both_and_the_fix() {
    one(
        &pool("max = 3\nspare = 4\n"),
        4,
        9,
        &[
            "pools.coder.spare (4) is above pools.coder.max (3)",
            "lower spare or raise max",
        ],
    );
}

#[test]
fn a_bad_cron_expression_names_the_entry_the_value_and_the_form() {
    one(
        &pool("schedule = [{ cron = \"0 25 * * *\", min = 2, for = \"1h\" }]\n"),
        3,
        22,
        &[
            "pools.coder.schedule[0].cron (\"0 25 * * *\") is not a cron expression",
            "write five fields, minute hour day-of-month month day-of-week",
        ],
    );
}

#[test]
fn a_schedule_entry_must_be_complete_and_within_max() {
    let p = problems(&pool("schedule = [{ cron = \"0 9 * * *\", min = 2 }]\n"));
    assert!(
        p[0].message.contains("pools.coder.schedule[0] lacks for"),
        "{p:?}"
    );
    let p = problems(&pool(
        "max = 4\nschedule = [{ cron = \"0 9 * * *\", min = 6, for = \"1h\" }]\n",
    ));
    assert!(
        p[0].message
            .contains("pools.coder.schedule[0].min (6) is above pools.coder.max (4)"),
        "{p:?}"
    );
    let p = problems(&pool(
        "schedule = [{ cron = \"0 9 * * *\", min = 1, for = \"1h\", max = 3 }]\n",
    ));
    assert!(
        p[0].message
            .contains("unknown key pools.coder.schedule[0].max"),
        "{p:?}"
    );
    // The TOML array-of-tables spelling reads the same.
    let c = ok(&format!(
        "{}[[pools.coder.schedule]]\ncron = \"0 9 * * 1-5\"\nmin = 2\nfor = \"9h\"\n",
        pool("")
    ));
    assert_eq!(c.pools["coder"].schedule[0].min, 2);
}

#[test]
fn the_trace_file_is_off_by_default_and_rotates_at_its_size() {
    let c = ok(&pool(""));
    assert_eq!(c.server.trace_file, None);
    assert_eq!(c.server.trace_file_max_size, 64 * MIB);
    let c = ok(&format!(
        "[server]\ntrace_file = \"/var/lib/warmpool/trace.jsonl\"\ntrace_file_max_size = \"1GiB\"\n{}",
        pool("")
    ));
    assert_eq!(
        c.server.trace_file.as_deref(),
        Some(std::path::Path::new("/var/lib/warmpool/trace.jsonl"))
    );
    assert_eq!(c.server.trace_file_max_size, GIB);
    one(
        &format!("[server]\ntrace_file_max_size = \"10B\"\n{}", pool("")),
        2,
        23,
        &["server.trace_file_max_size (\"10B\") is too small: it must be at least 1KiB"],
    );
}

#[test]
fn a_blank_or_overlong_description_is_refused_with_the_fix() {
    let err = |text: &str| {
        Config::parse(text, "pools.toml")
            .expect_err("refused")
            .to_string()
    };
    let e = err("[pools.a]\nimage = \"img\"\ndescription = \"  \"\n");
    assert!(
        e.contains("pools.a.description") && e.contains("what the pool is for"),
        "{e}"
    );
    let long = "x".repeat(1001);
    let e = err(&format!(
        "[pools.a]\nimage = \"img\"\ndescription = \"{long}\"\n"
    ));
    assert!(
        e.contains("1001 characters") && e.contains("at most 1000"),
        "{e}"
    );
    let c = ok("[pools.a]\nimage = \"img\"\ndescription = \"Python and pytest\"\n");
    assert_eq!(
        c.pools["a"].description.as_deref(),
        Some("Python and pytest")
    );
}

/// One rule for the engine's address: an empty `DOCKER_HOST` is unset (it was local to the
/// config check but remote to the direct transport and the workspace refusal).
#[test]
fn the_engine_address_treats_an_empty_value_as_unset() {
    use super::{engine_address, is_local_engine, DEFAULT_ENGINE};
    assert_eq!(engine_address(Some("tcp://h:2375")), "tcp://h:2375");
    assert_eq!(engine_address(Some("unix:///x.sock")), "unix:///x.sock");
    // Configured but empty is unset too; DOCKER_HOST is this process's, so only assert
    // what holds whatever it is: the result is never empty.
    assert!(!engine_address(Some("")).is_empty());
    if std::env::var("DOCKER_HOST").map_or(true, |h| h.is_empty()) {
        assert_eq!(engine_address(None), DEFAULT_ENGINE);
        assert_eq!(engine_address(Some("")), DEFAULT_ENGINE);
    }
    assert!(is_local_engine(DEFAULT_ENGINE));
    assert!(!is_local_engine("ssh://me@h"));
    assert!(!is_local_engine(""));
}
