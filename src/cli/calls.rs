//! From a parsed management command to the admin API call it makes: method, path, body, and
//! how to show the answer. Pure (no I/O), so each command's request is checked by unit tests,
//! also for endpoints a given server may not have yet.

use super::client::encode;
use super::commands::{
    AppsCommand, AuditArgs, CredentialsCommand, KeysCommand, RoutesCommand, ScopesCommand,
    UpstreamsCommand, UsageCommand,
};
use http::Method;
use serde_json::{json, Value};

/// One admin API call and what its answer is.
#[derive(Debug, PartialEq)]
pub(super) struct AdminCall {
    pub method: Method,
    /// Path and query on the admin API.
    pub path: String,
    pub body: Option<Value>,
    pub answer: Answer,
    /// What the call is about, named in a 404: `("app", id)`.
    pub subject: Option<(&'static str, String)>,
}

/// How an answer is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// A JSON array, every page of it, as a table of these rows.
    List(View),
    /// One JSON object.
    One(View),
    /// An object holding a key shown this once (`keys create`, `keys roll`).
    Issued,
    /// Text printed as it comes (CSV).
    Text,
}

/// Which columns a table of answers has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum View {
    Apps,
    Keys,
    Usage,
    Scopes,
    Routes,
    /// Upstreams, each with its targets (a table per upstream).
    Upstreams,
    Audit,
    Export,
    Credentials,
}

/// A command that cannot be sent as given: each says why and what to do.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum UsageError {
    #[error(
        "an app needs at least one scope: pass --scopes a,b (`scopegate scopes list` shows them)"
    )]
    NoScopes,
    #[error("nothing to change: pass --name, --scopes, --rate-limit PER_SECOND/BURST, --default-rate-limit, --quota PER_DAY/PER_MONTH, --default-quota, --token-quota PER_MINUTE/PER_DAY/PER_MONTH or --default-token-quota")]
    NothingToChange,
    #[error(
        "--rate-limit {0:?}: write PER_SECOND/BURST with whole numbers of at least 1, e.g. 50/100"
    )]
    BadRateLimit(String),
    #[error("--quota {0:?}: write PER_DAY/PER_MONTH with whole numbers of at least 1, or - for no limit on that window, e.g. 10000/- (not -/-)")]
    BadQuota(String),
    #[error("--token-quota {0:?}: write PER_MINUTE/PER_DAY/PER_MONTH with whole numbers of at least 1, or - for no limit on that window, e.g. 20000/-/5000000 (not -/-/-)")]
    BadTokenQuota(String),
}

pub(super) fn apps(command: AppsCommand) -> Result<AdminCall, UsageError> {
    Ok(match command {
        AppsCommand::Create {
            name,
            scopes,
            rate_limit,
            quota,
            token_quota,
        } => {
            let scopes = trimmed(scopes);
            if scopes.is_empty() {
                return Err(UsageError::NoScopes);
            }
            let mut body = json!({"name": name, "scopes": scopes});
            if let Some(limit) = rate_limit {
                body["rate_limit"] = parse_rate_limit(&limit)?;
            }
            if let Some(quota) = quota {
                body["quota"] = parse_quota(&quota)?;
            }
            if let Some(quota) = token_quota {
                body["token_quota"] = parse_token_quota(&quota)?;
            }
            call(
                Method::POST,
                "/v1/apps".into(),
                Some(body),
                Answer::One(View::Apps),
            )
        }
        AppsCommand::List { search } => call(
            Method::GET,
            with_query("/v1/apps", &[("search", search)]),
            None,
            Answer::List(View::Apps),
        ),
        AppsCommand::Update {
            id,
            name,
            scopes,
            rate_limit,
            default_rate_limit,
            quota,
            default_quota,
            token_quota,
            default_token_quota,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(n) = name {
                body.insert("name".into(), json!(n));
            }
            if let Some(s) = scopes {
                let s = trimmed(s);
                if s.is_empty() {
                    return Err(UsageError::NoScopes);
                }
                body.insert("scopes".into(), json!(s));
            }
            if let Some(limit) = rate_limit {
                body.insert("rate_limit".into(), parse_rate_limit(&limit)?);
            } else if default_rate_limit {
                body.insert("rate_limit".into(), Value::Null);
            }
            if let Some(quota) = quota {
                body.insert("quota".into(), parse_quota(&quota)?);
            } else if default_quota {
                body.insert("quota".into(), Value::Null);
            }
            if let Some(quota) = token_quota {
                body.insert("token_quota".into(), parse_token_quota(&quota)?);
            } else if default_token_quota {
                body.insert("token_quota".into(), Value::Null);
            }
            if body.is_empty() {
                return Err(UsageError::NothingToChange);
            }
            let path = format!("/v1/apps/{}", encode(&id));
            about(
                "app",
                id,
                call(
                    Method::PATCH,
                    path,
                    Some(Value::Object(body)),
                    Answer::One(View::Apps),
                ),
            )
        }
        AppsCommand::Delete { id } => {
            let path = format!("/v1/apps/{}", encode(&id));
            about(
                "app",
                id,
                call(Method::DELETE, path, None, Answer::One(View::Apps)),
            )
        }
        AppsCommand::Usage { id, days } => {
            let path = format!("/v1/apps/{}/usage?days={days}", encode(&id));
            about(
                "app",
                id,
                call(Method::GET, path, None, Answer::List(View::Usage)),
            )
        }
    })
}

