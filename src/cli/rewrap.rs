//! The credentials commands that are not one admin call: reading a value (standard input or
//! `--value-file`, never an argument) and `rewrap`, which opens the configured store itself.

use crate::credentials::rewrap::rewrap;
use crate::credentials::MasterKey;
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;
use zeroize::Zeroizing;

/// The value from `file`, or from standard input; one trailing newline (`\n` or `\r\n`) is
/// dropped, so `echo` and editors that end files with one store the value as meant.
pub(super) fn read_value(file: Option<&Path>) -> Result<Zeroizing<String>, String> {
    let mut text = Zeroizing::new(String::new());
    match file {
        Some(path) => {
            let read = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text));
            read.map_err(|e| format!("{}: {e}", path.display()))?;
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("value, then Enter and Ctrl-D (it is not kept in any history):");
            }
            stdin
                .lock()
                .read_to_string(&mut text)
                .map_err(|e| format!("standard input: {e}"))?;
        }
    }
    let end = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .map_or(text.len(), str::len);
    text.truncate(end);
    Ok(text)
}

/// `scopegate credentials rewrap --old-key-env VAR`.
pub(super) async fn run(config_path: &Path, old_key_env: &str) -> ExitCode {
    match rewrap_all(config_path, old_key_env).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("scopegate: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn rewrap_all(config_path: &Path, old_key_env: &str) -> Result<ExitCode, String> {
    let config = crate::config::load(config_path).map_err(|e| e.to_string())?;
    let new = config.credentials.master_key.clone().ok_or_else(|| {
        "the config names no master key that is set (credentials.master_key_env or \
         master_key_file): that is the key values move to"
            .to_owned()
    })?;
    let old = MasterKey::from_env(old_key_env)
        .map_err(|e| format!("the old master key in ${old_key_env} {e}"))?
        .ok_or_else(|| format!("${old_key_env} (the old master key) is not set"))?;
    let store = crate::gateway::open_store(&config.store)
        .await
        .map_err(|e| {
            format!(
                "cannot open the store ({}): {e}",
                crate::gateway::describe_store(&config.store)
            )
        })?;
    let done = rewrap(&*store, &old, &new)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "rewrapped {} credential(s); {} already under the new key",
        done.moved, done.already
    );
    if done.unreadable.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "scopegate: these open under neither key and were left as they are: {}",
            done.unreadable.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}
