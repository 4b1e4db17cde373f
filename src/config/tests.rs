//! Tests of `load`/`parse`: the example file, defaults, and one broken snippet per validation rule,
//! each checked for its line, column and field name.

#![allow(clippy::unwrap_used)]

use super::position::PositionIndex;
use super::validate::{route_problems, Check};
use super::*;
use crate::routing::{Access, MethodSet, RouteProblem};
use http::Method;

const FILE: &str = "/etc/scopegate/gateway.yaml";

/// The smallest valid config: one upstream, one public route.
const MIN: &str = "\
listen: 127.0.0.1:8080
upstreams:
  tools:
    url: http://127.0.0.1:7001
routes:
  - method: GET
    path: /health
    scope: public
    upstream: tools
";

fn ok(yaml: &str) -> Config {
    match parse(Path::new(FILE), yaml) {
        Ok(config) => config,
        Err(e) => panic!("refused:\n{e}\n--- yaml:\n{yaml}"),
    }
}

fn problems(yaml: &str) -> Vec<Problem> {
    match parse(Path::new(FILE), yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.problems,
    }
}

/// Exactly one problem, at `line`:`column`, whose message contains each of `parts`.
fn one(yaml: &str, line: usize, column: usize, parts: &[&str]) {
    let all = problems(yaml);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_at(&all[0], line, column, parts);
}

fn assert_at(p: &Problem, line: usize, column: usize, parts: &[&str]) {
    assert_eq!(p.file, Path::new(FILE));
    assert_eq!((p.line, p.column), (Some(line), Some(column)), "{p}");
    for part in parts {
        assert!(p.message.contains(part), "{p:?} lacks {part:?}");
    }
}

/// MIN with `extra` appended (top-level sections).
fn min_plus(extra: &str) -> String {
    format!("{MIN}{extra}")
}

/// MIN's route replaced by `route` (lines of one `- ...` item, indented two spaces), plus a scope.
fn with_route(route: &str) -> String {
    format!(
        "listen: 127.0.0.1:8080\n\
         scopes:\n  deploy_tool: Deploy a tool\n\
         upstreams:\n  tools:\n    url: http://127.0.0.1:7001\n\
         routes:\n{route}"
    )
}
// with_route puts the route's first line on line 8.

#[test]
fn example_file_parses() {
    let c = ok(include_str!("../../gateway.yaml"));
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8001");
    assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:8100");
    assert_eq!(c.scopes.len(), 14);
    assert_eq!(c.scopes[0].0, "deploy_tool");
    assert_eq!(c.scopes[13].0, "view_job_status");
    let names: Vec<&str> = c.upstreams.iter().map(|u| &*u.name).collect();
    assert_eq!(names, ["tools", "models", "guardrails"]);
    // Two model replicas, checked; a stream never cut while it flows.
    let models = &c.upstreams[1];
    assert_eq!(models.targets.len(), 2);
    assert_eq!(models.timeouts.whole, None);
    assert_eq!(models.timeouts.read, Some(Duration::from_secs(60)));
    assert_eq!(models.timeouts.header, Duration::from_secs(120));
    assert!(models.health.is_some());
    assert_eq!(c.route_specs.len(), 17);
    let files = c
        .route_specs
        .iter()
        .find(|r| r.path == "/api/v1/files")
        .unwrap();
    assert_eq!(files.max_body, Some(512 << 20));
    let health = c.route_specs.last().unwrap();
    assert_eq!(health.access, Access::Public);
    assert_eq!(health.methods, MethodSet::Only(vec![Method::GET]));
    assert_eq!(
        c.route_specs[10].methods,
        MethodSet::Only(vec![Method::GET, Method::HEAD])
    );
    assert_eq!(c.route_specs[0].access, Access::Scope("deploy_tool".into()));
    assert_eq!(c.store.path, Path::new("/etc/scopegate/./data"));
    assert_eq!(c.store.redis, None);
    assert_eq!(c.limits, Limits::default());
}

#[test]
fn defaults_apply_when_sections_are_absent() {
    let c = ok(MIN);
    assert_eq!(c.path, Path::new(FILE));
    assert!(c.tls.is_none());
    assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
    assert_eq!(
        c.admin.tokens,
        [AdminIdentity {
            name: "admin".into(),
            env: DEFAULT_ADMIN_TOKEN_ENV.into(),
            role: Role::Admin,
        }]
    );
    assert_eq!(c.metrics.listen.to_string(), DEFAULT_METRICS_LISTEN);
    assert_eq!(c.store.path, Path::new("/etc/scopegate/data"));
    assert_eq!(c.store.timeout, Duration::from_millis(250));
    assert_eq!(c.cache.ttl, Duration::from_secs(30));
    assert_eq!(c.cache.max_entries, 100_000);
    assert_eq!((c.rate_limit.per_second, c.rate_limit.burst), (50, 100));
    assert!(c.scopes.is_empty());
    assert_eq!(c.upstreams[0].timeouts.whole, Some(Duration::from_secs(30)));
    assert_eq!(c.upstreams[0].path_prefix, "");
    assert_eq!(c.limits.max_body, 10 << 20);
    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));
}

