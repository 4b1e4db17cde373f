//! The management commands as clap parses them: every command and flag with its help text and
//! an example. What each one sends is in [`super::calls`].

use clap::{Args, Subcommand};

/// Where the admin API is and how to log in (shared by every management command).
#[derive(Args, Debug, Clone, Default)]
pub struct AdminArgs {
    /// Admin API base URL [default: http:// + the config's admin.listen]. E.g. --admin-url http://127.0.0.1:8001
    #[arg(long, global = true, value_name = "URL")]
    pub admin_url: Option<String>,
    /// Read the admin token from this file (surrounding whitespace is ignored); keeps it out of
    /// the shell history and the process list. E.g. --token-file /run/secrets/scopegate_admin
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,
    /// Admin token [default: the environment variable named by admin.token_env]. E.g. --token "$TOKEN"
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print the admin API's JSON instead of a table. E.g. scopegate apps list --json
    #[arg(long, global = true)]
    pub json: bool,
    /// Show full-width tables: whole ids and every column, whatever the terminal width.
    /// E.g. scopegate keys list --wide
    #[arg(long, global = true)]
    pub wide: bool,
}

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Create an app holding some scopes.
    #[command(
        after_help = "Example:\n  scopegate apps create --name billing-agent --scopes deploy_tool,view_job_status"
    )]
    Create {
        /// The app's name (unique). E.g. --name billing-agent
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Comma-separated scopes the app holds (at least one; `scopegate scopes list` shows
        /// them; spaces are ignored). E.g. --scopes "deploy_tool, view_job_status"
        #[arg(long, value_delimiter = ',', value_name = "A,B")]
        scopes: Vec<String>,
        /// Rate limit of the app's keys, instead of the config's default. E.g. --rate-limit 20/40
        #[arg(long, value_name = "PER_SECOND/BURST")]
        rate_limit: Option<String>,
        /// Quota of the app's keys, instead of the config's default; `-` leaves a window
        /// unlimited. E.g. --quota 10000/200000 or --quota -/200000
        #[arg(long, value_name = "PER_DAY/PER_MONTH")]
        quota: Option<String>,
        /// Token quota of the app's keys on metered routes (input plus output tokens), instead
        /// of the config's default; `-` leaves a window unlimited.
        /// E.g. --token-quota 20000/-/5000000
        #[arg(long, value_name = "PER_MINUTE/PER_DAY/PER_MONTH")]
        token_quota: Option<String>,
    },
    /// List apps, optionally those whose name contains a text.
    #[command(after_help = "Example:\n  scopegate apps list --search billing")]
    List {
        /// Case-insensitive part of the name. E.g. --search billing
        #[arg(long, value_name = "TEXT")]
        search: Option<String>,
    },
    /// Change an app's name, scopes, rate limit, quota or token quota (at least one of them).
    #[command(
        after_help = "Examples:\n  scopegate apps update 3fZk9QpLm2Xa --scopes deploy_tool\n  scopegate apps update 3fZk9QpLm2Xa --rate-limit 100/200\n  scopegate apps update 3fZk9QpLm2Xa --default-rate-limit"
    )]
    Update {
        /// The app's id. E.g. 3fZk9QpLm2Xa
        id: String,
        /// The new name. E.g. --name billing-agent-v2
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The new scopes, replacing the old ones (comma-separated). E.g. --scopes deploy_tool,upload_file
        #[arg(long, value_delimiter = ',', value_name = "A,B")]
        scopes: Option<Vec<String>>,
        /// A rate limit of the app's own. E.g. --rate-limit 100/200
        #[arg(
            long,
            value_name = "PER_SECOND/BURST",
            conflicts_with = "default_rate_limit"
        )]
        rate_limit: Option<String>,
        /// Drop the app's own rate limit: its keys get the config's `rate_limit` again.
        /// E.g. --default-rate-limit
        #[arg(long)]
        default_rate_limit: bool,
        /// A quota of the app's own; `-` leaves a window unlimited. E.g. --quota 10000/-
        #[arg(
            long,
            value_name = "PER_DAY/PER_MONTH",
            conflicts_with = "default_quota"
        )]
        quota: Option<String>,
        /// Drop the app's own quota: its keys get the config's `quota` again.
        /// E.g. --default-quota
        #[arg(long)]
        default_quota: bool,
        /// A token quota of the app's own; `-` leaves a window unlimited.
        /// E.g. --token-quota -/1000000/-
        #[arg(
            long,
            value_name = "PER_MINUTE/PER_DAY/PER_MONTH",
            conflicts_with = "default_token_quota"
        )]
        token_quota: Option<String>,
        /// Drop the app's own token quota: its keys get the config's `token_quota` again.
        /// E.g. --default-token-quota
        #[arg(long)]
        default_token_quota: bool,
    },
    /// Delete an app; its keys are revoked.
    #[command(after_help = "Example:\n  scopegate apps delete 3fZk9QpLm2Xa")]
    Delete {
        /// The app's id. E.g. 3fZk9QpLm2Xa
        id: String,
    },
    /// Requests per UTC day of all the app's keys, oldest first.
    #[command(after_help = "Example:\n  scopegate apps usage 3fZk9QpLm2Xa --days 30")]
    Usage {
        /// The app's id. E.g. 3fZk9QpLm2Xa
        id: String,
        /// How many days back, today included (at most 366). E.g. --days 30
        #[arg(long, default_value_t = 7, value_name = "N")]
        days: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Issue a key for an app; prints the full key once.
    #[command(
        after_help = "Example:\n  scopegate keys create --app 3fZk9QpLm2Xa --name ci-runner --expires-in-days 90 --allowed-ips 10.0.0.0/8"
    )]
    Create {
        /// The app's id. E.g. --app 3fZk9QpLm2Xa
        #[arg(long, value_name = "APP_ID")]
        app: String,
        /// A name for the key (cannot be changed later). E.g. --name ci-runner
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Days until the key expires [default: the config's keys.default_expires_in_days].
        /// E.g. --expires-in-days 90
        #[arg(long, value_name = "D")]
        expires_in_days: Option<u32>,
        /// Client addresses or networks the key may be used from (comma-separated; default:
        /// any). E.g. --allowed-ips 10.0.0.0/8,192.0.2.7
        #[arg(long, value_delimiter = ',', value_name = "CIDR,..")]
        allowed_ips: Vec<String>,
    },
    /// List keys (never the keys themselves: ids, names, status and dates).
    #[command(
        after_help = "Examples:\n  scopegate keys list --app 3fZk9QpLm2Xa\n  scopegate keys list --status revoked --search ci"
    )]
    List {
        /// Only this app's keys. E.g. --app 3fZk9QpLm2Xa
        #[arg(long, value_name = "APP_ID")]
        app: Option<String>,
        /// Case-insensitive part of the key's name. E.g. --search ci
        #[arg(long, value_name = "TEXT")]
        search: Option<String>,
        /// Only keys in this status: active, expired, disabled or revoked. E.g. --status active
        #[arg(long, value_name = "S")]
        status: Option<String>,
    },
    /// Show one key's details.
    #[command(after_help = "Example:\n  scopegate keys show Xk3pQ9mZa2Lt")]
    Show {
        /// The key's id (the part after `sg_`). E.g. Xk3pQ9mZa2Lt
        id: String,
    },
    /// Revoke a key at once; it stays listed with status revoked.
    #[command(after_help = "Example:\n  scopegate keys revoke Xk3pQ9mZa2Lt")]
    Revoke {
        /// The key's id. E.g. Xk3pQ9mZa2Lt
        id: String,
    },
    /// Issue a replacement key (same app, name and allowed IPs) and end the old one after a
    /// grace period; prints the new key once.
    #[command(after_help = "Example:\n  scopegate keys roll Xk3pQ9mZa2Lt --grace 24h")]
    Roll {
        /// The key's id. E.g. Xk3pQ9mZa2Lt
        id: String,
        /// How long the old key keeps working (`0s` ends it at once). E.g. --grace 24h
        #[arg(long, default_value = "24h", value_name = "DURATION")]
        grace: String,
    },
    /// Disable a key (it is refused until enabled again).
    #[command(after_help = "Example:\n  scopegate keys disable Xk3pQ9mZa2Lt")]
    Disable {
        /// The key's id. E.g. Xk3pQ9mZa2Lt
        id: String,
    },
    /// Enable a disabled key.
    #[command(after_help = "Example:\n  scopegate keys enable Xk3pQ9mZa2Lt")]
    Enable {
        /// The key's id. E.g. Xk3pQ9mZa2Lt
        id: String,
    },
    /// Requests per UTC day made with the key, oldest first.
    #[command(after_help = "Example:\n  scopegate keys usage Xk3pQ9mZa2Lt --days 30")]
    Usage {
        /// The key's id. E.g. Xk3pQ9mZa2Lt
        id: String,
        /// How many days back, today included (at most 366). E.g. --days 30
        #[arg(long, default_value_t = 7, value_name = "N")]
        days: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScopesCommand {
    /// List the scopes the config defines, with their descriptions.
    #[command(after_help = "Example:\n  scopegate scopes list")]
    List,
}

#[derive(Subcommand, Debug)]
pub enum RoutesCommand {
    /// List the routes in force: methods, path pattern, scope and upstream.
    #[command(after_help = "Example:\n  scopegate routes list")]
    List,
}

#[derive(Subcommand, Debug)]
pub enum UpstreamsCommand {
    /// List each upstream's targets and their state: address, weight, health, ejection,
    /// requests in flight and open connections.
    #[command(
        after_help = "Examples:\n  scopegate upstreams list\n  scopegate upstreams list --json"
    )]
    List,
}

