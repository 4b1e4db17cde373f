//! The compiled route table: one matchit router per method, so that "first match wins" and
//! matchit's "most specific wins" never disagree (overlaps where they would are refused at load).

use super::normalize::PathError;
use super::{MethodSet, RouteSpec};
use http::Method;
use std::collections::HashMap;
use std::sync::Arc;

/// A configured route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// Position in the config's route list.
    pub index: usize,
    pub spec: RouteSpec,
    /// The path pattern, shared as the `route` metric label.
    pub pattern: Arc<str>,
}

impl Route {
    /// Refuses a `;` in the (normalised) path unless the route allows it. Servlet containers
    /// and Spring strip `;...` from each segment before they route, so `/tools/import;x`, which
    /// matched a broad `{id}` route here, would be served there as `/tools/import`, a route the
    /// key may not hold. A `%3B` is data to every server, so only the literal byte counts.
    pub fn check_parameters(&self, path: &str) -> Result<(), PathError> {
        if self.spec.allow_semicolons || !path.as_bytes().contains(&b';') {
            return Ok(());
        }
        Err(PathError::Parameters)
    }
}

/// A reason a route list cannot be compiled; `index` is the offending route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteProblem {
    pub index: usize,
    pub message: String,
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum RouteMatch<'a> {
    Found(&'a Route),
    /// The path exists for other methods; the value is the `Allow` header.
    MethodNotAllowed(String),
    NotFound,
}

/// Routes by method and normalised path.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    by_method: HashMap<Method, MethodRouter>,
    /// Routes with `*`, for methods no route names explicitly.
    any: MethodRouter,
}

#[derive(Debug, Default)]
struct MethodRouter {
    router: matchit::Router<usize>,
    shapes: Vec<(Vec<Segment>, usize)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Static(String),
    Param,
}

impl RouteTable {
    /// Compiles routes in file order; reports every duplicate or misordered overlap.
    pub fn build(specs: Vec<RouteSpec>) -> Result<RouteTable, Vec<RouteProblem>> {
        let mut table = RouteTable::default();
        for spec in &specs {
            if let MethodSet::Only(methods) = &spec.methods {
                for m in methods {
                    table.by_method.entry(m.clone()).or_default();
                }
            }
        }
        let mut problems = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let shape = shape_of(&spec.path);
            let methods: Vec<Method> = match &spec.methods {
                MethodSet::Only(ms) => ms.clone(),
                MethodSet::Any => table.by_method.keys().cloned().collect(),
            };
            let is_any = spec.methods == MethodSet::Any;
            for method in &methods {
                if let Some(router) = table.by_method.get_mut(method) {
                    let label = method.as_str();
                    if let Err(message) = router.insert(&spec.path, &shape, index, is_any, label) {
                        problems.push(RouteProblem { index, message });
                    }
                }
            }
            if is_any {
                if let Err(message) = table.any.insert(&spec.path, &shape, index, false, "*") {
                    problems.push(RouteProblem { index, message });
                }
            }
        }
        if !problems.is_empty() {
            problems.dedup_by(|a, b| a.index == b.index);
            return Err(problems);
        }
        table.routes = specs
            .into_iter()
            .enumerate()
            .map(|(index, spec)| Route {
                index,
                pattern: Arc::from(spec.path.as_str()),
                spec,
            })
            .collect();
        Ok(table)
    }

    /// Finds the route for a method and an already normalised path.
    pub fn find(&self, method: &Method, path: &str) -> RouteMatch<'_> {
        let router = self.by_method.get(method).unwrap_or(&self.any);
        if let Ok(m) = router.router.at(path) {
            return RouteMatch::Found(&self.routes[*m.value]);
        }
        // HEAD is GET without a body.
        if method == Method::HEAD {
            if let Some(Ok(m)) = self.by_method.get(&Method::GET).map(|r| r.router.at(path)) {
                return RouteMatch::Found(&self.routes[*m.value]);
            }
        }
        self.not_found(path)
    }

    fn not_found(&self, path: &str) -> RouteMatch<'_> {
        match self.allowed_methods(path) {
            Some(allow) => RouteMatch::MethodNotAllowed(allow),
            None => RouteMatch::NotFound,
        }
    }

    /// The first route (in config order) whose pattern matches `path` for some method: the
    /// route a 405 is counted under, so its metrics name the pattern rather than `unmatched`.
    pub fn route_for_path(&self, path: &str) -> Option<&Route> {
        self.by_method
            .values()
            .chain([&self.any])
            .filter_map(|r| r.router.at(path).ok().map(|m| *m.value))
            .min()
            .and_then(|i| self.routes.get(i))
    }

    /// The `Allow` value for a path: the methods some route accepts it with.
    pub fn allowed_methods(&self, path: &str) -> Option<String> {
        let mut allowed: Vec<&str> = self
            .by_method
            .iter()
            .filter(|(_, r)| r.router.at(path).is_ok())
            .map(|(m, _)| m.as_str())
            .collect();
        if allowed.is_empty() {
            return None;
        }
        if allowed.contains(&"GET") && !allowed.contains(&"HEAD") {
            allowed.push("HEAD");
        }
        allowed.sort_unstable();
        Some(allowed.join(", "))
    }

    /// Every route, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