pub(super) fn keys(command: KeysCommand) -> Result<AdminCall, UsageError> {
    let key_call = |method: Method, id: String, tail: &str, body: Option<Value>, answer: Answer| {
        let path = format!("/v1/keys/{}{tail}", encode(&id));
        about("key", id, call(method, path, body, answer))
    };
    Ok(match command {
        KeysCommand::Create {
            app,
            name,
            expires_in_days,
            allowed_ips,
        } => {
            let mut body = json!({"name": name});
            if let Some(days) = expires_in_days {
                body["expires_in_days"] = json!(days);
            }
            let allowed_ips = trimmed(allowed_ips);
            if !allowed_ips.is_empty() {
                body["allowed_ips"] = json!(allowed_ips);
            }
            let path = format!("/v1/apps/{}/keys", encode(&app));
            about(
                "app",
                app,
                call(Method::POST, path, Some(body), Answer::Issued),
            )
        }
        KeysCommand::List {
            app,
            search,
            status,
        } => {
            let subject = app.clone().map(|a| ("app", a));
            let path = with_query(
                "/v1/keys",
                &[("app", app), ("search", search), ("status", status)],
            );
            let mut c = call(Method::GET, path, None, Answer::List(View::Keys));
            c.subject = subject;
            c
        }
        KeysCommand::Show { id } => key_call(Method::GET, id, "", None, Answer::One(View::Keys)),
        KeysCommand::Revoke { id } => {
            key_call(Method::DELETE, id, "", None, Answer::One(View::Keys))
        }
        KeysCommand::Roll { id, grace } => key_call(
            Method::POST,
            id,
            "/roll",
            Some(json!({"grace": grace.trim()})),
            Answer::Issued,
        ),
        KeysCommand::Disable { id } => {
            key_call(Method::POST, id, "/disable", None, Answer::One(View::Keys))
        }
        KeysCommand::Enable { id } => {
            key_call(Method::POST, id, "/enable", None, Answer::One(View::Keys))
        }
        KeysCommand::Usage { id, days } => key_call(
            Method::GET,
            id,
            &format!("/usage?days={days}"),
            None,
            Answer::List(View::Usage),
        ),
    })
}

/// The admin call of a credentials command; `value` is the value read for `add` and `update`
/// (never from an argument). `rewrap` makes no admin call (`None`; see [`super::rewrap`]).
pub(super) fn credentials(command: CredentialsCommand, value: Option<&str>) -> Option<AdminCall> {
    let one = |method: Method, name: String, body: Option<Value>| {
        let path = format!("/v1/credentials/{}", encode(&name));
        about(
            "credential",
            name,
            call(method, path, body, Answer::One(View::Credentials)),
        )
    };
    Some(match command {
        CredentialsCommand::Add {
            name, description, ..
        } => {
            let mut body = json!({"name": name, "value": value.unwrap_or_default()});
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            call(
                Method::POST,
                "/v1/credentials".into(),
                Some(body),
                Answer::One(View::Credentials),
            )
        }
        CredentialsCommand::List { search } => call(
            Method::GET,
            with_query("/v1/credentials", &[("search", search)]),
            None,
            Answer::List(View::Credentials),
        ),
        CredentialsCommand::Show { name } => one(Method::GET, name, None),
        CredentialsCommand::Update {
            name, description, ..
        } => {
            let mut body = json!({"value": value.unwrap_or_default()});
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            one(Method::PUT, name, Some(body))
        }
        CredentialsCommand::Delete { name } => one(Method::DELETE, name, None),
        CredentialsCommand::Rewrap { .. } => return None,
    })
}