#[test]
fn every_optional_key_is_read() {
    let c = ok(&min_plus(
        "\
admin:
  tokens:
    zoe: ZOE_TOKEN
    alice: ALICE_TOKEN
store:
  redis: redis://10.1.2.3:6379
  path: /var/lib/scopegate
  timeout: 1s
cache: {ttl: 5s}
rate_limit: {per_second: 5, burst: 7}
limits:
  max_connections: 10
  max_uri_bytes: 100
  max_header_bytes: 200
  max_body: 1000
  header_read_timeout: 2s
  idle_timeout: 3m
  send_timeout: 45s
  trusted_proxies: [10.0.0.0/8, 192.0.2.7, 'fd00::/8']
shutdown_grace: 0s
",
    ));
    // `tls` paths (read and checked at load) are covered with real files in tests/tls.rs.
    let names: Vec<(&str, &str)> = c
        .admin
        .tokens
        .iter()
        .map(|t| (t.name.as_str(), t.env.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("admin", "SCOPEGATE_ADMIN_TOKEN"),
            ("zoe", "ZOE_TOKEN"),
            ("alice", "ALICE_TOKEN")
        ]
    );
    assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
    assert_eq!(c.store.redis.as_deref(), Some("redis://10.1.2.3:6379"));
    assert_eq!(c.store.path, Path::new("/var/lib/scopegate"));
    assert_eq!(c.store.timeout, Duration::from_secs(1));
    assert_eq!(c.cache.ttl, Duration::from_secs(5));
    assert_eq!(c.cache.max_entries, DEFAULT_CACHE_MAX_ENTRIES);
    assert_eq!((c.rate_limit.per_second, c.rate_limit.burst), (5, 7));
    let l = c.limits;
    assert_eq!(
        (l.max_connections, l.max_uri_bytes, l.max_header_bytes),
        (10, 100, 200)
    );
    assert_eq!(l.max_body, 1000);
    assert_eq!(l.header_read_timeout, Duration::from_secs(2));
    assert_eq!(l.idle_timeout, Duration::from_secs(180));
    assert_eq!(l.send_timeout, Duration::from_secs(45));
    let nets: Vec<String> = l
        .trusted_proxies
        .iter()
        .map(|(a, n)| format!("{a}/{n}"))
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
    assert_eq!(c.shutdown_grace, Duration::ZERO);
}

#[test]
fn listen_addresses_must_parse() {
    one(
        &MIN.replace("127.0.0.1:8080", "localhost:8080"),
        1,
        9,
        &["listen: \"localhost:8080\" is not an IP:PORT address"],
    );
    one(
        &min_plus("admin:\n  listen: 8001\n"),
        11,
        11,
        &["admin.listen:"],
    );
    one(
        &min_plus("metrics:\n  listen: 127.0.0.1\n"),
        11,
        11,
        &["metrics.listen:"],
    );
    one(
        &min_plus("metrics:\n  listen: 127.0.0.1:8080\n"),
        11,
        11,
        &["metrics.listen: 127.0.0.1:8080 is already used by `listen`"],
    );
}

#[test]
fn upstream_url_must_be_absolute_http() {
    for (url, why) in [
        ("127.0.0.1:7001", "http:// or https://"),
        ("ftp://files.internal", "http:// or https://"),
        ("http://127.0.0.1:7001/x?debug=1", "query"),
        ("http:///nohost", ""),
    ] {
        one(
            &MIN.replace("http://127.0.0.1:7001", url),
            4,
            10,
            &["upstreams.tools.url:", why],
        );
    }
    let c = ok(&MIN.replace("http://127.0.0.1:7001", "https://tools.internal/base/"));
    assert_eq!(c.upstreams[0].path_prefix, "/base");
    assert_eq!(c.upstreams[0].targets[0].scheme, http::uri::Scheme::HTTPS);
    one(
        &MIN.replace("7001\n", "7001\n    timeout: 0s\n"),
        5,
        14,
        &["upstreams.tools.timeout: must be longer than zero"],
    );
}

#[test]
fn scope_names_are_checked_and_public_is_reserved() {
    one(
        &min_plus("scopes:\n  Deploy Tool: Deploy a tool\n"),
        11,
        3,
        &["scopes.Deploy Tool:", "a-z"],
    );
    one(
        &min_plus("scopes:\n  ok_scope: fine\n  public: Everyone\n"),
        12,
        3,
        &["scopes.public:", "reserved"],
    );
    one(
        &min_plus("scopes:\n  deploy_tool: ''\n"),
        11,
        16,
        &["scopes.deploy_tool: needs a description"],
    );
}

