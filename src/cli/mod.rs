//! The `scopegate` command line: `serve`, `check`, `demo`, and the `apps`/`keys` management
//! commands, which call the admin API.

mod client;
mod logging;
mod manage;
mod table;

use crate::config::{self, Config};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "scopegate",
    version,
    about = "An API-key and scope enforcing reverse proxy"
)]
pub struct Cli {
    /// The config file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "gateway.yaml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy, admin and metrics listeners until SIGTERM/SIGINT.
    Serve,
    /// Validate a config: prints `ok`, or each problem as FILE:LINE:COLUMN: message.
    Check,
    /// Run the gateway with sample upstreams, an embedded store in a temporary folder, and a
    /// ready-made app and key; prints curl lines to try.
    Demo,
    /// Manage apps through the admin API.
    Apps {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Manage keys through the admin API.
    Keys {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
}

/// Where the admin API is and how to log in.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// Admin API base URL (default: http:// + the config's admin.listen).
    #[arg(long, global = true)]
    pub admin_url: Option<String>,
    /// Admin token (default: the environment variable named by admin.token_env).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
    List {
        #[arg(long)]
        search: Option<String>,
    },
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
    },
    Delete {
        id: String,
    },
    /// Requests per UTC day, oldest first.
    Usage {
        id: String,
        #[arg(long, default_value_t = 7)]
        days: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    Create {
        #[arg(long)]
        app: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    List {
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        search: Option<String>,
    },
    Revoke {
        id: String,
    },
    /// Requests per UTC day, oldest first.
    Usage {
        id: String,
        #[arg(long, default_value_t = 7)]
        days: u32,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scopegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

/// The work-stealing scheduler on several cores; on one core (a 1-CPU container, or pinned
/// with `taskset`) it could only add cost, so one thread runs everything (about 18% less CPU
/// per proxied request, measured with bench/run's setup).
fn runtime_builder() -> tokio::runtime::Builder {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 {
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
                logging::init(config.log.format);
                serve(config).await
            }
            None => ExitCode::FAILURE,
        },
        Command::Demo => match load(&cli.config) {
            Some(config) => {
                logging::init(config.log.format);
                crate::demo::run(config).await
            }
            None => ExitCode::FAILURE,
        },
        Command::Apps { admin, command } => manage::apps(&cli.config, &admin, command).await,
        Command::Keys { admin, command } => manage::keys(&cli.config, &admin, command).await,
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