pub(super) fn scopes(ScopesCommand::List: ScopesCommand) -> AdminCall {
    call(
        Method::GET,
        "/v1/scopes".into(),
        None,
        Answer::List(View::Scopes),
    )
}

pub(super) fn routes(RoutesCommand::List: RoutesCommand) -> AdminCall {
    call(
        Method::GET,
        "/v1/routes".into(),
        None,
        Answer::List(View::Routes),
    )
}

pub(super) fn upstreams(UpstreamsCommand::List: UpstreamsCommand) -> AdminCall {
    call(
        Method::GET,
        "/v1/upstreams".into(),
        None,
        Answer::List(View::Upstreams),
    )
}

pub(super) fn audit(args: AuditArgs) -> AdminCall {
    let subject = args.app.clone().map(|a| ("app", a));
    let path = with_query("/v1/audit", &[("since", args.since), ("app", args.app)]);
    let mut c = call(Method::GET, path, None, Answer::List(View::Audit));
    c.subject = subject;
    c
}

pub(super) fn usage(command: UsageCommand) -> AdminCall {
    let UsageCommand::Export { from, to, format } = command;
    let answer = if format == "csv" {
        Answer::Text
    } else {
        Answer::List(View::Export)
    };
    let path = with_query(
        "/v1/usage/export",
        &[
            ("from", Some(from)),
            ("to", Some(to)),
            ("format", Some(format)),
        ],
    );
    call(Method::GET, path, None, answer)
}

/// `PER_SECOND/BURST` as the admin API's `{"per_second", "burst"}`.
fn parse_rate_limit(text: &str) -> Result<Value, UsageError> {
    let bad = || UsageError::BadRateLimit(text.to_owned());
    let (rate, burst) = text.split_once('/').ok_or_else(bad)?;
    let number = |s: &str| s.trim().parse::<u32>().ok().filter(|n| *n >= 1);
    match (number(rate), number(burst)) {
        (Some(per_second), Some(burst)) => Ok(json!({"per_second": per_second, "burst": burst})),
        _ => Err(bad()),
    }
}

/// `PER_DAY/PER_MONTH` (`-`: that window unlimited) as the admin API's `{"per_day", "per_month"}`.
fn parse_quota(text: &str) -> Result<Value, UsageError> {
    let bad = || UsageError::BadQuota(text.to_owned());
    let (day, month) = text.split_once('/').ok_or_else(bad)?;
    let window = |s: &str| match s.trim() {
        "-" => Ok(None),
        n => n
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or_else(bad),
    };
    let mut quota = serde_json::Map::new();
    if let Some(n) = window(day)? {
        quota.insert("per_day".into(), json!(n));
    }
    if let Some(n) = window(month)? {
        quota.insert("per_month".into(), json!(n));
    }
    if quota.is_empty() {
        return Err(bad());
    }
    Ok(Value::Object(quota))
}

/// `PER_MINUTE/PER_DAY/PER_MONTH` (`-`: that window unlimited) as the admin API's
/// `{"per_minute", "per_day", "per_month"}`.
fn parse_token_quota(text: &str) -> Result<Value, UsageError> {
    let bad = || UsageError::BadTokenQuota(text.to_owned());
    let parts: Vec<&str> = text.split('/').collect();
    let [minute, day, month] = parts[..] else {
        return Err(bad());
    };
    let mut quota = serde_json::Map::new();
    for (name, part) in [
        ("per_minute", minute),
        ("per_day", day),
        ("per_month", month),
    ] {
        match part.trim() {
            "-" => {}
            n => {
                let n = n.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(bad)?;
                quota.insert(name.into(), json!(n));
            }
        }
    }
    if quota.is_empty() {
        return Err(bad());
    }
    Ok(Value::Object(quota))
}