impl MethodRouter {
    fn insert(
        &mut self,
        path: &str,
        shape: &[Segment],
        index: usize,
        skip_duplicate: bool,
        method: &str,
    ) -> Result<(), String> {
        for (earlier, earlier_index) in &self.shapes {
            match compare(earlier, shape) {
                Overlap::None | Overlap::EarlierWins => {}
                Overlap::Same if skip_duplicate => return Ok(()),
                Overlap::Same => {
                    return Err(format!(
                        "duplicate route: {method} {path} is already defined by routes[{earlier_index}]"
                    ))
                }
                Overlap::LaterWins => {
                    return Err(format!(
                        "{method} {path} overlaps routes[{earlier_index}], which is listed first but less specific; list the more specific route first"
                    ))
                }
            }
        }
        self.router
            .insert(path, index)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        self.shapes.push((shape.to_vec(), index));
        Ok(())
    }
}

fn shape_of(pattern: &str) -> Vec<Segment> {
    pattern
        .split('/')
        .skip(1)
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') {
                Segment::Param
            } else {
                Segment::Static(s.to_owned())
            }
        })
        .collect()
}

enum Overlap {
    /// No path matches both.
    None,
    /// Both match the same paths.
    Same,
    /// Some path matches both, and matchit would pick the earlier route (as first-match does).
    EarlierWins,
    /// Some path matches both, and matchit would pick the later route.
    LaterWins,
}