#[test]
fn route_methods() {
    let route = |method: &str| {
        with_route(&format!(
            "  - method: {method}\n    path: /x\n    scope: deploy_tool\n    upstream: tools\n"
        ))
    };
    one(
        &route("get"),
        8,
        13,
        &["routes[0].method:", "upper-case (GET)"],
    );
    one(&route("CONNECT"), 8, 13, &["routes[0].method:", "CONNECT"]);
    one(
        &route("[GET, TRACE]"),
        8,
        19,
        &["routes[0].method[1]:", "TRACE"],
    );
    one(
        &route("[GET, '*']"),
        8,
        19,
        &["routes[0].method[1]:", "`*` stands alone"],
    );
    one(
        &route("[GET, GET]"),
        8,
        19,
        &["routes[0].method[1]: GET is listed twice"],
    );
    one(
        &route("[]"),
        8,
        13,
        &["routes[0].method: the list of methods is empty"],
    );
    one(
        &route("{a: b}"),
        8,
        13,
        &["routes[0].method: must be a method"],
    );
    let c = ok(&route("'*'"));
    assert_eq!(c.route_specs[0].methods, MethodSet::Any);
    let c = ok(&route("\n      - PUT\n      - PATCH"));
    assert_eq!(
        c.route_specs[0].methods,
        MethodSet::Only(vec![Method::PUT, Method::PATCH])
    );
}

#[test]
fn route_paths() {
    let route = |path: &str| {
        with_route(&format!(
            "  - method: GET\n    path: {path}\n    scope: deploy_tool\n    upstream: tools\n"
        ))
    };
    for (path, why) in [
        ("api/v1/x", "must start with `/`"),
        ("/x?a=1", "`?`"),
        ("/x%2Fy", "`%`"),
        ("'/x#y'", "`#`"),
        ("/tools/v{id}", "whole segment"),
        ("/tools/{1d}", "identifier"),
        ("/a/{id}/b/{id}", "{id} appears twice"),
    ] {
        one(&route(path), 9, 11, &["routes[0].path:", why]);
    }
}

#[test]
fn route_references_must_be_defined() {
    let yaml = with_route(
        "  - method: GET
    path: /a
    scope: deploy_tool
    upstream: tools
  - method: GET
    path: /b
    scope: public
    upstream: tools
  - method: POST
    path: /c
    scope: deploy_tol
    upstream: toolz
",
    );
    let all = problems(&yaml);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_at(
        &all[0],
        18,
        12,
        &["routes[2].scope: scope \"deploy_tol\" is not defined"],
    );
    assert_at(
        &all[1],
        19,
        15,
        &["routes[2].upstream: upstream \"toolz\" is not defined"],
    );
}

#[test]
fn route_max_body_and_sizes() {
    let route = |size: &str| {
        with_route(&format!(
            "  - method: POST\n    path: /f\n    scope: deploy_tool\n    upstream: tools\n    max_body: {size}\n"
        ))
    };
    one(
        &route("lots"),
        12,
        15,
        &["routes[0].max_body:", "not a size"],
    );
    one(&route("-1"), 12, 15, &["routes[0].max_body:"]);
    one(&route("[1]"), 12, 15, &["routes[0].max_body:"]);
    assert_eq!(
        ok(&route("512KiB")).route_specs[0].max_body,
        Some(512 << 10)
    );
    assert_eq!(ok(&route("1000")).route_specs[0].max_body, Some(1000));
    assert_eq!(ok(&route("1MB")).route_specs[0].max_body, Some(1_000_000));
    one(
        &min_plus("limits:\n  max_body: 10 MegaBytes\n"),
        11,
        13,
        &["limits.max_body:"],
    );
}

#[test]
fn route_allow_semicolons() {
    let route = |path: &str, extra: &str| {
        with_route(&format!(
            "  - method: GET\n    path: {path}\n    scope: deploy_tool\n    upstream: tools\n{extra}"
        ))
    };
    assert!(!ok(&route("/f/{name}", "")).route_specs[0].allow_semicolons);
    let allowed = ok(&route("/f/{name}", "    allow_semicolons: true\n"));
    assert!(allowed.route_specs[0].allow_semicolons);
    one(
        &route("/f/{name}", "    allow_semicolons: sure\n"),
        12,
        23,
        &["routes[0].allow_semicolons:", "boolean"],
    );
    one(
        &route("/f/{name}", "    allow_semicolon: true\n"),
        12,
        5,
        &["unknown field `allow_semicolon`", "`allow_semicolons`"],
    );
    // A pattern with `;` could match nothing without the flag.
    one(
        &route("/f/a;v=1", ""),
        9,
        11,
        &["routes[0].path:", "allow_semicolons: true"],
    );
    assert!(ok(&route("/f/a;v=1", "    allow_semicolons: true\n")).route_specs[0].allow_semicolons);
}

