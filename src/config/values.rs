//! Parsers for the small value syntaxes of the config file: durations, sizes, CIDRs and names.
//!
//! Each returns a message fit to follow `field: ` in a problem.

use std::net::IpAddr;
use std::time::Duration;

/// `250ms`, `5s`, `2m`, `1h 30m`; `zero_ok` says whether `0s` makes sense for the field.
pub(crate) fn duration(text: &str, zero_ok: bool) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 250ms, 5s or 2m"))?;
    if d.is_zero() && !zero_ok {
        return Err("must be longer than zero".to_owned());
    }
    Ok(d)
}

/// A byte size: `1000` (bytes), `512KiB`, `10MiB`, `1GiB`, `1KB`, `1MB`, `1GB`, `10B`.
pub(crate) fn size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a size; write e.g. 1000, 512KiB, 10MiB or 1MB");
    if digits.is_empty() {
        return Err(bad());
    }
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A network: `10.0.0.0/8`, `fd00::/8`, or a plain address (a /32 or /128).
pub(crate) fn cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let t = text.trim();
    let (addr, len) = match t.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (t, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{text:?}: prefix length must be 0 to {max}")),
        },
    };
    let net = mask(addr, len);
    if net != addr {
        return Err(format!(
            "{text:?} has bits set past the prefix (did you mean {net}/{len}?)"
        ));
    }
    Ok((addr, len))
}

/// Whether `ip` falls in the network `net` (IPv4-mapped IPv6 peers count as IPv4).
pub fn cidr_contains(net: (IpAddr, u8), ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    ip.is_ipv4() == net.0.is_ipv4() && mask(ip, net.1) == net.0
}

/// `addr` with every bit past the first `len` cleared.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

/// A scope name: non-empty, `[a-z0-9_.:-]`.
pub(crate) fn scope_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.:-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "scope name {name:?} must be non-empty and use only a-z, 0-9, `_`, `.`, `:` and `-`"
        ))
    }
}

/// An upstream or operator name: non-empty, `[A-Za-z0-9_.-]` (it shows up in metric labels and logs).
pub(crate) fn plain_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?} must be non-empty and use only letters, digits, `_`, `.` and `-`"
        ))
    }
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not an environment variable name"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("250ms", false), Ok(Duration::from_millis(250)));
        assert_eq!(duration("5s", false), Ok(Duration::from_secs(5)));
        assert_eq!(duration("2m", false), Ok(Duration::from_secs(120)));
        assert_eq!(duration("0s", true), Ok(Duration::ZERO));
        assert!(duration("0s", false).is_err());
        assert!(duration("soon", false).is_err());
        assert!(duration("5", false).is_err());
        assert!(duration("", false).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(size("1000"), Ok(1000));
        assert_eq!(size("512KiB"), Ok(512 * 1024));
        assert_eq!(size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(size("1MB"), Ok(1_000_000));
        assert_eq!(size("2 GiB"), Ok(2 << 30));
        assert_eq!(size("7B"), Ok(7));
        for bad in [
            "",
            "MiB",
            "ten",
            "1.5MiB",
            "10XB",
            "-1",
            "99999999999999999999GiB",
        ] {
            assert!(size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        let v4 = |s: &str| s.parse::<IpAddr>().ok();
        assert_eq!(cidr("10.0.0.0/8").ok(), v4("10.0.0.0").map(|a| (a, 8)));
        assert_eq!(cidr("127.0.0.1").ok(), v4("127.0.0.1").map(|a| (a, 32)));
        assert_eq!(cidr("::1").ok(), v4("::1").map(|a| (a, 128)));
        assert_eq!(cidr("fd00::/8").ok(), v4("fd00::").map(|a| (a, 8)));
        assert_eq!(cidr("0.0.0.0/0").ok(), v4("0.0.0.0").map(|a| (a, 0)));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.1/8",
            "example.com",
            "10.0.0.0/x",
            "::/129",
        ] {
            assert!(cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidr_membership() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = cidr("10.0.0.0/8").unwrap();
        assert!(cidr_contains(net, ip("10.1.2.3")));
        assert!(cidr_contains(net, ip("::ffff:10.1.2.3")));
        assert!(!cidr_contains(net, ip("11.0.0.1")));
        assert!(!cidr_contains(net, ip("::1")));
        assert!(cidr_contains(cidr("0.0.0.0/0").unwrap(), ip("8.8.8.8")));
    }

    #[test]
    fn names() {
        assert!(scope_name("deploy_tool").is_ok());
        assert!(scope_name("jobs:read.v1-x").is_ok());
        for bad in ["", "Deploy", "deploy tool", "déploy"] {
            assert!(scope_name(bad).is_err(), "{bad}");
        }
        assert!(env_name("SCOPEGATE_ADMIN_TOKEN").is_ok());
        assert!(env_name("1ABC").is_err());
        assert!(env_name("A-B").is_err());
        assert!(plain_name("upstream", "tools-v2").is_ok());
        assert!(plain_name("upstream", "to ols").is_err());
    }
}
