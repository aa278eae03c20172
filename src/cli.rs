//! The command line: `serve`, `check` and `rules eval`.
//!
//! Owns argument parsing, exit codes and what is printed. It must not contain proxy or rule
//! logic: every command calls the same code the server runs.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

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
    /// List every integration: auth style, the connection metadata it needs, rule and test
    /// counts (a markdown table; the README's provider table is this output).
    Providers(Source),
    /// Make a caller token for the proxy port: prints the token (give it to the app) and the
    /// `token_sha256` to put under `callers:` (the config never holds the token itself).
    CallerToken,
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
        Command::Providers(source) => match load(&source) {
            Ok((sets, _)) => {
                print!("{}", rules::summary::table(&sets));
                ExitCode::SUCCESS
            }
            Err(errors) => usage_error(&errors.join("\n")),
        },
        Command::CallerToken => {
            let (token, digest) = crate::callers::new_token();
            println!("token: {token}\ntoken_sha256: {digest}");
            ExitCode::SUCCESS
        }
        Command::Rules {
            command:
                RulesCommand::Eval {
                    integration,
                    source,
                },
        } => eval(&integration, &source),
    }
}

/// How long after the listeners open start-up is over: the workers' first accepts and the control
/// plane's first rounds take about a second on an idle store (measured with `bench/scale.py`).
const START_UP_SETTLES: Duration = Duration::from_secs(5);

fn serve(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let traces = match crate::traces::Traces::start(&config.telemetry, &config.upstream) {
        Ok(t) => t,
        Err(e) => {
            return fail(&format!(
                "cannot start traces (telemetry.otlp_endpoint): {e:#}"
            ))
        }
    };
    crate::telemetry::init_logging(config.log.format, traces.as_ref().map(|t| t.layer()));
    let rule_sets = match rules::load_dir(&config.rules_dir) {
        Ok(s) => s,
        Err(e) => return fail(&format!("rule files are invalid:\n{e}")),
    };
    // Signal handlers are set up before anything is served: once clients arrive, a process
    // out of file descriptors could no longer create them (and would not stop on SIGTERM).
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| {
            let stop = rt.block_on(async { Shutdown::listen() })?;
            Ok((rt, stop))
        });
    let (rt, mut stop) = match signals {
        Ok(s) => s,
        Err(e) => {
            return fail(&format!(
                "cannot listen for SIGTERM, SIGINT and SIGHUP: {e}"
            ))
        }
    };
    let app = match crate::app::App::start(&config, rule_sets) {
        Ok(app) => app,
        Err(e) => return fail(&format!("{e:#}")),
    };
    rt.spawn(crate::memory::release_startup_code_after(START_UP_SETTLES));
    while rt.block_on(stop.wait()) == Signal::Reload {
        tracing::info!("SIGHUP: reloading rule files");
        app.reload();
    }
    tracing::info!("shutting down: draining connections");
    let stopped = app.shutdown();
    // After the drain, so the last requests' spans are in the final batch.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match stopped {
        Ok(()) => {
            tracing::info!("grantd stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// SIGTERM or SIGINT: time to drain and stop; SIGHUP: reload the rule files.
struct Shutdown {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

#[derive(PartialEq)]
enum Signal {
    Stop,
    Reload,
}

impl Shutdown {
    #[cfg(unix)]
    fn listen() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    #[cfg(not(unix))]
    fn listen() -> std::io::Result<Shutdown> {
        Ok(Shutdown {})
    }

    async fn wait(&mut self) -> Signal {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

/// Loads the rule sets and evaluation limits named by `--config` or `--rules`.
fn load(source: &Source) -> Result<(BTreeMap<String, RuleSet>, EvaluationConfig), Vec<String>> {
    let (dir, eval, config) = match &source.config {
        Some(path) => {
            let config = Config::load(path).map_err(|e| vec![e.to_string()])?;
            // The config's depth and length limits, but at least the test budget's time: a
            // test checks what a rule says, not how fast a loaded CI machine runs it (speed
            // is measured in bench/).
            let eval = rules::at_least_test_budget(&config.evaluation);
            (config.rules_dir.clone(), eval, Some(config))
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
    let mut printed = outcome_json(integration, &outcome);
    if input.on == Endpoint::Token {
        // What the refresher would do: the token rules above, then RFC 6749 §5.2.
        printed["classification"] = token_classification(set, &response);
    }
    println!("{printed}");
    match outcome {
        Outcome::RuleError { .. } => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

fn token_classification(set: &RuleSet, response: &CapturedResponse) -> serde_json::Value {
    let headers: http::HeaderMap = response
        .headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                http::HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect();
    let status = http::StatusCode::from_u16(response.status).unwrap_or(http::StatusCode::OK);
    let body = bytes::Bytes::from(response.body_bytes());
    crate::connections::token::classify(set, status, &headers, &body).summary()
}

fn fail(message: &str) -> ExitCode {
    eprintln!("grantd: {message}");
    ExitCode::FAILURE
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("grantd: {message}");
    ExitCode::from(2)
}