/// `audit`: the admin writes, newest first.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only events at or after this time (RFC 3339). E.g. --since 2026-01-31T00:00:00Z
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events about this app. E.g. --app 3fZk9QpLm2Xa
    #[arg(long, value_name = "APP_ID")]
    pub app: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum UsageCommand {
    /// Requests per app, key and UTC day over a date range.
    #[command(
        after_help = "Example:\n  scopegate usage export --from 2026-01-01 --to 2026-01-31 --format csv > january.csv"
    )]
    Export {
        /// First day (YYYY-MM-DD, UTC). E.g. --from 2026-01-01
        #[arg(long, value_name = "DATE")]
        from: String,
        /// Last day, included (YYYY-MM-DD, UTC). E.g. --to 2026-01-31
        #[arg(long, value_name = "DATE")]
        to: String,
        /// csv (date,app_id,key_id,requests,input_tokens,output_tokens) or json. E.g. --format csv
        #[arg(long, default_value = "json", value_parser = ["csv", "json"], value_name = "FORMAT")]
        format: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CredentialsCommand {
    /// Store an upstream credential. The value is read from standard input (or --value-file),
    /// never from an argument, so it stays out of the shell history and the process list; one
    /// trailing newline is dropped.
    #[command(
        after_help = "Examples:\n  printf %s \"$OPENAI_KEY\" | scopegate credentials add MY_OPENAI --description \"OpenAI, team A\"\n  scopegate credentials add MY_OPENAI --value-file /run/secrets/openai"
    )]
    Add {
        /// The credential's name: letters, digits, `_` and `-`, at most 64. E.g. MY_OPENAI
        #[arg(value_name = "NAME")]
        name: String,
        /// What it is for. E.g. --description "OpenAI, team A"
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Read the value from this file instead of standard input. E.g. --value-file /run/secrets/openai
        #[arg(long, value_name = "FILE")]
        value_file: Option<std::path::PathBuf>,
    },
    /// List credentials (masked), optionally those whose name contains a text.
    #[command(after_help = "Example:\n  scopegate credentials list --search openai")]
    List {
        /// Case-insensitive part of the name. E.g. --search openai
        #[arg(long, value_name = "TEXT")]
        search: Option<String>,
    },
    /// Show one credential (masked) and who uses it.
    #[command(after_help = "Example:\n  scopegate credentials show MY_OPENAI")]
    Show {
        /// The credential's name. E.g. MY_OPENAI
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Replace a credential's value (from standard input or --value-file); every instance
    /// forwards the new one within a second.
    #[command(
        after_help = "Example:\n  scopegate credentials update MY_OPENAI --value-file /run/secrets/openai-new"
    )]
    Update {
        /// The credential's name. E.g. MY_OPENAI
        #[arg(value_name = "NAME")]
        name: String,
        /// A new description (unchanged when left out). E.g. --description "rotated 2026-12"
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Read the value from this file instead of standard input. E.g. --value-file /run/secrets/openai-new
        #[arg(long, value_name = "FILE")]
        value_file: Option<std::path::PathBuf>,
    },
    /// Delete a credential nobody uses (refused while an upstream or an app names it).
    #[command(after_help = "Example:\n  scopegate credentials delete MY_OPENAI")]
    Delete {
        /// The credential's name. E.g. MY_OPENAI
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Re-encrypt every stored value from an old master key to the one the config names,
    /// through the store directly (stop the gateway first with the embedded store).
    #[command(
        after_help = "Example:\n  OLD_MASTER_KEY=$(cat old.key) SCOPEGATE_MASTER_KEY=$(cat new.key) scopegate credentials rewrap --old-key-env OLD_MASTER_KEY"
    )]
    Rewrap {
        /// The environment variable holding the old master key (base64). E.g. --old-key-env OLD_MASTER_KEY
        #[arg(long, value_name = "VAR")]
        old_key_env: String,
    },
}