#[test]
fn numeric_limits() {
    one(
        &min_plus("rate_limit:\n  per_second: 0\n  burst: 10\n"),
        11,
        15,
        &["rate_limit.per_second: must be at least 1"],
    );
    one(
        &min_plus("rate_limit: {per_second: 1, burst: 0}\n"),
        10,
        36,
        &["rate_limit.burst: must be at least 1"],
    );
    one(
        &min_plus("cache:\n  max_entries: 0\n"),
        11,
        16,
        &["cache.max_entries: must be at least 1"],
    );
    one(
        &min_plus("cache:\n  ttl: 0s\n"),
        11,
        8,
        &["cache.ttl: must be longer than zero"],
    );
    one(
        &min_plus("store:\n  timeout: soon\n"),
        11,
        12,
        &["store.timeout:", "\"soon\" is not a duration"],
    );
    one(
        &min_plus("limits:\n  max_connections: 0\n"),
        11,
        20,
        &["limits.max_connections: must be at least 1"],
    );
    one(
        &min_plus("limits:\n  idle_timeout: 5\n"),
        11,
        17,
        &["limits.idle_timeout:"],
    );
    one(
        &min_plus("limits:\n  send_timeout: 0s\n"),
        11,
        17,
        &["limits.send_timeout: must be longer than zero"],
    );
    one(
        &min_plus("limits:\n  trusted_proxies:\n    - 10.0.0.0/8\n    - 10.0.0.0/99\n"),
        13,
        7,
        &["limits.trusted_proxies[1]:", "prefix length"],
    );
    one(
        &min_plus("shutdown_grace: forever\n"),
        10,
        17,
        &["shutdown_grace:"],
    );
    one(
        &min_plus("workers: 0\n"),
        10,
        10,
        &["workers: must be between 1 and 1024"],
    );
}

#[test]
fn workers_default_to_the_cpu_count() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(ok(&min_plus("")).workers, cpus);
    assert_eq!(ok(&min_plus("workers: 3\n")).workers, 3);
}

#[test]
fn admin_tokens_take_a_role() {
    let c = ok(&min_plus(
        "\
admin:
  tokens:
    alice: ALICE_TOKEN
    ci: {env: CI_TOKEN, role: operator}
    viewer:
      env: VIEW_TOKEN
      role: read
    boss: {env: BOSS_TOKEN, role: admin}
    plain: {env: PLAIN_TOKEN}
",
    ));
    let roles: Vec<(&str, &str, Role)> = c
        .admin
        .tokens
        .iter()
        .map(|t| (t.name.as_str(), t.env.as_str(), t.role))
        .collect();
    assert_eq!(
        roles,
        [
            ("admin", "SCOPEGATE_ADMIN_TOKEN", Role::Admin),
            ("alice", "ALICE_TOKEN", Role::Admin),
            ("ci", "CI_TOKEN", Role::Operator),
            ("viewer", "VIEW_TOKEN", Role::Read),
            ("boss", "BOSS_TOKEN", Role::Admin),
            ("plain", "PLAIN_TOKEN", Role::Admin),
        ]
    );
}

#[test]
fn admin_token_roles_are_checked_where_they_are_written() {
    one(
        &min_plus("admin:\n  tokens:\n    ci: {env: CI_TOKEN, role: superuser}\n"),
        12,
        31,
        &[
            "admin.tokens.ci.role:",
            "unknown role \"superuser\"",
            "admin, operator or read",
        ],
    );
    one(
        &min_plus("admin:\n  tokens:\n    ci:\n      env: CI_TOKEN\n      role: Admin\n"),
        14,
        13,
        &["admin.tokens.ci.role:", "unknown role \"Admin\""],
    );
    one(
        &min_plus("admin:\n  tokens:\n    ci: {env: CI-TOKEN, role: read}\n"),
        12,
        15,
        &["admin.tokens.ci.env:", "environment variable"],
    );
    one(
        &min_plus("admin:\n  tokens:\n    ci: {env: CI_TOKEN, rol: read}\n"),
        12,
        25,
        &["unknown field `rol`"],
    );
}

#[test]
fn admin_tokens_and_store_url() {
    one(
        &min_plus("admin:\n  tokens:\n    admin: OTHER_TOKEN\n"),
        12,
        5,
        &["admin.tokens.admin:"],
    );
    one(
        &min_plus("admin:\n  tokens:\n    alice: ALICE-TOKEN\n"),
        12,
        12,
        &["admin.tokens.alice:", "environment variable"],
    );
    one(
        &min_plus("admin:\n  tokens:\n    alice: SCOPEGATE_ADMIN_TOKEN\n"),
        12,
        12,
        &["admin.tokens.alice: SCOPEGATE_ADMIN_TOKEN is already the token of `admin`"],
    );
    one(
        &min_plus("admin:\n  token_env: 'bad var'\n"),
        11,
        14,
        &["admin.token_env:"],
    );
    one(
        &min_plus("store:\n  redis: http://127.0.0.1:6379\n"),
        11,
        10,
        &["store.redis:"],
    );
    let malformed = problems(&min_plus(
        "store:\n  redis: 'redis://user:hunter2@h:notaport'\n",
    ));
    assert_eq!(malformed.len(), 1, "{malformed:#?}");
    assert_at(
        &malformed[0],
        11,
        10,
        &[
            "store.redis:",
            "redis://user:***@h:notaport",
            "not a usable Redis URL",
        ],
    );
    assert!(!malformed[0].to_string().contains("hunter2"));
}

