//! `GET /v1/routes`: the routes of the config in force, as the admin API shows them.
//!
//! Built once per config (at start and on every reload) rather than per call, so the view
//! always matches the routing table it was swapped in with.

use crate::routing::{Access, MethodSet, RouteSpec};
use serde::Serialize;

/// What a caller needs: the scope's name, or `public`.
const PUBLIC: &str = "public";
/// The method list of a route that takes any method, as the config writes it.
const ANY_METHOD: &str = "*";

/// One route, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RouteView {
    pub methods: Vec<String>,
    pub path: String,
    pub scope: String,
    pub upstream: String,
}

/// The views of `specs`, in the same (matching) order.
pub(crate) fn views(specs: &[RouteSpec]) -> Vec<RouteView> {
    specs.iter().map(view).collect()
}

fn view(spec: &RouteSpec) -> RouteView {
    RouteView {
        methods: match &spec.methods {
            MethodSet::Any => vec![ANY_METHOD.to_owned()],
            MethodSet::Only(methods) => methods.iter().map(ToString::to_string).collect(),
        },
        path: spec.path.clone(),
        scope: match &spec.access {
            Access::Public => PUBLIC.to_owned(),
            Access::Scope(scope) => scope.to_string(),
        },
        upstream: spec.upstream.name.to_string(),
    }
}