/// `a, b,,c` → `[a, b, c]`: spaces around names and empty items are dropped.
fn trimmed(items: Vec<String>) -> Vec<String> {
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `path?k=v&...` with the pairs that have a value, percent-encoded.
fn with_query(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

fn call(method: Method, path: String, body: Option<Value>, answer: Answer) -> AdminCall {
    AdminCall {
        method,
        path,
        body,
        answer,
        subject: None,
    }
}

fn about(what: &'static str, id: String, mut call: AdminCall) -> AdminCall {
    call.subject = Some((what, id));
    call
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(c: &AdminCall) -> (String, String, Option<String>) {
        (
            c.method.to_string(),
            c.path.clone(),
            c.body.as_ref().map(Value::to_string),
        )
    }

    #[test]
    fn credentials_calls_carry_the_value_only_in_the_body() {
        let add = credentials(
            CredentialsCommand::Add {
                name: "MY_API".into(),
                description: Some("team A".into()),
                value_file: None,
            },
            Some("sk-1"),
        )
        .expect("call");
        assert_eq!(
            sent(&add),
            (
                "POST".into(),
                "/v1/credentials".into(),
                Some(r#"{"description":"team A","name":"MY_API","value":"sk-1"}"#.into())
            )
        );
        let update = credentials(
            CredentialsCommand::Update {
                name: "MY_API".into(),
                description: None,
                value_file: None,
            },
            Some("sk-2"),
        )
        .expect("call");
        assert_eq!(
            sent(&update),
            (
                "PUT".into(),
                "/v1/credentials/MY_API".into(),
                Some(r#"{"value":"sk-2"}"#.into())
            )
        );
        assert_eq!(update.subject, Some(("credential", "MY_API".into())));
        let list = credentials(
            CredentialsCommand::List {
                search: Some("open ai".into()),
            },
            None,
        )
        .expect("call");
        assert_eq!(list.path, "/v1/credentials?search=open+ai");
        let delete =
            credentials(CredentialsCommand::Delete { name: "a/b".into() }, None).expect("call");
        assert_eq!(
            (delete.method, delete.path.as_str()),
            (Method::DELETE, "/v1/credentials/a%2Fb")
        );
        let rewrap = CredentialsCommand::Rewrap {
            old_key_env: "OLD".into(),
        };
        assert_eq!(credentials(rewrap, None), None);
    }

    #[test]
    fn apps_create_trims_scopes_and_needs_one() {
        let c = apps(AppsCommand::Create {
            name: "a".into(),
            scopes: vec![
                " deploy_tool".into(),
                " view_job_status ".into(),
                String::new(),
            ],
            rate_limit: Some("5/10".into()),
            quota: None,
            token_quota: None,
        })
        .expect("call");
        assert_eq!(
            sent(&c),
            (
                "POST".into(),
                "/v1/apps".into(),
                Some(r#"{"name":"a","rate_limit":{"burst":10,"per_second":5},"scopes":["deploy_tool","view_job_status"]}"#.into())
            )
        );
        let none = apps(AppsCommand::Create {
            name: "a".into(),
            scopes: vec![" ".into()],
            rate_limit: None,
            quota: None,
            token_quota: None,
        });
        assert_eq!(none, Err(UsageError::NoScopes));
    }

    #[test]
    fn apps_update_sends_a_quota_or_returns_to_the_default() {
        let update = |quota: Option<&str>, default_quota: bool| {
            apps(AppsCommand::Update {
                id: "A1".into(),
                name: None,
                scopes: None,
                rate_limit: None,
                default_rate_limit: false,
                quota: quota.map(str::to_owned),
                default_quota,
                token_quota: None,
                default_token_quota: false,
            })
        };
        let c = update(Some("1000/-"), false).expect("call");
        assert_eq!(c.body, Some(json!({"quota": {"per_day": 1000}})));
        let c = update(Some("10/300"), false).expect("call");
        assert_eq!(
            c.body,
            Some(json!({"quota": {"per_day": 10, "per_month": 300}}))
        );
        let c = update(None, true).expect("call");
        assert_eq!(c.body, Some(json!({"quota": null})));
        for bad in ["-/-", "0/5", "5", "a/b"] {
            assert_eq!(
                update(Some(bad), false),
                Err(UsageError::BadQuota(bad.into()))
            );
        }
    }

    #[test]
    fn apps_update_sends_a_token_quota_or_returns_to_the_default() {
        let update = |quota: Option<&str>, default_token_quota: bool| {
            apps(AppsCommand::Update {
                id: "A1".into(),
                name: None,
                scopes: None,
                rate_limit: None,
                default_rate_limit: false,
                quota: None,
                default_quota: false,
                token_quota: quota.map(str::to_owned),
                default_token_quota,
            })
        };
        let c = update(Some("20000/-/5000000"), false).expect("call");
        assert_eq!(
            c.body,
            Some(json!({"token_quota": {"per_minute": 20000, "per_month": 5000000}}))
        );
        let c = update(Some("-/7/-"), false).expect("call");
        assert_eq!(c.body, Some(json!({"token_quota": {"per_day": 7}})));
        let c = update(None, true).expect("call");
        assert_eq!(c.body, Some(json!({"token_quota": null})));
        for bad in ["-/-/-", "0/5/5", "5/5", "1/2/3/4", "a/b/c"] {
            assert_eq!(
                update(Some(bad), false),
                Err(UsageError::BadTokenQuota(bad.into()))
            );
        }
    }

    #[test]
    fn apps_update_sends_only_what_changes() {
        let update = |rate_limit: Option<&str>, default_rate_limit: bool| {
            apps(AppsCommand::Update {
                id: "A1".into(),
                name: None,
                scopes: None,
                rate_limit: rate_limit.map(str::to_owned),
                default_rate_limit,
                quota: None,
                default_quota: false,
                token_quota: None,
                default_token_quota: false,
            })
        };
        assert_eq!(update(None, false), Err(UsageError::NothingToChange));
        let c = update(Some("50/100"), false).expect("call");
        assert_eq!(
            sent(&c),
            (
                "PATCH".into(),
                "/v1/apps/A1".into(),
                Some(r#"{"rate_limit":{"burst":100,"per_second":50}}"#.into())
            )
        );
        assert_eq!(c.subject, Some(("app", "A1".into())));
        let c = update(None, true).expect("call");
        assert_eq!(c.body, Some(json!({"rate_limit": null})));
        for bad in ["50", "0/10", "a/b", "5/"] {
            assert_eq!(
                update(Some(bad), false),
                Err(UsageError::BadRateLimit(bad.into()))
            );
        }
    }

    #[test]
    fn key_lifecycle_calls_follow_the_contract() {
        let k = |c: KeysCommand| sent(&keys(c).expect("call"));
        assert_eq!(
            k(KeysCommand::Create {
                app: "A1".into(),
                name: "ci".into(),
                expires_in_days: Some(9),
                allowed_ips: vec!["10.0.0.0/8".into(), " 192.0.2.7".into()],
            }),
            (
                "POST".into(),
                "/v1/apps/A1/keys".into(),
                Some(
                    r#"{"allowed_ips":["10.0.0.0/8","192.0.2.7"],"expires_in_days":9,"name":"ci"}"#
                        .into()
                )
            )
        );
        let roll = keys(KeysCommand::Roll {
            id: "K1".into(),
            grace: "24h".into(),
        })
        .expect("call");
        assert_eq!(
            sent(&roll),
            (
                "POST".into(),
                "/v1/keys/K1/roll".into(),
                Some(r#"{"grace":"24h"}"#.into())
            )
        );
        assert_eq!(roll.answer, Answer::Issued);
        assert_eq!(
            k(KeysCommand::Disable { id: "K1".into() }),
            ("POST".into(), "/v1/keys/K1/disable".into(), None)
        );
        assert_eq!(
            k(KeysCommand::Enable { id: "K1".into() }),
            ("POST".into(), "/v1/keys/K1/enable".into(), None)
        );
        assert_eq!(
            k(KeysCommand::Show { id: "K1".into() }),
            ("GET".into(), "/v1/keys/K1".into(), None)
        );
        assert_eq!(
            k(KeysCommand::List {
                app: Some("A1".into()),
                search: Some("a b".into()),
                status: Some("revoked".into()),
            }),
            (
                "GET".into(),
                "/v1/keys?app=A1&search=a+b&status=revoked".into(),
                None
            )
        );
    }

    #[test]
    fn read_only_views_follow_the_contract() {
        assert_eq!(sent(&scopes(ScopesCommand::List)).1, "/v1/scopes");
        assert_eq!(sent(&routes(RoutesCommand::List)).1, "/v1/routes");
        let u = upstreams(UpstreamsCommand::List);
        assert_eq!(sent(&u), ("GET".into(), "/v1/upstreams".into(), None));
        assert_eq!(u.answer, Answer::List(View::Upstreams));
        let a = audit(AuditArgs {
            since: Some("2026-01-31T00:00:00Z".into()),
            app: Some("A1".into()),
        });
        assert_eq!(a.path, "/v1/audit?since=2026-01-31T00%3A00%3A00Z&app=A1");
        let u = usage(UsageCommand::Export {
            from: "2026-01-01".into(),
            to: "2026-01-31".into(),
            format: "csv".into(),
        });
        assert_eq!(
            u.path,
            "/v1/usage/export?from=2026-01-01&to=2026-01-31&format=csv"
        );
        assert_eq!(u.answer, Answer::Text);
    }
}