#[test]
fn every_problem_is_reported() {
    let yaml = "\
listen: 127.0.0.1:80800
scopes:
  public: Everyone
upstreams:
  tools:
    url: tools:7001
routes:
  - method: get
    path: x
    scope: nope
    upstream: tools
";
    let all = problems(yaml);
    let got: Vec<(Option<usize>, Option<usize>)> = all.iter().map(|p| (p.line, p.column)).collect();
    assert_eq!(
        got,
        [
            (Some(1), Some(9)),
            (Some(3), Some(3)),
            (Some(6), Some(10)),
            (Some(8), Some(13)),
            (Some(9), Some(11)),
            (Some(10), Some(12)),
        ],
        "{all:#?}"
    );
    // The route naming the broken (but declared) upstream gets no second problem.
    let text = ConfigErrors { problems: all }.to_string();
    assert!(text.starts_with(&format!("{FILE}:1:9: listen: ")), "{text}");
    assert_eq!(text.lines().count(), 6);
}

#[test]
fn unknown_keys_use_serde_positions() {
    one(
        &MIN.replace("listen:", "liste:"),
        1,
        1,
        &["unknown field `liste`", "expected one of", "`listen`"],
    );
    one(
        &MIN.replace("    upstream: tools", "    upstreem: tools"),
        9,
        5,
        &["routes[0]: unknown field `upstreem`"],
    );
    one(
        &MIN.replace("    url:", "    uri:"),
        4,
        5,
        &["upstreams.tools: unknown field `uri`"],
    );
}

#[test]
fn yaml_errors_stop_with_one_problem() {
    // Syntax: a tab-less but mis-indented mapping.
    let all = problems("listen: 127.0.0.1:8080\n  upstreams: x\n");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(all[0].line.is_some() && all[0].column.is_some(), "{all:#?}");
    assert!(!all[0].message.contains(" at line "), "{all:#?}");
    // Type.
    one(
        &min_plus("cache:\n  max_entries: lots\n"),
        11,
        16,
        &["cache.max_entries: invalid type"],
    );
    // Missing required key.
    let all = problems("listen: 127.0.0.1:8080\nupstreams: {}\n");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].message.contains("missing field `routes`"),
        "{all:#?}"
    );
    // Empty file.
    let all = problems("  \n");
    assert_eq!(all[0].to_string(), format!("{FILE}: the file is empty"));
}

#[test]
fn repeated_names_are_reported_at_the_second_one() {
    one(
        &min_plus("scopes:\n  a: A\n  b: B\n  a: again\n"),
        13,
        3,
        &["scopes.a: \"a\" is defined twice"],
    );
    one(
        &MIN.replace(
            "routes:",
            "  tools:\n    url: http://127.0.0.1:7009\nroutes:",
        ),
        5,
        3,
        &["upstreams.tools: \"tools\" is defined twice"],
    );
    // A repeated field of a fixed section is serde_yaml's error.
    let all = problems(&MIN.replace("routes:", "listen: 127.0.0.1:1\nroutes:"));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].message.contains("duplicate field `listen`"),
        "{all:#?}"
    );
}

#[test]
fn required_sections_must_not_be_empty() {
    let all = problems("listen: 127.0.0.1:8080\nupstreams: {}\nroutes: []\n");
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_at(&all[0], 2, 12, &["upstreams: at least one upstream"]);
    assert_at(&all[1], 3, 9, &["routes: at least one route"]);
}

#[test]
fn route_table_problems_point_at_the_route_path() {
    let index = PositionIndex::build(MIN);
    let mut c = Check::new(Path::new(FILE), &index);
    let problems = vec![RouteProblem {
        index: 0,
        message: "duplicate route: GET /health is already defined".into(),
    }];
    route_problems(&mut c, problems, &[0]);
    assert_eq!(c.problems.len(), 1);
    assert_at(
        &c.problems[0],
        7,
        11,
        &["routes[0].path: duplicate route: GET /health is already defined"],
    );
}

