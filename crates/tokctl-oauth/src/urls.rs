//! URL rules: which endpoints we talk to, and how they appear in messages.

use crate::OAuthError;
use url::{Host, Url};

/// Validates an issuer or endpoint URL: https, or plain http only when the host is loopback
/// (127.0.0.0/8, ::1, localhost). No user info and no fragment. Anything else is
/// [`OAuthError::Config`]; `what` names the URL in the message (e.g. "token endpoint").
pub fn check_url(url: &Url, what: &str) -> Result<(), OAuthError> {
    let shown = display_url(url);
    if url.host().is_none() {
        return Err(OAuthError::Config(format!("{what} {shown} has no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Credentials belong in the keychain, never in a URL that ends up in configs and logs.
        return Err(OAuthError::Config(format!(
            "{what} {shown} must not contain a user name or password"
        )));
    }
    if url.fragment().is_some() {
        return Err(OAuthError::Config(format!(
            "{what} {shown} must not contain a fragment"
        )));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(OAuthError::Config(format!(
            "{what} {shown} uses plain http: only https is allowed, except for loopback hosts"
        ))),
        other => Err(OAuthError::Config(format!(
            "{what} {shown} has scheme {other:?}: only https is allowed"
        ))),
    }
}

/// Whether the URL's host is a loopback name or address.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        // `url` lowercases domains; "localhost." or "x.localhost" depend on the resolver, so no.
        Some(Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// The URL as shown in messages: scheme, host, port and path; never query or fragment.
pub(crate) fn display_url(url: &Url) -> String {
    let host = match url.host() {
        Some(h) => h.to_string(),
        None => return sanitize_short(url.as_str()),
    };
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    sanitize_short(&format!("{}://{host}{port}{}", url.scheme(), url.path()))
}

fn sanitize_short(s: &str) -> String {
    crate::error::sanitize_text(s, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> bool {
        check_url(&Url::parse(s).unwrap(), "issuer").is_ok()
    }

    #[test]
    fn https_anywhere_http_only_on_loopback() {
        assert!(ok("https://idp.example.com/realms/x"));
        assert!(ok("http://127.0.0.1:8080/"));
        assert!(ok("http://127.1.2.3/"));
        assert!(ok("http://[::1]:9000/x"));
        assert!(ok("http://localhost:3000"));
        assert!(ok("http://LOCALHOST/"));
        assert!(!ok("http://idp.example.com/"));
        assert!(!ok("http://10.0.0.1/"));
        assert!(!ok("http://128.0.0.1/"));
        assert!(!ok("http://[::2]/"));
        assert!(!ok("http://localhost.evil.test/"));
        assert!(!ok("http://x.localhost/"));
        assert!(!ok("ftp://idp.example.com/"));
        assert!(!ok("https://user:pw@idp.example.com/"));
        assert!(!ok("https://idp.example.com/#frag"));
        assert!(!ok("file:///etc/passwd"));
    }

    #[test]
    fn rejection_is_a_config_error_naming_the_url() {
        let err = check_url(
            &Url::parse("http://idp.example.com/t?x=1").unwrap(),
            "token endpoint",
        )
        .unwrap_err();
        assert!(matches!(err, OAuthError::Config(_)));
        let msg = err.to_string();
        assert!(
            msg.starts_with("token endpoint http://idp.example.com/t uses plain http"),
            "{msg}"
        );
        assert!(!msg.contains("x=1"));
    }

    #[test]
    fn display_url_drops_query_and_userinfo() {
        let u = Url::parse("https://a:b@idp:8443/p/q?code=secret#f").unwrap();
        assert_eq!(display_url(&u), "https://idp:8443/p/q");
        let u = Url::parse("http://[::1]:1/").unwrap();
        assert_eq!(display_url(&u), "http://[::1]:1/");
    }
}
