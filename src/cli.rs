//! The command line: `serve`, `check`, `run`, `status`: arguments, logging and what is
//! printed. `serve` hands over to [`crate::daemon`]. Errors end here as anyhow.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine as _;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::config::{Config, ConfigError};

#[derive(Parser)]
#[command(
    name = "warmpool",
    version,
    about = "Warm pools of containers, one per agent type"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Serve {
        #[arg(long, default_value = "pools.toml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
    },
    /// Validate a config file, print every problem, exit 1 if any.
    Check {
        #[arg(default_value = "pools.toml")]
        file: PathBuf,
    },
    /// Submit one task to a running daemon, print its output, exit with its exit code.
    Run {
        pool: String,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        timeout: Option<String>,
        #[arg(long, env = "WARMPOOL_ADDR", default_value = "http://127.0.0.1:7070")]
        addr: String,
        #[arg(required = true, last = true)]
        cmd: Vec<String>,
    },
    /// Speak MCP on stdin/stdout to an MCP client, forwarding to a running daemon.
    Mcp(crate::mcp::McpArgs),
    /// Show the pools and sessions of a running daemon.
    Status {
        #[arg(long, env = "WARMPOOL_ADDR", default_value = "http://127.0.0.1:7070")]
        addr: String,
    },
    /// Replay a trace of task arrivals against a config on a simulated engine (no Docker
    /// needed) and print, per pool, the warm-hit rate, queue waits, container-seconds and
    /// creates, next to the oracle that knows the future (docs/scaling.md).
    Simulate {
        #[arg(long, default_value = "pools.toml")]
        config: PathBuf,
        /// JSONL, one task a line: {"at": 12.5, "pool": "coder", "duration": 0.8}.
        #[arg(long)]
        trace: PathBuf,
        /// One JSON object per pool (and policy) a line instead of the table.
        #[arg(long)]
        json: bool,
        /// Also replay today's policy (thresholds only: predictive, spare and schedule
        /// off) and print both side by side.
        #[arg(long)]
        compare: bool,
        /// A container's create + start time on the simulated engine.
        #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
        create_latency: std::time::Duration,
        /// Creates the simulated engine takes in per second, over all pools.
        #[arg(long, default_value_t = 4.0)]
        create_rate: f64,
        /// The wall-clock time (RFC 3339, UTC) of the trace's start, for schedules.
        #[arg(long, default_value = "2026-01-05T00:00:00Z")]
        start: chrono::DateTime<chrono::Utc>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The simulator builds its own paused current-thread runtimes, one per replay.
    if let Command::Simulate {
        config,
        trace,
        json,
        compare,
        create_latency,
        create_rate,
        start,
    } = cli.command
    {
        let opts = crate::simulate::Options {
            engine: crate::simulate::EngineModel {
                latency: create_latency,
                rate: create_rate,
            },
            start,
        };
        return match simulate(&config, &trace, json, compare, opts) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("warmpool: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve { config, log_format } => serve(config, log_format).await,
            Command::Check { file } => check(&file),
            Command::Run {
                pool,
                session,
                timeout,
                addr,
                cmd,
            } => run(&addr, &pool, session, timeout, cmd).await,
            Command::Status { addr } => status(&addr).await,
            Command::Mcp(args) => crate::mcp::stdio(args).await,
            Command::Simulate { .. } => unreachable!("handled before the runtime is built"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warmpool: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    match Config::load(file) {
        Ok(cfg) => {
            println!(
                "{}: ok ({} pools: {})",
                file.display(),
                cfg.pools.len(),
                cfg.pools.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn simulate(
    config_path: &std::path::Path,
    trace_path: &std::path::Path,
    json: bool,
    compare: bool,
    opts: crate::simulate::Options,
) -> anyhow::Result<ExitCode> {
    use crate::simulate::{simulate, table, todays_policy, Trace};
    if !(opts.engine.rate.is_finite() && opts.engine.rate > 0.0) {
        anyhow::bail!(
            "--create-rate {} must be a number of creates per second above 0, such as 4",
            opts.engine.rate
        );
    }
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e @ ConfigError::Invalid(_)) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let trace = Trace::load(trace_path)?;
    trace.check_pools(&config, &config_path.display().to_string())?;
    let mut reports = Vec::new();
    if compare {
        reports.extend(simulate(&todays_policy(&config), &trace, &opts, "today")?);
        reports.extend(simulate(&config, &trace, &opts, "new")?);
        // Side by side: each pool's lines together.
        reports.sort_by(|a, b| a.pool.cmp(&b.pool));
    } else {
        reports.extend(simulate(&config, &trace, &opts, "config")?);
    }
    if json {
        for r in &reports {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print!("{}", table(&reports));
    }
    Ok(ExitCode::SUCCESS)
}

/// Dependencies whose debug and trace output must never be shown, whatever `RUST_LOG` says:
/// the Docker client logs every request and response body there, and those carry the env of
/// containers and of `docker exec` tasks (secrets, often). Their warnings still show.
const CAPPED_AT_INFO: &[&str] = &["bollard"];

fn init_logs(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warmpool=info"));
    for target in CAPPED_AT_INFO {
        // A directive for the same target replaces one from RUST_LOG, and is more specific
        // than a bare level such as RUST_LOG=trace.
        filter = filter.add_directive(format!("{target}=info").parse().expect("valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only on a terminal: a log file or journald gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config_path: PathBuf, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    // Problems in the file are printed as `check` prints them, before logging is set up, so
    // they read as plain text whatever the log format.
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e @ ConfigError::Invalid(_)) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    init_logs(log_format);
    crate::daemon::run(config_path, config).await?;
    Ok(ExitCode::SUCCESS)
}

fn client(addr: &str) -> crate::client::Client {
    crate::client::Client::new(addr, std::env::var("WARMPOOL_TOKEN").ok())
}

fn api_error(status: u16, body: &[u8]) -> anyhow::Error {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match v["error"]["message"].as_str() {
        Some(m) => anyhow::anyhow!(
            "{m} (HTTP {status}, {})",
            v["error"]["code"].as_str().unwrap_or("")
        ),
        None => anyhow::anyhow!("HTTP {status}: {}", String::from_utf8_lossy(body)),
    }
}

async fn run(
    addr: &str,
    pool: &str,
    session: Option<String>,
    timeout: Option<String>,
    cmd: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let mut body = json!({"cmd": cmd});
    if let Some(s) = session {
        body["session"] = json!(s);
    }
    if let Some(t) = timeout {
        body["timeout"] = json!(t);
    }
    let mut resp = client(addr)
        .request(
            "POST",
            &format!("/v1/pools/{pool}/tasks?stream=true"),
            Some(body.to_string().into_bytes()),
        )
        .await?;
    if resp.status != 200 {
        let status = resp.status;
        return Err(api_error(status, &resp.bytes().await?));
    }
    let mut buf = Vec::new();
    let mut code = ExitCode::from(1);
    while let Some(chunk) = resp.chunk().await? {
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let v: Value = serde_json::from_slice(&line).context("bad event from the daemon")?;
            let decode = |s: &str| -> Vec<u8> {
                if v["encoding"] == "base64" {
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .unwrap_or_default()
                } else {
                    s.as_bytes().to_vec()
                }
            };
            if let Some(s) = v["stdout"].as_str() {
                let mut out = std::io::stdout().lock();
                out.write_all(&decode(s))?;
                out.flush()?;
            } else if let Some(s) = v["stderr"].as_str() {
                let mut err = std::io::stderr().lock();
                err.write_all(&decode(s))?;
                err.flush()?;
            } else if let Some(exit) = v.get("exit") {
                code = exit_code_of(exit);
            } else if let Some(e) = v.get("error") {
                anyhow::bail!("{}", e["message"].as_str().unwrap_or("task failed"));
            }
        }
    }
    Ok(code)
}

/// The shell's conventions: the exit code, 128+N for signal N, 124 for a timeout.
fn exit_code_of(exit: &Value) -> ExitCode {
    if exit["timed_out"] == true {
        eprintln!("warmpool: the task timed out");
        return ExitCode::from(124);
    }
    if let Some(e) = exit["error"].as_str() {
        eprintln!("warmpool: {e}");
        return ExitCode::from(127);
    }
    if let Some(sig) = exit["signal"].as_i64() {
        return ExitCode::from((128 + sig).clamp(0, 255) as u8);
    }
    ExitCode::from(exit["exit_code"].as_i64().unwrap_or(1).clamp(0, 255) as u8)
}

async fn status(addr: &str) -> anyhow::Result<ExitCode> {
    let resp = client(addr).request("GET", "/v1/pools", None).await?;
    let status = resp.status;
    let body = resp.bytes().await?;
    if status != 200 {
        return Err(api_error(status, &body));
    }
    let v: Value = serde_json::from_slice(&body)?;
    println!(
        "{:<16} {:>5} {:>5} {:>5} {:>8} {:>9} {:>4} {:>4} {:>6} {:>6} {:>6}",
        "POOL",
        "LIVE",
        "IDLE",
        "BUSY",
        "STARTING",
        "UNHEALTHY",
        "MIN",
        "MAX",
        "TARGET",
        "UTIL",
        "QUEUE"
    );
    for p in v["pools"].as_array().into_iter().flatten() {
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        println!(
            "{:<16} {:>5} {:>5} {:>5} {:>8} {:>9} {:>4} {:>4} {:>6} {:>6.2} {:>6}",
            p["name"].as_str().unwrap_or("?"),
            n("live"),
            n("idle"),
            n("busy"),
            n("starting"),
            n("unhealthy"),
            n("min"),
            n("max"),
            n("target"),
            p["utilization"].as_f64().unwrap_or(0.0),
            n("queue_length")
        );
    }
    // A failed pool (docs/operations.md, "A failed pool") under the table, with the fix.
    for p in v["pools"].as_array().into_iter().flatten() {
        if p["state"] == "failed" {
            println!(
                "pool {} is FAILED: the engine refuses its containers: {}; what to do: {}",
                p["name"].as_str().unwrap_or("?"),
                p["failure"]["reason"].as_str().unwrap_or("?"),
                p["failure"]["hint"].as_str().unwrap_or("?")
            );
        }
    }
    let resp = client(addr).request("GET", "/v1/sessions", None).await?;
    let status = resp.status;
    let body = resp.bytes().await?;
    if status != 200 {
        return Err(api_error(status, &body));
    }
    let v: Value = serde_json::from_slice(&body)?;
    let sessions = v["sessions"].as_array().cloned().unwrap_or_default();
    println!();
    if sessions.is_empty() {
        println!("no sessions");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:<16} {:<11} {:<12} {:>6} {:>8} {:>12}",
        "SESSION", "POOL", "STATE", "CONTAINER", "TASKS", "IDLE", "IDLE_TIMEOUT"
    );
    for s in &sessions {
        println!(
            "{:<32} {:<16} {:<11} {:<12} {:>6} {:>7.1}s {:>12}",
            s["id"].as_str().unwrap_or("?"),
            s["pool"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            s["container"].as_str().unwrap_or("-"),
            s["tasks"].as_u64().unwrap_or(0),
            s["idle_seconds"].as_f64().unwrap_or(0.0),
            s["idle_timeout"].as_str().unwrap_or("?"),
        );
    }
    Ok(ExitCode::SUCCESS)
}