#[test]
fn load_reads_files_and_reports_unreadable_ones() {
    let missing = Path::new("/nonexistent/scopegate/gateway.yaml");
    let err = match load(missing) {
        Ok(_) => panic!("loaded a missing file"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        text.starts_with("/nonexistent/scopegate/gateway.yaml: cannot read: "),
        "{text}"
    );
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml");
    let c = load(&example).unwrap();
    assert_eq!(c.path, example);
}

#[test]
fn key_problems_and_semantic_problems_are_reported_together() {
    let yaml = MIN
        .replace("listen: 127.0.0.1:8080", "listen: nowhere\nlistn: 1")
        .replace("    scope: public", "    scope: public\n    max_bdy: 1KiB")
        .replace(
            "    url: http://127.0.0.1:7001",
            "    url: http://127.0.0.1:7001\n    timeout: soon",
        )
        + "cache:\n  max_entries: lots\n  ttl: 0s\nlog:\n  format: xml\n";
    let all = problems(&yaml);
    let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 7, "{shown:#?}");
    assert_at(&all[0], 1, 9, &["listen: \"nowhere\" is not an IP:PORT"]);
    assert_at(&all[1], 2, 1, &["unknown field `listn`"]);
    assert_at(
        &all[2],
        6,
        14,
        &["upstreams.tools.timeout: \"soon\" is not a duration"],
    );
    assert_at(&all[3], 11, 5, &["routes[0]: unknown field `max_bdy`"]);
    assert_at(&all[4], 14, 16, &["cache.max_entries: invalid type"]);
    assert_at(&all[5], 15, 8, &["cache.ttl: must be longer than zero"]);
    assert_at(&all[6], 17, 11, &["log.format: unknown variant `xml`"]);
}

#[test]
fn a_syntax_error_is_reported_with_the_problems_of_the_rest_of_the_file() {
    // Line 4 is indented one space too far (a YAML syntax error); route 0 names an upstream
    // that does not exist and line 2 has an unknown key: all three in one run, in file order.
    let yaml = "\
listen: 127.0.0.1:8080
lisen: 127.0.0.1:8081
cache:
  ttl: 30s
   max_entries: 10
upstreams:
  tools:
    url: http://127.0.0.1:7001
routes:
  - method: GET
    path: /health
    scope: public
    upstream: nowhere
";
    let all = problems(yaml);
    let lines: Vec<Option<usize>> = all.iter().map(|p| p.line).collect();
    let text: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(lines, [Some(2), Some(5), Some(13)], "{text:#?}");
    assert!(text[0].contains("lisen"), "{}", text[0]);
    assert!(text[2].contains("nowhere"), "{}", text[2]);
}

#[test]
fn shared_rate_limit_and_quota() {
    let c = ok(&min_plus(
        "rate_limit: {per_second: 5, burst: 7, shared: true}\nquota:\n  per_day: 1000\n",
    ));
    assert!(c.shared_rate_limit);
    assert_eq!((c.rate_limit.per_second, c.rate_limit.burst), (5, 7));
    let quota = c.quota.expect("quota");
    assert_eq!((quota.per_day, quota.per_month), (Some(1000), None));
    let plain = ok(MIN);
    assert!(!plain.shared_rate_limit);
    assert_eq!(plain.quota, None);
    one(
        &min_plus("quota:\n  per_day: 10\n  per_month: 0\n"),
        12,
        14,
        &["quota.per_month: must be at least 1"],
    );
    one(&min_plus("quota:\n  per_week: 10\n"), 11, 3, &["per_week"]);
    one(
        &min_plus("rate_limit: {per_second: 1, burst: 1, sharde: true}\n"),
        10,
        39,
        &["sharde"],
    );
}

#[test]
fn token_quota_and_meter() {
    let c = ok(&min_plus(
        "token_quota:\n  per_minute: 20000\n  per_month: 5000000\n",
    ));
    let q = c.token_quota.expect("token quota");
    assert_eq!(
        (q.per_minute, q.per_day, q.per_month),
        (Some(20_000), None, Some(5_000_000))
    );
    assert_eq!(ok(MIN).token_quota, None);
    one(
        &min_plus("token_quota:\n  per_minute: 0\n"),
        11,
        15,
        &["token_quota.per_minute: must be at least 1"],
    );
    one(
        &min_plus("token_quota: {}\n"),
        10,
        14,
        &["token_quota:", "per_minute, per_day, per_month"],
    );
    one(
        &min_plus("token_quota:\n  per_hour: 10\n"),
        11,
        3,
        &["per_hour"],
    );
    let route = |meter: &str| {
        with_route(&format!(
            "  - method: POST\n    path: /v1/chat/completions\n    scope: deploy_tool\n    upstream: tools\n{meter}"
        ))
    };
    assert_eq!(ok(&route("")).route_specs[0].meter, None);
    assert_eq!(
        ok(&route("    meter: openai\n")).route_specs[0].meter,
        Some(crate::meter::Provider::OpenAi)
    );
    assert_eq!(
        ok(&route("    meter: anthropic\n")).route_specs[0].meter,
        Some(crate::meter::Provider::Anthropic)
    );
    one(
        &route("    meter: gemini\n"),
        12,
        12,
        &["routes[0].meter:", "\"gemini\"", "openai or anthropic"],
    );
}

