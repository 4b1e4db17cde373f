//! The `scopegate` command line: `serve`, `check`, `demo`, `health`, and the management
//! commands (`apps`, `keys`, `scopes`, `routes`, `upstreams`, `audit`, `usage`), which call the
//! admin API.
//!
//! [`commands`] holds what clap parses, [`calls`] the admin call each command makes,
//! [`manage`] makes it and prints the answer ([`table`]); [`client`] speaks HTTP.

mod calls;
mod client;
mod commands;
mod demo;
mod health;
mod logging;
mod manage;
mod rewrap;
mod table;

use self::commands::{
    AdminArgs, AppsCommand, AuditArgs, CredentialsCommand, KeysCommand, RoutesCommand,
    ScopesCommand, UpstreamsCommand, UsageCommand,
};
use crate::config::{self, Config};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "scopegate",
    version,
    about = "An API-key and scope enforcing reverse proxy",
    after_help = "Examples:\n  scopegate check -c gateway.yaml\n  SCOPEGATE_ADMIN_TOKEN=... scopegate serve -c gateway.yaml\n  scopegate apps create --name billing --scopes deploy_tool,view_job_status\n  scopegate keys create --app APP_ID --name ci\n\nRun `scopegate COMMAND --help` for each command's flags and an example."
)]
pub struct Cli {
    /// The config file. E.g. -c /etc/scopegate/gateway.yaml
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "gateway.yaml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy, admin and metrics listeners until SIGTERM/SIGINT (then drain in-flight
    /// requests for up to `shutdown_grace`); SIGHUP reloads the config.
    #[command(
        after_help = "Example:\n  SCOPEGATE_ADMIN_TOKEN=$(cat /run/secrets/admin) scopegate serve -c /etc/scopegate/gateway.yaml"
    )]
    Serve,
    /// Validate a config: prints `ok`, or every problem as FILE:LINE:COLUMN: message (exit 1).
    #[command(after_help = "Example:\n  scopegate check -c gateway.yaml")]
    Check,
    /// Run the gateway with sample upstreams, an embedded store in a temporary folder, and a
    /// ready-made app and key; prints curl lines to try.
    #[command(after_help = "Example:\n  scopegate demo -c gateway.yaml")]
    Demo,
    /// Exit 0 when the gateway's /readyz (on metrics.listen) answers 200; for health checks.
    #[command(
        after_help = "Examples:\n  scopegate health -c /etc/scopegate/gateway.yaml\n  scopegate health --url http://127.0.0.1:8100"
    )]
    Health {
        /// The metrics listener's base URL [default: http:// + the config's metrics.listen].
        /// E.g. --url http://127.0.0.1:8100
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Manage apps through the admin API.
    #[command(after_help = "Example:\n  scopegate apps list --search billing")]
    Apps {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Manage keys through the admin API.
    #[command(after_help = "Example:\n  scopegate keys list --app 3fZk9QpLm2Xa --status active")]
    Keys {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The scopes the config defines.
    #[command(after_help = "Example:\n  scopegate scopes list")]
    Scopes {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: ScopesCommand,
    },
    /// The routes in force.
    #[command(after_help = "Example:\n  scopegate routes list")]
    Routes {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// The upstreams in force and the live state of their targets.
    #[command(after_help = "Example:\n  scopegate upstreams list")]
    Upstreams {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: UpstreamsCommand,
    },
    /// The admin writes (apps and keys created, changed, revoked...), newest first.
    #[command(
        after_help = "Example:\n  scopegate audit --since 2026-01-31T00:00:00Z --app 3fZk9QpLm2Xa"
    )]
    Audit {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        filter: AuditArgs,
    },
    /// Upstream credentials: values the gateway sends to upstreams for their callers.
    #[command(after_help = "Example:\n  scopegate credentials list --search openai")]
    Credentials {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// Usage counts across apps and keys.
    #[command(
        after_help = "Example:\n  scopegate usage export --from 2026-01-01 --to 2026-01-31 --format csv"
    )]
    Usage {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: UsageCommand,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match runtime_builder(&cli.command).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scopegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

/// `serve` and `demo` run the admin and metrics listeners and the background tasks on one
/// thread, and the proxy on its workers (`workers:`, each a single-threaded runtime of its own;
/// with one worker, this thread serves the proxy too). Other commands take the work-stealing
/// scheduler on several cores; on one core (a 1-CPU container, or pinned with `taskset`) it
/// could only add cost.
fn runtime_builder(command: &Command) -> tokio::runtime::Builder {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 || matches!(command, Command::Serve | Command::Demo) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check => check(&cli.config),
        Command::Serve => match load(&cli.config) {
            Some(config) => {
                let _log = logging::init(config.log.format);
                serve(config).await
            }
            None => ExitCode::FAILURE,
        },
        Command::Demo => match load(&cli.config) {
            Some(config) => {
                let _log = logging::init(config.log.format);
                demo::run(config).await
            }
            None => ExitCode::FAILURE,
        },
        Command::Health { url } => health::run(&cli.config, url).await,
        Command::Apps { admin, command } => {
            manage::run(&cli.config, &admin, calls::apps(command)).await
        }
        Command::Keys { admin, command } => {
            manage::run(&cli.config, &admin, calls::keys(command)).await
        }
        Command::Scopes { admin, command } => {
            manage::run(&cli.config, &admin, Ok(calls::scopes(command))).await
        }
        Command::Routes { admin, command } => {
            manage::run(&cli.config, &admin, Ok(calls::routes(command))).await
        }
        Command::Upstreams { admin, command } => {
            manage::run(&cli.config, &admin, Ok(calls::upstreams(command))).await
        }
        Command::Audit { admin, filter } => {
            manage::run(&cli.config, &admin, Ok(calls::audit(filter))).await
        }
        Command::Usage { admin, command } => {
            manage::run(&cli.config, &admin, Ok(calls::usage(command))).await
        }
        Command::Credentials { admin, command } => credentials(&cli.config, &admin, command).await,
    }
}

/// A credentials command: `rewrap` works on the store directly; the others read the value
/// (for `add` and `update`) and call the admin API.
async fn credentials(
    config: &std::path::Path,
    admin: &AdminArgs,
    command: CredentialsCommand,
) -> ExitCode {
    let value_file = match &command {
        CredentialsCommand::Rewrap { old_key_env } => {
            return rewrap::run(config, old_key_env).await;
        }
        CredentialsCommand::Add { value_file, .. }
        | CredentialsCommand::Update { value_file, .. } => Some(value_file.clone()),
        _ => None,
    };
    let value = match value_file.map(|file| rewrap::read_value(file.as_deref())) {
        Some(Ok(value)) => Some(value),
        Some(Err(e)) => {
            eprintln!("scopegate: {e}");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let value = value.as_ref().map(|v| v.as_str());
    match calls::credentials(command, value) {
        Some(call) => manage::run(config, admin, Ok(call)).await,
        None => ExitCode::FAILURE,
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for problem in &errors.problems {
                println!("{problem}");
            }
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> Option<Config> {
    match config::load(path) {
        Ok(config) => Some(config),
        Err(errors) => {
            for problem in &errors.problems {
                eprintln!("{problem}");
            }
            None
        }
    }
}

/// (identity, token) for every admin identity whose environment variable is set.
pub fn admin_tokens_from_env(config: &Config) -> Vec<(String, String)> {
    let mut tokens = Vec::new();
    for identity in &config.admin.tokens {
        match std::env::var(&identity.env) {
            Ok(token) if !token.is_empty() => tokens.push((identity.name.clone(), token)),
            _ => tracing::warn!(
                identity = %identity.name,
                env = %identity.env,
                "admin token variable is not set; this identity cannot use the admin API"
            ),
        }
    }
    tokens
}

async fn serve(config: Config) -> ExitCode {
    let tokens = admin_tokens_from_env(&config);
    // Start-up errors name the settings they are about; the file says where those are.
    let path = config.path.clone();
    let gateway = match crate::gateway::start(config, tokens).await {
        Ok(g) => g,
        Err(e) => {
            // Through the log, so that with `log.format: json` this line is JSON too.
            tracing::error!("scopegate: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    wait_for_stop_signal_reloading_on_hup(&gateway).await;
    tracing::info!("shutting down: draining in-flight requests");
    gateway.shutdown().await;
    ExitCode::SUCCESS
}

/// SIGTERM or SIGINT; SIGHUP on the way reloads the config.
async fn wait_for_stop_signal_reloading_on_hup(gateway: &crate::gateway::RunningGateway) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return wait_for_stop_signal().await;
    };
    let stop = wait_for_stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                gateway.reload();
            }
        }
    }
}

/// SIGTERM or SIGINT.
pub async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command says what it does and shows an example; every flag and argument has help
    /// with an example (`E.g.`).
    #[test]
    fn every_command_and_flag_has_help_with_an_example() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            let about = command
                .get_about()
                .map(ToString::to_string)
                .unwrap_or_default();
            let after = command
                .get_after_help()
                .map(ToString::to_string)
                .unwrap_or_default();
            if about.is_empty() || !after.contains("Example") {
                missing.push(format!("{path}: about or example"));
            }
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                if !help.contains("E.g.") {
                    missing.push(format!("{path} {id}: {help:?}"));
                }
            }
            for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
