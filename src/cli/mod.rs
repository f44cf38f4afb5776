//! The `waas` command line: parses the CLI, loads the configuration, sets up logging
//! and calls into the library. The operator tools (`bench`, `soak`, `tail`) live here,
//! beside it, not in the library's public surface.

mod bench;
mod bench_cluster;
mod bench_http;
mod bench_onebot;
mod child;
mod null_relay;
mod soak;
mod tail;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use waas::config::Settings;

#[derive(Parser)]
#[command(
    name = "waas",
    version,
    about = "WeChat-as-a-service: signed, durable webhooks for a WeChat bot session"
)]
struct Cli {
    /// TOML config file, layered over the built-in defaults.
    #[arg(long, global = true, env = "WAAS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig,
    /// Print a fresh `whsec_` signing secret.
    Secret,
    /// Print the OpenAPI description of the HTTP API (as served at /openapi.json).
    Openapi,
    /// Sign a body for POST /v1/messages: prints the Standard Webhooks headers and a
    /// ready curl command.
    Sign {
        /// The `whsec_` secret (prefer --secret-file or WAAS_SIGNING_SECRET: a command
        /// line is visible to other users of the machine).
        #[arg(long, env = "WAAS_SIGNING_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// A file holding the `whsec_` secret.
        #[arg(long, conflicts_with = "secret")]
        secret_file: Option<PathBuf>,
        /// File holding the exact body to sign (`-` for stdin).
        #[arg(long)]
        body: PathBuf,
        /// The waas to put in the curl command.
        #[arg(long, default_value = "http://127.0.0.1:3010")]
        url: String,
    },
    /// Print live events from a running instance.
    Tail(tail::TailArgs),
    /// Run the relay for a while against a receiver that fails, times out and resets.
    Soak(soak::SoakArgs),
    /// Measure the relay against a raw HTTP baseline (run with --release).
    Bench(bench::BenchArgs),
    /// The relay that stores nothing, which `waas bench --http` and `--grpc` measure
    /// waas against (started by the bench).
    #[command(hide = true)]
    NullRelay(null_relay::NullRelayArgs),
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Secret => {
            println!("{}", waas::relay::signing::generate_secret());
            ExitCode::SUCCESS
        }
        Command::Openapi => {
            print!("{}", waas::api::openapi::spec_json());
            ExitCode::SUCCESS
        }
        Command::Sign {
            secret,
            secret_file,
            body,
            url,
        } => {
            let secret = match (secret, secret_file) {
                (_, Some(path)) => match std::fs::read_to_string(&path) {
                    Ok(s) => s.trim().to_string(),
                    Err(e) => {
                        eprintln!("error: --secret-file {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                },
                (Some(s), None) => s,
                (None, None) => {
                    eprintln!(
                        "error: no secret: pass --secret-file PATH, set WAAS_SIGNING_SECRET, or --secret whsec_… (one of auth.signing_secrets)"
                    );
                    return ExitCode::from(2);
                }
            };
            sign(&secret, &body, &url)
        }
        Command::CheckConfig => match Settings::load(cli.config.as_deref()) {
            Ok(settings) => {
                print!("{}", settings.to_redacted_toml());
                eprintln!("configuration is valid");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve => {
            let settings = match Settings::load(cli.config.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            waas::telemetry::init(&settings.log);
            let workers = serve_workers(&settings);
            runtime_with(workers, || serve(settings, cli.config))
        }
        Command::Tail(args) => runtime(|| tail::run(args)),
        Command::NullRelay(args) => runtime(|| null_relay::run(args)),
        Command::Soak(args) => {
            waas::telemetry::init(&waas::config::LogSettings {
                format: waas::config::LogFormat::Pretty,
                level: "error".into(),
            });
            runtime(|| soak::run(args))
        }
        Command::Bench(args) => {
            waas::telemetry::init(&waas::config::LogSettings {
                format: waas::config::LogFormat::Pretty,
                level: "warn".into(),
            });
            if args.http || args.grpc {
                runtime(|| bench_http::run(args))
            } else if args.cluster {
                runtime(|| bench_cluster::run(args))
            } else if args.onebot {
                runtime(|| bench_onebot::run(args))
            } else {
                runtime(|| bench::run(args))
            }
        }
    }
}

/// The runtime's worker threads for `waas serve`: `TOKIO_WORKER_THREADS` when set, else
/// one per core, less the core the SQLite store's writer thread keeps busy under load
/// (at least one). A worker more than there are cores left for them only adds thread
/// switches and cross-core wake-ups: on 2 cores, 1 worker served as many events per
/// second as 2 for 13% less CPU per event (docs/PERFORMANCE.md).
fn serve_workers(settings: &Settings) -> Option<usize> {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let writer = !waas::config::is_postgres_url(&settings.storage.url);
    Some(cores.saturating_sub(usize::from(writer)).max(1))
}

fn runtime<F: Future<Output = anyhow::Result<()>>>(f: impl FnOnce() -> F) -> ExitCode {
    runtime_with(None, f)
}

/// A multi-threaded runtime with `workers` worker threads (`None`: tokio's default, one
/// per core or `TOKIO_WORKER_THREADS`), running `f` to its end.
fn runtime_with<F: Future<Output = anyhow::Result<()>>>(
    workers: Option<usize>,
    f: impl FnOnce() -> F,
) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings, config: Option<PathBuf>) -> anyhow::Result<()> {
    let app = waas::app::Application::build(settings).await?;
    tokio::spawn(reload_on_sighup(app.app(), config));
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        // Stop first, log second: nothing that logging does may stand between a signal
        // and the shutdown.
        trigger.cancel();
        tracing::info!("shutdown requested; finishing in-flight work");
    });
    app.run(shutdown).await
}

/// SIGHUP re-reads the configuration (file and environment); a bad one is reported and
/// the running configuration kept.
async fn reload_on_sighup(app: std::sync::Arc<waas::app::App>, config: Option<PathBuf>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; configuration reload is unavailable");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        match Settings::load(config.as_deref()) {
            Ok(settings) => {
                if let Err(e) = app.reload(settings).await {
                    tracing::error!(error = %e, "configuration reload refused; keeping the running one");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the new configuration is invalid; keeping the running one")
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn sign(secret: &str, body: &std::path::Path, url: &str) -> ExitCode {
    let key = match waas::relay::signing::SigningKey::parse(secret) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: the secret: {e}");
            return ExitCode::from(2);
        }
    };
    let bytes = if body.as_os_str() == "-" {
        let mut buf = Vec::new();
        if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf) {
            eprintln!("error: cannot read stdin: {e}");
            return ExitCode::FAILURE;
        }
        buf
    } else {
        match std::fs::read(body) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: --body {}: {e}", body.display());
                return ExitCode::from(2);
            }
        }
    };
    let id = format!("msg_{}", ulid::Ulid::new());
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = key.sign(&id, ts, &bytes);
    println!("webhook-id: {id}");
    println!("webhook-timestamp: {ts}");
    println!("webhook-signature: {signature}");
    // The exact bytes must be sent: --data-binary from the same file (stdin was read
    // already, so it is written out for curl).
    let data = if body.as_os_str() == "-" {
        let path = std::env::temp_dir().join(format!("waas-signed-{id}.json"));
        if std::fs::write(&path, &bytes).is_err() {
            return ExitCode::SUCCESS;
        }
        path.display().to_string()
    } else {
        body.display().to_string()
    };
    println!();
    println!("# valid for 5 minutes; send it with:");
    println!(
        "curl -sS {}/v1/messages -H 'content-type: application/json' -H 'webhook-id: {id}' -H 'webhook-timestamp: {ts}' -H 'webhook-signature: {signature}' --data-binary @{data}",
        url.trim_end_matches('/')
    );
    ExitCode::SUCCESS
}