#[test]
fn upstream_timeouts_default_follow_timeout_and_may_be_none() {
    let with = |lines: &str| {
        MIN.replace(
            "    url: http://127.0.0.1:7001",
            &format!("    url: http://127.0.0.1:7001\n{lines}"),
        )
    };
    let t = ok(MIN).upstreams[0].timeouts;
    let thirty = Duration::from_secs(30);
    assert_eq!((t.whole, t.header, t.read), (Some(thirty), thirty, None));
    assert_eq!(t.connect, crate::routing::Timeouts::DEFAULT_CONNECT);
    // `none`: no whole deadline; the head's defaults to 60 s.
    let t = ok(&with(
        "    timeout: none\n    read_timeout: 20s\n    connect_timeout: 2s",
    ))
    .upstreams[0]
        .timeouts;
    assert_eq!(t.whole, None);
    assert_eq!(t.header, Duration::from_secs(60));
    assert_eq!(t.read, Some(Duration::from_secs(20)));
    assert_eq!(t.connect, Duration::from_secs(2));
    // A head deadline past the whole one is the whole one.
    let t = ok(&with("    timeout: 5s\n    header_timeout: 1m")).upstreams[0].timeouts;
    assert_eq!(t.header, Duration::from_secs(5));
    let all = problems(&with("    read_timeout: soon\n    header_timeout: 0s"));
    let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 2, "{shown:#?}");
    // In file order, each naming its field.
    assert!(shown[0].contains("upstreams.tools.read_timeout: \"soon\" is not a duration"));
    assert!(shown[1].contains("upstreams.tools.header_timeout: must be longer than zero"));
}

/// MIN with the `tools` upstream's body replaced by `body` (indented four spaces).
fn with_upstream(body: &str) -> String {
    MIN.replace("    url: http://127.0.0.1:7001\n", body)
}

#[test]
fn upstream_targets_weights_and_their_defaults() {
    let c = ok(&with_upstream(
        "    targets:\n      - url: http://10.0.0.1:7001/base/\n        weight: 3\n      - url: https://models.internal/base\n",
    ));
    let u = &c.upstreams[0];
    let urls: Vec<(&str, u32)> = u.targets.iter().map(|t| (&*t.url, t.weight)).collect();
    assert_eq!(
        urls,
        [("http://10.0.0.1:7001", 3), ("https://models.internal", 1)]
    );
    assert_eq!(u.path_prefix, "/base");
    assert_eq!(u.balance, crate::routing::Balance::LeastRequests);
    assert_eq!(u.max_connections, crate::routing::DEFAULT_MAX_CONNECTIONS);
    assert_eq!(u.passive, Some(crate::routing::Passive::default()));
    assert_eq!(u.retry, crate::routing::Retry::default());
    assert_eq!(u.health, None);
    assert_eq!(u.index, 0);
    // `url:` is one target of weight 1.
    let u = &ok(MIN).upstreams[0];
    assert_eq!(u.targets.len(), 1);
    assert_eq!(
        (&*u.targets[0].url, u.targets[0].weight),
        ("http://127.0.0.1:7001", 1)
    );
}

#[test]
fn upstream_health_passive_retry_and_bound_are_read() {
    let c = ok(&with_upstream(
        "    url: http://127.0.0.1:7001
    balance: round_robin
    max_connections: 8
    health:
      path: /healthz?deep=1
      interval: 2s
      timeout: 500ms
      unhealthy_after: 3
      healthy_after: 1
    passive:
      failures: 2
      eject_for: 30s
    retry:
      attempts: 2
      budget: 10%
",
    ));
    let u = &c.upstreams[0];
    assert_eq!(u.balance, crate::routing::Balance::RoundRobin);
    assert_eq!(u.max_connections, 8);
    let h = u.health.as_ref().unwrap();
    assert_eq!(h.path, "/healthz?deep=1");
    assert_eq!(
        (h.interval, h.timeout),
        (Duration::from_secs(2), Duration::from_millis(500))
    );
    assert_eq!((h.unhealthy_after, h.healthy_after), (3, 1));
    let p = u.passive.unwrap();
    assert_eq!((p.failures, p.eject_for), (2, Duration::from_secs(30)));
    assert_eq!(u.retry.attempts, 2);
    assert!((u.retry.budget_ratio - 0.1).abs() < 1e-6);
    // Passive off; retries off.
    let u = &ok(&with_upstream(
        "    url: http://127.0.0.1:7001\n    passive: {failures: 0}\n    retry: {attempts: 0}\n",
    ))
    .upstreams[0];
    assert_eq!(u.passive, None);
    assert_eq!(u.retry.attempts, 0);
}

