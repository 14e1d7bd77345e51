//! Which tenant a request names. A `/t/{tenant}/...` path prefix wins (local use without DNS,
//! and one endpoint for many apps); otherwise, as the reference server does, the first label
//! of the `Host` header (`acme.realtime.example.com` → `acme`).

/// A path with a `/t/{tenant}` prefix: the tenant and the rest of the path (`/` at least).
pub fn from_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/t/")?;
    let (tenant, rest) = match rest.find('/') {
        Some(at) => (rest.get(..at)?, rest.get(at..)?),
        None => (rest, "/"),
    };
    (!tenant.is_empty()).then_some((tenant, rest))
}

/// The first label of a `Host` value (its port taken off), lowercased by the caller's check:
/// `None` for an empty host.
pub fn from_host(host: &str) -> Option<&str> {
    let host = host.trim();
    // `[::1]:4000`: an IPv6 literal names no tenant.
    if host.starts_with('[') {
        return None;
    }
    let host = host.split(':').next().unwrap_or(host);
    let label = host.split('.').next().unwrap_or(host);
    (!label.is_empty()).then_some(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_prefix_names_the_tenant_and_keeps_the_rest() {
        assert_eq!(
            from_path("/t/acme/realtime/v1/websocket"),
            Some(("acme", "/realtime/v1/websocket"))
        );
        assert_eq!(from_path("/t/acme"), Some(("acme", "/")));
        assert_eq!(from_path("/t/acme/"), Some(("acme", "/")));
        assert_eq!(from_path("/t//x"), None);
        assert_eq!(from_path("/t/"), None);
        assert_eq!(from_path("/realtime/v1/websocket"), None);
        assert_eq!(from_path("/tx/acme"), None);
    }

    #[test]
    fn the_first_host_label_names_the_tenant() {
        assert_eq!(from_host("acme.realtime.example.com"), Some("acme"));
        assert_eq!(from_host("acme.localhost:4000"), Some("acme"));
        assert_eq!(from_host("acme"), Some("acme"));
        assert_eq!(from_host("127.0.0.1:4000"), Some("127"));
        assert_eq!(from_host("[::1]:4000"), None);
        assert_eq!(from_host(""), None);
        assert_eq!(from_host(".example.com"), None);
    }
}
