//! Which role an admin call needs, from its method and path alone: `read` may only `GET`;
//! `operator` may also create, roll, disable, enable and revoke keys; `admin` may do
//! everything.
//!
//! Checked before the call is dispatched, so a refused call reads no body and touches no
//! store. A write not listed as a key operation here needs `admin`: a new endpoint is closed to
//! the lesser roles until it is added on purpose.

use crate::config::Role;
use crate::error::AdminError;
use http::Method;

/// `Ok` when `role` may make this call; 403 `forbidden` otherwise.
pub(super) fn permit(role: Role, method: &Method, path: &str) -> Result<(), AdminError> {
    let needed = needed(method, path);
    if role >= needed {
        Ok(())
    } else {
        Err(AdminError::Forbidden { role, needed })
    }
}

fn needed(method: &Method, path: &str) -> Role {
    if method == Method::GET {
        Role::Read
    } else if is_key_operation(method, path) {
        Role::Operator
    } else {
        Role::Admin
    }
}

/// Creating a key for an app, and revoking, rolling, disabling or enabling one.
fn is_key_operation(method: &Method, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return false;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["apps", app, "keys"] => !app.is_empty() && method == Method::POST,
        ["keys", key] => !key.is_empty() && method == Method::DELETE,
        ["keys", key, "roll" | "disable" | "enable"] => !key.is_empty() && method == Method::POST,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_needs_the_contracts_role() {
        let cases = [
            (Method::GET, "/v1/apps", Role::Read),
            (Method::GET, "/v1/keys/k1/usage", Role::Read),
            (Method::GET, "/v1/routes", Role::Read),
            (Method::GET, "/v1/upstreams", Role::Read),
            (Method::POST, "/v1/apps/a1/keys", Role::Operator),
            (Method::DELETE, "/v1/keys/k1", Role::Operator),
            (Method::POST, "/v1/keys/k1/roll", Role::Operator),
            (Method::POST, "/v1/keys/k1/disable", Role::Operator),
            (Method::POST, "/v1/keys/k1/enable", Role::Operator),
            (Method::POST, "/v1/apps", Role::Admin),
            (Method::GET, "/v1/credentials", Role::Read),
            (Method::GET, "/v1/credentials/MY_API", Role::Read),
            (Method::POST, "/v1/credentials", Role::Admin),
            (Method::PUT, "/v1/credentials/MY_API", Role::Admin),
            (Method::DELETE, "/v1/credentials/MY_API", Role::Admin),
            (Method::PATCH, "/v1/apps/a1", Role::Admin),
            (Method::DELETE, "/v1/apps/a1", Role::Admin),
            (Method::PUT, "/v1/keys/k1", Role::Admin),
            (Method::DELETE, "/v1/apps/a1/keys", Role::Admin),
            (Method::POST, "/v1/keys//roll", Role::Admin),
        ];
        for (method, path, role) in cases {
            assert_eq!(needed(&method, path), role, "{method} {path}");
        }
    }

    #[test]
    fn roles_include_the_lesser_ones() {
        assert!(permit(Role::Admin, &Method::DELETE, "/v1/apps/a").is_ok());
        assert!(permit(Role::Admin, &Method::POST, "/v1/apps/a/keys").is_ok());
        assert!(permit(Role::Operator, &Method::GET, "/v1/apps").is_ok());
        assert!(permit(Role::Operator, &Method::POST, "/v1/apps").is_err());
        assert!(permit(Role::Read, &Method::POST, "/v1/apps/a/keys").is_err());
    }
}