#[test]
fn upstream_problems_name_their_field() {
    // Both forms.
    one(
        &with_upstream(
            "    url: http://127.0.0.1:7001\n    targets:\n      - url: http://127.0.0.1:7002\n",
        ),
        6,
        7,
        &["upstreams.tools.targets", "not both"],
    );
    // Neither.
    let all = problems(&with_upstream("    balance: round_robin\n"));
    assert!(
        all.iter().any(|p| p.message.contains("needs `url`")),
        "{all:#?}"
    );
    // A bad target url, a bad weight, each at its place.
    let all = problems(&with_upstream(
        "    targets:\n      - url: ftp://x\n      - url: http://127.0.0.1:7002\n        weight: 0\n",
    ));
    let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 2, "{shown:#?}");
    assert!(
        shown[0].contains("upstreams.tools.targets[0].url"),
        "{shown:#?}"
    );
    assert!(
        shown[1].contains("upstreams.tools.targets[1].weight: must be 1 to 1000"),
        "{shown:#?}"
    );
    // Different path prefixes; a duplicate target.
    let all = problems(&with_upstream(
        "    targets:\n      - url: http://a:1/x\n      - url: http://b:1/y\n      - url: http://a:1/x\n",
    ));
    let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert!(shown.iter().any(|p| p.contains("same path")), "{shown:#?}");
    assert!(
        shown.iter().any(|p| p.contains("listed twice")),
        "{shown:#?}"
    );
    for (body, field) in [
        (
            "    url: http://h:1\n    balance: random\n",
            "balance: \"random\" is not a balance",
        ),
        (
            "    url: http://h:1\n    max_connections: 0\n",
            "max_connections: must be at least 1",
        ),
        (
            "    url: http://h:1\n    health: {path: healthz}\n",
            "health.path",
        ),
        (
            "    url: http://h:1\n    health: {path: /h, interval: 1s, timeout: 2s}\n",
            "health.timeout",
        ),
        (
            "    url: http://h:1\n    passive: {eject_for: soon}\n",
            "passive.eject_for",
        ),
        (
            "    url: http://h:1\n    retry: {budget: \"20\"}\n",
            "retry.budget",
        ),
        (
            "    url: http://h:1\n    retry: {attempts: 11}\n",
            "retry.attempts",
        ),
    ] {
        let all = problems(&with_upstream(body));
        assert!(
            all.iter().any(|p| p.message.contains(field)),
            "{field}: {all:#?}"
        );
    }
}

#[test]
fn resolver_servers_are_addresses() {
    let c = ok(&min_plus("resolver: [\"10.0.0.2\", \"127.0.0.1:5353\"]\n"));
    let shown: Vec<String> = c.resolver.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["10.0.0.2:53", "127.0.0.1:5353"]);
    let all = problems(&min_plus("resolver: [\"dns.example\"]\n"));
    assert!(all[0].message.contains("resolver[0]"), "{all:#?}");
}

#[test]
fn the_master_key_comes_from_a_file_beside_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let key = crate::credentials::MasterKey::generate();
    std::fs::write(
        dir.path().join("master.key"),
        format!("{}\n", key.to_base64().as_str()),
    )
    .unwrap();
    let yaml = min_plus("credentials:\n  master_key_file: master.key\n");
    let config = parse(&dir.path().join("gateway.yaml"), &yaml).unwrap();
    assert!(config.credentials.master_key.is_some());
    assert_eq!(
        config.credentials.source,
        Some(MasterKeySource::File(dir.path().join("master.key")))
    );
    assert!(ok(MIN).credentials.master_key.is_none());
}

#[test]
fn a_bad_master_key_is_a_problem_naming_its_file_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short.key"), "c2hvcnQga2V5IHRleHQ=\n").unwrap();
    let yaml = min_plus("credentials:\n  master_key_file: short.key\n");
    let errors = parse(&dir.path().join("gateway.yaml"), &yaml)
        .err()
        .unwrap();
    assert_eq!(errors.problems.len(), 1, "{errors}");
    let p = &errors.problems[0];
    assert_eq!((p.line, p.column), (Some(11), Some(20)), "{p}");
    assert!(p.message.contains("short.key"), "{p}");
    assert!(p.message.contains("32"), "{p}");
    assert!(!p.message.contains("c2hvcnQga2V5IHRleHQ="), "{p}");
    let missing = min_plus("credentials:\n  master_key_file: nowhere.key\n");
    assert!(parse(&dir.path().join("gateway.yaml"), &missing).is_err());
}

#[test]
fn the_master_key_sources_are_exclusive_and_one_is_needed() {
    one(
        &min_plus("credentials:\n  master_key_env: A\n  master_key_file: b\n"),
        12,
        20,
        &["not both"],
    );
    one(&min_plus("credentials: {}\n"), 10, 14, &["master_key_env"]);
    one(
        &min_plus("credentials:\n  master_key_env: 9BAD\n"),
        11,
        19,
        &["environment variable"],
    );
    // A variable that is not set is no problem: the gateway runs without credentials.
    let c = ok(&min_plus(
        "credentials:\n  master_key_env: SCOPEGATE_TEST_UNSET_MASTER_KEY\n",
    ));
    assert!(c.credentials.master_key.is_none());
}
