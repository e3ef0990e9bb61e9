//! What the engine really holds for a pool's containers: names, labels, limits, security
//! settings and networks, read back with `docker inspect` and from inside the container.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn inspect_shows_every_configured_setting() {
    let d = Daemon::start(
        r#"
[pools.limits]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1
memory = "64MiB"
cpus = 0.5
pids_limit = 77
workdir = "/job"
env = { POOL_VAR = "from-pool" }

[pools.limits.security]
user = "1234:2345"

[pools.bridged]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1
network = "isolated"
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(30)).await;

    let ids = containers(&d.instance, Some("limits"));
    assert_eq!(ids.len(), 1, "one container for min = max = 1: {ids:?}");
    let c = inspect(&ids[0]);
    let name = c["Name"].as_str().unwrap();
    let suffix = name.strip_prefix("/warmpool-limits-").unwrap_or_else(|| {
        panic!("container name {name:?} is not warmpool-<pool>-<id>");
    });
    assert!(
        !suffix.is_empty() && suffix.chars().all(|ch| ch.is_ascii_alphanumeric()),
        "name {name:?}"
    );

    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["warmpool.managed"], "true");
    assert_eq!(labels["warmpool.pool"], "limits");
    assert_eq!(labels["warmpool.instance"], d.instance.as_str());
    let daemon_id = labels["warmpool.daemon"].as_str().unwrap();
    assert!(!daemon_id.is_empty());
    assert!(
        d.log().contains(daemon_id),
        "the daemon id label {daemon_id} is not the one the daemon logged:\n{}",
        d.log()
    );
    let spec = labels["warmpool.spec"].as_str().unwrap();
    assert!(
        spec.len() >= 8 && spec.chars().all(|ch| ch.is_ascii_hexdigit()),
        "spec hash label {spec:?}"
    );

    let cfg = &c["Config"];
    assert_eq!(
        image_name(cfg["Image"].as_str().unwrap_or_default()),
        "warmpool/agent:latest"
    );
    assert_eq!(cfg["User"], "1234:2345");
    // The shim, listening on its own socket directory (exec_transport = "direct", the default).
    assert_eq!(
        cfg["Entrypoint"],
        json!(["/.warmpool/shim", "--listen", "/.warmpool/run/shim.sock"])
    );
    assert!(
        cfg["Env"]
            .as_array()
            .unwrap()
            .contains(&json!("POOL_VAR=from-pool")),
        "pool env missing: {}",
        cfg["Env"]
    );

    let host = &c["HostConfig"];
    assert_eq!(host["Memory"], json!(64 * MIB));
    assert_eq!(
        host["MemorySwap"],
        json!(64 * MIB),
        "swap must not add to memory"
    );
    assert_eq!(host["NanoCpus"], json!(500_000_000u64));
    assert_eq!(host["PidsLimit"], json!(77));
    assert_eq!(host["ReadonlyRootfs"], json!(true));
    if engine_is_podman() {
        // Podman lists what ALL dropped; CapEff below shows none is left.
        assert!(host["CapDrop"].as_array().is_some_and(|c| c.len() > 5));
    } else {
        assert_eq!(host["CapDrop"], json!(["ALL"]));
    }
    assert!(
        host["SecurityOpt"]
            .as_array()
            .is_some_and(|o| o.iter().any(|s| s == "no-new-privileges")),
        "SecurityOpt {}",
        host["SecurityOpt"]
    );
    assert_eq!(host["LogConfig"]["Type"], "none");
    assert_eq!(host["NetworkMode"], "none");
    let tmpfs = host["Tmpfs"].as_object().expect("Tmpfs");
    let mut mounts: Vec<&str> = tmpfs.keys().map(String::as_str).collect();
    mounts.sort();
    if engine_is_podman() {
        // Podman's own writable /run and /var/tmp, masked read-only by the runtime.
        assert_eq!(mounts, ["/job", "/run", "/tmp", "/var/tmp"]);
        assert!(
            tmpfs["/run"].as_str().unwrap().starts_with("ro,"),
            "{tmpfs:?}"
        );
    } else {
        assert_eq!(mounts, ["/job", "/tmp"], "tmpfs on /tmp and the workdir");
    }
    assert!(
        host["Binds"].as_array().is_some_and(|b| b
            .iter()
            .any(|s| s.as_str().unwrap().contains(":/.warmpool/shim:ro"))),
        "the shim is bind-mounted read-only: {}",
        host["Binds"]
    );
    assert!(
        host["Binds"]
            .as_array()
            // Podman adds its mount options after the target (":rw,rprivate,rbind").
            .is_some_and(|b| b.iter().any(|s| s.as_str().unwrap().contains(&format!(
                "/{}:/.warmpool/run",
                c["Name"].as_str().unwrap().trim_start_matches('/')
            )))),
        "the container's own socket directory is bind-mounted: {}",
        host["Binds"]
    );
    let attached = c["NetworkSettings"]["Networks"].as_object().unwrap();
    assert!(
        attached.keys().all(|n| n == "none"),
        "network none, attached to {attached:?}"
    );

    // And what the task sees from inside: the limits are in force, not just recorded.
    let (status, v) = d
        .task(
            "limits",
            json!({"shell": "id -u; id -g; pwd; \
                (cat /sys/fs/cgroup/memory/memory.limit_in_bytes || cat /sys/fs/cgroup/memory.max) 2>/dev/null; \
                (cat /sys/fs/cgroup/pids/pids.max || cat /sys/fs/cgroup/pids.max) 2>/dev/null; \
                grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; \
                touch /job/ok /tmp/ok && echo tmpfs-writable; \
                touch /etc/x 2>/dev/null || echo root-read-only"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let out = v["stdout"].as_str().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "1234",
            "2345",
            "/job",
            &(64 * MIB).to_string(),
            "77",
            "CapEff:\t0000000000000000",
            "NoNewPrivs:\t1",
            "tmpfs-writable",
            "root-read-only"
        ],
        "{v}"
    );

    // The isolated pool: on its own bridge, named after the instance and the pool.
    let net_name = format!("warmpool-{}-bridged", d.instance);
    let ids = containers(&d.instance, Some("bridged"));
    assert_eq!(ids.len(), 1);
    let c = inspect(&ids[0]);
    if !engine_is_podman() {
        // Podman reports "bridge" here; the attachment below is what counts.
        assert_eq!(c["HostConfig"]["NetworkMode"], net_name.as_str());
    }
    let nets: Vec<&String> = c["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(nets, [&net_name], "attached to its own network only");
    let net: Value = serde_json::from_str(&docker(&["network", "inspect", &net_name])).unwrap();
    let net = &net[0];
    assert_eq!(net["Driver"], "bridge");
    assert_eq!(net["Labels"]["warmpool.managed"], "true");
    assert_eq!(net["Labels"]["warmpool.instance"], d.instance.as_str());
    // Podman's Docker-compatible inspect shows no options (`podman network inspect` shows
    // the `isolate` the runtime sets); its bridges have no enable_icc.
    if !engine_is_podman() {
        assert_eq!(
            net["Options"]["com.docker.network.bridge.enable_icc"], "false",
            "containers of the pool must not reach each other either"
        );
    }
    assert_eq!(
        networks(&d.instance).len(),
        1,
        "only the isolated pool has one"
    );
}

/// Names of the network interfaces a task sees.
async fn interfaces(d: &Daemon, pool: &str) -> Vec<String> {
    let (status, v) = d.task(pool, json!({"cmd": ["cat", "/proc/net/dev"]})).await;
    assert_eq!(status, 200, "{v}");
    let mut names: Vec<String> = v["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .collect();
    names.sort();
    names
}

fn ip_on(id: &str, network: &str) -> String {
    let c = inspect(id);
    let ip = c["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!ip.is_empty(), "container {id} has no address on {network}");
    ip
}

/// Connects from the host and reads what the listener says.
fn host_reads(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[tokio::test]
async fn isolated_pools_cannot_reach_each_other_and_none_has_only_loopback() {
    let d = Daemon::start(
        r#"
[defaults]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1

[pools.alpha]
network = "isolated"

[pools.beta]
network = "isolated"

[pools.sealed]
network = "none"
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(30)).await;

    assert_eq!(interfaces(&d, "sealed").await, ["lo"]);
    assert_eq!(interfaces(&d, "alpha").await, ["eth0", "lo"]);
    assert_eq!(
        networks(&d.instance).len(),
        2,
        "one bridge per isolated pool"
    );

    let beta = containers(&d.instance, Some("beta")).remove(0);
    let beta_ip = ip_on(&beta, &format!("warmpool-{}-beta", d.instance));
    let alpha = containers(&d.instance, Some("alpha")).remove(0);
    let alpha_nets = inspect(&alpha)["NetworkSettings"]["Networks"].clone();
    assert!(
        alpha_nets
            .get(format!("warmpool-{}-beta", d.instance))
            .is_none(),
        "alpha joined beta's network: {alpha_nets}"
    );

    // A listener in beta, answering "pong" to every connection, for the test's duration.
    let listener = {
        let d_addr = d.addr.clone();
        tokio::spawn(async move {
            let client = warmpool::client::Client::new(&d_addr, None);
            let body = json!({"shell": "nc -ll -p 8080 -e echo pong", "timeout": "30s"});
            let _ = client
                .request(
                    "POST",
                    "/v1/pools/beta/tasks",
                    Some(body.to_string().into_bytes()),
                )
                .await;
        })
    };
    // Control: the listener is up and reachable from the host, so a failure from alpha
    // below is the network's doing.
    let addr: SocketAddr = format!("{beta_ip}:8080").parse().unwrap();
    let heard = wait_for(
        "beta's listener to answer the host",
        Duration::from_secs(10),
        || host_reads(addr).filter(|s| s.contains("pong")),
    )
    .await;
    assert_eq!(heard.trim(), "pong");

    let (status, v) = d
        .task(
            "alpha",
            json!({"shell": format!("nc -w 1 {beta_ip} 8080 </dev/null; echo rc=$?")}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let out = v["stdout"].as_str().unwrap();
    assert!(!out.contains("pong"), "alpha reached beta: {v}");
    assert!(out.contains("rc=") && !out.contains("rc=0"), "{v}");

    let (status, v) = d
        .task(
            "sealed",
            json!({"shell": format!("nc -w 1 {beta_ip} 8080 </dev/null; echo rc=$?")}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(!v["stdout"].as_str().unwrap().contains("pong"), "{v}");
    listener.abort();
}

/// Every security key set away from its default reaches the engine (the defaults are
/// checked in `inspect_shows_every_configured_setting`).
#[tokio::test]
async fn changed_security_settings_reach_the_engine() {
    let d = Daemon::start(
        r#"
[pools.loose]
image = "warmpool/agent:latest"
min = 1
warm = 1
max = 1

[pools.loose.security]
read_only_rootfs = false
cap_drop = ["NET_RAW", "MKNOD"]
no_new_privileges = false
runtime = "io.containerd.runc.v2"
"#,
    )
    .await;
    d.wait_ready(Duration::from_secs(60)).await;
    let ids = containers(&d.instance, Some("loose"));
    assert_eq!(ids.len(), 1, "{ids:?}");
    let host = &inspect(&ids[0])["HostConfig"];
    assert_eq!(
        host["ReadonlyRootfs"],
        json!(false),
        "read_only_rootfs = false"
    );
    let mut dropped: Vec<String> = host["CapDrop"]
        .as_array()
        .unwrap_or_else(|| panic!("CapDrop {}", host["CapDrop"]))
        .iter()
        .map(|c| c.as_str().unwrap().trim_start_matches("CAP_").to_string())
        .collect();
    dropped.sort();
    assert_eq!(dropped, ["MKNOD", "NET_RAW"], "cap_drop replaces [\"ALL\"]");
    assert!(
        !host["SecurityOpt"].as_array().is_some_and(|o| o
            .iter()
            .any(|s| s.as_str().unwrap_or("").contains("no-new-privileges"))),
        "no_new_privileges = false, SecurityOpt {}",
        host["SecurityOpt"]
    );
    assert_eq!(host["Runtime"], "io.containerd.runc.v2", "security.runtime");
    let (status, v) = d.task("loose", json!({"shell": "echo ok"})).await;
    assert_eq!((status, v["stdout"].as_str()), (200, Some("ok\n")), "{v}");
}