fn compare(earlier: &[Segment], later: &[Segment]) -> Overlap {
    if earlier.len() != later.len() {
        return Overlap::None;
    }
    let mut first_difference = None;
    for (a, b) in earlier.iter().zip(later) {
        match (a, b) {
            (Segment::Static(x), Segment::Static(y)) if x != y => return Overlap::None,
            (Segment::Param, Segment::Static(_)) => {
                first_difference.get_or_insert(Overlap::LaterWins);
            }
            (Segment::Static(_), Segment::Param) => {
                first_difference.get_or_insert(Overlap::EarlierWins);
            }
            _ => {}
        }
    }
    first_difference.unwrap_or(Overlap::Same)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{Access, Upstream};
    use std::time::Duration;

    fn spec(methods: &str, path: &str) -> RouteSpec {
        let methods = if methods == "*" {
            MethodSet::Any
        } else {
            MethodSet::Only(
                methods
                    .split(',')
                    .map(|m| m.parse().expect("method"))
                    .collect(),
            )
        };
        RouteSpec {
            methods,
            path: path.to_owned(),
            access: Access::Public,
            upstream: Arc::new(Upstream::single(
                "u",
                "http://127.0.0.1:1",
                crate::routing::Timeouts::whole(Duration::from_secs(1)),
            )),
            max_body: None,
            allow_semicolons: false,
            meter: None,
        }
    }

    fn pattern_of(table: &RouteTable, method: Method, path: &str) -> String {
        match table.find(&method, path) {
            RouteMatch::Found(r) => r.pattern.to_string(),
            RouteMatch::MethodNotAllowed(allow) => format!("405 {allow}"),
            RouteMatch::NotFound => "404".into(),
        }
    }

    #[test]
    fn matches_method_and_path() {
        let table = RouteTable::build(vec![
            spec("POST", "/tools/{id}/deploy"),
            spec("GET,PUT", "/tools/{id}"),
            spec("*", "/any/{x}"),
        ])
        .expect("valid");
        assert_eq!(
            pattern_of(&table, Method::POST, "/tools/a/deploy"),
            "/tools/{id}/deploy"
        );
        assert_eq!(pattern_of(&table, Method::PUT, "/tools/a"), "/tools/{id}");
        assert_eq!(pattern_of(&table, Method::HEAD, "/tools/a"), "/tools/{id}");
        assert_eq!(
            pattern_of(&table, Method::DELETE, "/tools/a"),
            "405 GET, HEAD, PUT"
        );
        assert_eq!(
            pattern_of(&table, Method::GET, "/tools/a/deploy"),
            "405 POST"
        );
        assert_eq!(pattern_of(&table, Method::GET, "/nope"), "404");
        assert_eq!(pattern_of(&table, Method::GET, "/tools/a/"), "404");
        assert_eq!(pattern_of(&table, Method::PATCH, "/any/1"), "/any/{x}");
        assert_eq!(pattern_of(&table, Method::POST, "/any/1"), "/any/{x}");
    }

    #[test]
    fn specific_route_listed_first_wins() {
        let table = RouteTable::build(vec![
            spec("GET", "/tools/import"),
            spec("GET", "/tools/{id}"),
        ])
        .expect("valid");
        assert_eq!(
            pattern_of(&table, Method::GET, "/tools/import"),
            "/tools/import"
        );
        assert_eq!(pattern_of(&table, Method::GET, "/tools/x"), "/tools/{id}");
    }

    #[test]
    fn refuses_duplicates_and_shadowed_routes() {
        let problems = RouteTable::build(vec![
            spec("GET", "/tools/{id}"),
            spec("GET", "/tools/{other}"),
            spec("GET", "/tools/import"),
            spec("POST", "/tools/import"),
            spec("*", "/x"),
            spec("GET", "/x"),
        ])
        .expect_err("invalid");
        let indices: Vec<usize> = problems.iter().map(|p| p.index).collect();
        assert_eq!(indices, vec![1, 2, 5]);
        assert!(
            problems[0].message.contains("duplicate route"),
            "{problems:?}"
        );
        assert!(problems[1]
            .message
            .contains("list the more specific route first"));
    }

    #[test]
    fn any_after_explicit_keeps_explicit() {
        let table = RouteTable::build(vec![spec("GET", "/x"), spec("*", "/x")]).expect("valid");
        assert_eq!(table.find(&Method::GET, "/x").found_index(&table), Some(0));
        assert_eq!(
            table.find(&Method::DELETE, "/x").found_index(&table),
            Some(1)
        );
    }

    #[test]
    fn semicolons_need_the_route_to_allow_them() {
        let mut allowing = spec("GET", "/files/{name}");
        allowing.allow_semicolons = true;
        let table = RouteTable::build(vec![spec("GET", "/tools/{id}"), allowing]).expect("valid");
        let check = |path: &str| match table.find(&Method::GET, path) {
            RouteMatch::Found(r) => r.check_parameters(path),
            _ => panic!("{path} not found"),
        };
        assert_eq!(check("/tools/import;x"), Err(PathError::Parameters));
        assert_eq!(check("/tools/import;"), Err(PathError::Parameters));
        assert_eq!(check("/tools/import%3Bx"), Ok(()));
        assert_eq!(check("/tools/import"), Ok(()));
        assert_eq!(check("/files/a;v=1"), Ok(()));
    }

    impl RouteMatch<'_> {
        fn found_index(&self, table: &RouteTable) -> Option<usize> {
            match self {
                RouteMatch::Found(r) => table.routes.iter().position(|x| std::ptr::eq(x, *r)),
                _ => None,
            }
        }
    }

    mod props {
        use super::super::*;
        use super::spec;
        use crate::routing::normalize::normalize;
        use proptest::prelude::*;
        use std::path::Path;

        /// The repository's example config, as operators would run it.
        fn repo_table() -> RouteTable {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml");
            crate::config::load(&path)
                .unwrap_or_else(|e| panic!("gateway.yaml: {e}"))
                .routes
        }

        /// Whether a normalised path matches a pattern segment by segment.
        fn matches(pattern: &str, path: &str) -> bool {
            let want: Vec<&str> = pattern.split('/').collect();
            let got: Vec<&str> = path.split('/').collect();
            want.len() == got.len()
                && want.iter().zip(&got).all(|(w, g)| {
                    if w.starts_with('{') && w.ends_with('}') {
                        !g.is_empty()
                    } else {
                        w == g
                    }
                })
        }

        fn accepts(methods: &MethodSet, method: &Method) -> bool {
            match methods {
                MethodSet::Any => true,
                MethodSet::Only(ms) => ms.contains(method),
            }
        }

        /// "First match wins", read straight off the route list.
        fn first_match(table: &RouteTable, method: &Method, path: &str) -> Option<usize> {
            let first = |m: &Method| {
                table
                    .routes()
                    .iter()
                    .find(|r| accepts(&r.spec.methods, m) && matches(&r.pattern, path))
                    .map(|r| r.index)
            };
            first(method).or_else(|| {
                (method == Method::HEAD)
                    .then(|| first(&Method::GET))
                    .flatten()
            })
        }

        fn word() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => prop_oneof![
                    Just("api"), Just("v1"), Just("tools"), Just("models"), Just("guardrails"),
                    Just("connections"), Just("files"), Just("jobs"), Just("health"),
                    Just("deploy"), Just("deployment"), Just("import"), Just("export"),
                    Just("x"), Just("{tool_id}"), Just("%7Btool_id%7D"), Just("*"), Just(":id"),
                ].prop_map(str::to_owned),
                3 => prop_oneof![
                    Just(""), Just("."), Just(".."), Just("%2e%2e"), Just("%2E"), Just("%61pi"),
                    Just("API"), Just("%76%31"), Just("a;b"), Just(";"), Just("%20"), Just("%25"),
                    Just("%2f"), Just("..;"), Just("~"), Just("%7e"),
                ].prop_map(str::to_owned),
                2 => "[a-zA-Z0-9._~%;:@!$&'()*+,=-]{1,8}",
            ]
        }

        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec(word(), 0..8).prop_map(|w| format!("/{}", w.join("/")))
        }

        fn method() -> impl Strategy<Value = Method> {
            prop_oneof![
                Just(Method::GET),
                Just(Method::HEAD),
                Just(Method::POST),
                Just(Method::PUT),
                Just(Method::DELETE),
                Just(Method::PATCH),
                Just(Method::OPTIONS),
                Just(Method::from_bytes(b"PURGE").expect("method")),
            ]
        }

        /// The route found is the one the normalised path (the path forwarded) matches, and
        /// the first in file order to do so; when none matches, nothing is found.
        fn check(table: &RouteTable, method: &Method, input: &str) -> Result<(), TestCaseError> {
            let Ok(path) = normalize(input) else {
                return Ok(());
            };
            let want = first_match(table, method, &path);
            match table.find(method, &path) {
                RouteMatch::Found(route) => {
                    prop_assert!(
                        matches(&route.pattern, &path),
                        "{method} {input:?} -> {path:?} routed to {}",
                        route.pattern
                    );
                    prop_assert_eq!(
                        Some(route.index),
                        want,
                        "{} {:?} -> {:?}",
                        method,
                        input,
                        path
                    );
                }
                RouteMatch::MethodNotAllowed(allow) => {
                    prop_assert_eq!(want, None, "{} {:?}: 405 {}", method, path, allow);
                    prop_assert!(!allow.split(", ").any(|m| m == method.as_str()));
                }
                RouteMatch::NotFound => prop_assert_eq!(want, None, "{} {:?}: 404", method, path),
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

            #[test]
            fn repo_routes_forward_what_they_matched(m in method(), input in path()) {
                static TABLE: std::sync::OnceLock<RouteTable> = std::sync::OnceLock::new();
                check(TABLE.get_or_init(repo_table), &m, &input)?;
            }

            #[test]
            fn wildcard_routes_forward_what_they_matched(m in method(), input in path()) {
                static TABLE: std::sync::OnceLock<RouteTable> = std::sync::OnceLock::new();
                let table = TABLE.get_or_init(|| {
                    RouteTable::build(vec![
                        spec("GET", "/api/v1/tools/import"),
                        spec("POST", "/api/v1/tools/{tool_id}/deploy"),
                        spec("GET,HEAD", "/api/v1/jobs/{job_id}"),
                        spec("*", "/api/v1/prefixed/{anything}"),
                        spec("GET", "/api/v1/{x}/{y}"),
                        spec("*", "/api/{a}/{b}/{c}/{d}"),
                    ])
                    .expect("valid")
                });
                check(table, &m, &input)?;
            }
        }

        #[test]
        fn repo_table_every_pattern_finds_itself() {
            let table = repo_table();
            for r in table.routes() {
                let path = r.pattern.replace(['{', '}'], "");
                let MethodSet::Only(ms) = &r.spec.methods else {
                    continue;
                };
                for m in ms {
                    match table.find(m, &path) {
                        RouteMatch::Found(found) => assert_eq!(found.index, r.index, "{m} {path}"),
                        _ => panic!("{m} {path} not found"),
                    }
                }
            }
        }
    }
}
