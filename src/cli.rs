//! The command line: `serve`, `check` and `rules eval`.
//!
//! Owns argument parsing, exit codes and what is printed. It must not contain proxy or rule
//! logic: every command calls the same code the server runs.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::config::{Config, EvaluationConfig};
use crate::proxy::Proxy;
use crate::rules::check::{evaluate_captured, outcome_json, run_tests};
use crate::rules::file::{CapturedResponse, RequestSpec};
use crate::rules::{self, Endpoint, Outcome, RuleSet};

#[derive(Parser)]
#[command(
    name = "grantd",
    version,
    about = "Egress sidecar that injects OAuth tokens and turns lying provider errors into honest HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the config and every rule file, compile every expression, run every rule test.
    Check(Source),
    /// Work with rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Evaluate one captured response (JSON on stdin) and print the verdict as JSON.
    Eval {
        /// The integration whose rules to run, e.g. `slack`.
        integration: String,
        #[command(flatten)]
        source: Source,
    },
}

#[derive(Args)]
#[group(required = false, multiple = false)]
struct Source {
    /// A grantd.yaml; its rules_dir and evaluation limits are used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// A directory of rule files (default: ./rules).
    #[arg(long)]
    rules: Option<PathBuf>,
}

/// Entry point; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Check(source) => check(&source),
        Command::Rules {
            command:
                RulesCommand::Eval {
                    integration,
                    source,
                },
        } => eval(&integration, &source),
    }
}

fn serve(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    crate::telemetry::init_logging(config.log.format);
    let rule_sets = match rules::load_dir(&config.rules_dir) {
        Ok(s) => s,
        Err(e) => return fail(&format!("rule files are invalid:\n{e}")),
    };
    match run_workers(&config, rule_sets) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// Thread per core, like nginx's workers: every worker is a single-threaded runtime with its
/// own SO_REUSEPORT listener and upstream pool, so a request and its upstream connection never
/// cross threads (no cross-thread wake-ups; measured no worse than one multi-threaded runtime,
/// within noise). The main thread waits for SIGTERM/SIGINT.
fn run_workers(config: &Config, rule_sets: BTreeMap<String, RuleSet>) -> anyhow::Result<()> {
    let proxy = Arc::new(Proxy::new(config, rule_sets)?);
    let listeners = bind_workers(config.listen, config.workers)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let local = listeners[0].local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut threads = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (proxy, mut stop) = (proxy.clone(), stop_rx.clone());
        let thread = std::thread::Builder::new()
            .name(format!("grantd-worker-{i}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    proxy
                        .serve(listener, async move {
                            let _ = stop.wait_for(|s| *s).await;
                        })
                        .await;
                    anyhow::Ok(())
                })
            })?;
        threads.push(thread);
    }
    let integrations: Vec<&str> = proxy.integrations().collect();
    tracing::info!(listen = %local, workers = config.workers, integrations = ?integrations, "grantd proxy listening");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(shutdown_signal());
    tracing::info!("shutting down: draining connections");
    let _ = stop_tx.send(true);
    for thread in threads {
        match thread.join() {
            Ok(result) => result?,
            Err(_) => anyhow::bail!("a worker thread panicked"),
        }
    }
    tracing::info!("grantd stopped");
    Ok(())
}

/// `n` listening sockets on one address. With port 0 the first socket picks the port and
/// the others join it.
fn bind_workers(
    addr: std::net::SocketAddr,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    // SO_REUSEPORT would let a second grantd on this port silently share the traffic; a plain
    // bind first makes "address in use" an error as usual.
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut addr = addr;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Loads the rule sets and evaluation limits named by `--config` or `--rules`.
fn load(source: &Source) -> Result<(BTreeMap<String, RuleSet>, EvaluationConfig), Vec<String>> {
    let (dir, eval, config) = match &source.config {
        Some(path) => {
            let config = Config::load(path).map_err(|e| vec![e.to_string()])?;
            (
                config.rules_dir.clone(),
                config.evaluation.clone(),
                Some(config),
            )
        }
        None => (
            source
                .rules
                .clone()
                .unwrap_or_else(|| PathBuf::from("rules")),
            rules::default_budget(),
            None,
        ),
    };
    let sets = rules::load_dir(&dir).map_err(|e| e.0)?;
    if let Some(config) = config {
        // Builds routes and the TLS client exactly as `serve` would, catching bad
        // overrides and CA bundles before deployment.
        Proxy::new(&config, sets.clone()).map_err(|e| vec![format!("config: {e:#}")])?;
    }
    Ok((sets, eval))
}

fn check(source: &Source) -> ExitCode {
    let (sets, eval) = match load(source) {
        Ok(loaded) => loaded,
        Err(errors) => {
            for e in &errors {
                println!("error: {e}");
            }
            println!("0 passed, {} failed", errors.len());
            return ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for set in sets.values() {
        println!(
            "{}: {} rules, {} tests",
            set.file,
            set.rules.len(),
            set.tests.len()
        );
        for result in run_tests(set, &eval) {
            match &result.failure {
                None => {
                    passed += 1;
                    println!("ok   {}:{} {}", result.file, result.line, result.name);
                }
                Some(why) => {
                    failed += 1;
                    println!(
                        "FAIL {}:{} {}: {why}",
                        result.file, result.line, result.name
                    );
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What `grantd rules eval` reads on stdin.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalInput {
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: serde_json::Value,
    /// `api` (default) or `token`.
    #[serde(default, alias = "endpoint")]
    on: Endpoint,
    #[serde(default)]
    request: Option<RequestSpec>,
}

fn eval(integration: &str, source: &Source) -> ExitCode {
    let (sets, eval) = match load(source) {
        Ok(loaded) => loaded,
        Err(errors) => return usage_error(&errors.join("\n")),
    };
    let Some(set) = sets.get(integration) else {
        let known: Vec<&str> = sets.keys().map(String::as_str).collect();
        return usage_error(&format!(
            "no rule file for integration `{integration}`; known: {}",
            known.join(", ")
        ));
    };
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        return usage_error(&format!("cannot read stdin: {e}"));
    }
    let input: EvalInput = match serde_json::from_str(&text) {
        Ok(i) => i,
        Err(e) => {
            return usage_error(&format!(
                "stdin must be one JSON object {{\"status\": 200, \"headers\": {{...}}, \"body\": ...}}: {e}"
            ))
        }
    };
    let request = input.request.unwrap_or(RequestSpec {
        method: "GET".into(),
        path: "/".into(),
    });
    let response = CapturedResponse {
        status: input.status,
        headers: input.headers,
        body: input.body,
    };
    let outcome = evaluate_captured(set, input.on, &request, &response, &eval);
    println!("{}", outcome_json(integration, &outcome));
    match outcome {
        Outcome::RuleError { .. } => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("grantd: {message}");
    ExitCode::FAILURE
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("grantd: {message}");
    ExitCode::from(2)
}
