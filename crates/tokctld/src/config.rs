//! The TOML config file: parsing, validation, and errors that name file, line and key.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
use url::Url;

/// A config problem, already formatted as `file:line: key: what is wrong`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Which secret store the user chose.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// The OS keychain (default).
    #[default]
    Keychain,
    /// A 0600 file; explicit opt-in only.
    File,
}

/// The grant a profile logs in with.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// RFC 8628 device authorization.
    DeviceCode,
    /// Authorization code + PKCE with a loopback redirect.
    AuthorizationCode,
    /// Client credentials with a secret from the store.
    ClientCredentials,
    /// Resource owner password (legacy, opt-in by choosing it).
    Password,
}

impl Grant {
    /// The config spelling, also shown by `tokctl status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::DeviceCode => "device_code",
            Grant::AuthorizationCode => "authorization_code",
            Grant::ClientCredentials => "client_credentials",
            Grant::Password => "password",
        }
    }

    /// True for grants whose lasting credential is a refresh token from a login.
    pub fn uses_refresh_token(self) -> bool {
        !matches!(self, Grant::ClientCredentials)
    }
}

/// How the client authenticates at the token endpoint when a client secret is stored.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthKind {
    /// HTTP Basic (RFC 6749 §2.3.1), the default.
    #[default]
    ClientSecretBasic,
    /// Secret in the form body.
    ClientSecretPost,
    /// Public client: never send a secret.
    None,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    default_profile: Option<Spanned<String>>,
    #[serde(default)]
    store: StoreKind,
    #[serde(default)]
    profile: BTreeMap<String, Spanned<RawProfile>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    issuer: Spanned<String>,
    client_id: String,
    grant: Grant,
    #[serde(default)]
    scopes: Vec<String>,
    audience: Option<String>,
    #[serde(default)]
    resource: Vec<Spanned<String>>,
    #[serde(default)]
    redirect_port: u16,
    ca_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    client_auth: ClientAuthKind,
    refresh_margin: Option<Spanned<String>>,
    token_endpoint: Option<Spanned<String>>,
    device_authorization_endpoint: Option<Spanned<String>>,
    authorization_endpoint: Option<Spanned<String>>,
    revocation_endpoint: Option<Spanned<String>>,
    jwks_uri: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    url: Spanned<String>,
    profile: Spanned<String>,
    username: Option<String>,
}

/// Endpoints given in the config for IdPs without discovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExplicitEndpoints {
    /// Token endpoint.
    pub token: Option<Url>,
    /// Device authorization endpoint.
    pub device_authorization: Option<Url>,
    /// Authorization endpoint.
    pub authorization: Option<Url>,
    /// Revocation endpoint.
    pub revocation: Option<Url>,
    /// Where the IdP's ID-token signing keys are (needed with `openid` and no discovery).
    pub jwks: Option<Url>,
}

/// One validated `[profile.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// The profile's name.
    pub name: String,
    /// Issuer exactly as configured (discovery compares it byte for byte).
    pub issuer: String,
    /// OAuth client id.
    pub client_id: String,
    /// The grant used to log in.
    pub grant: Grant,
    /// Scopes requested at login and refresh.
    pub scopes: Vec<String>,
    /// Auth0-style `audience`.
    pub audience: Option<String>,
    /// RFC 8707 resource indicators.
    pub resources: Vec<String>,
    /// Loopback port for the authorization code redirect (0 = any).
    pub redirect_port: u16,
    /// Extra trust root for this IdP.
    pub ca_file: Option<PathBuf>,
    /// Client authentication method when a secret is stored.
    pub client_auth: ClientAuthKind,
    /// Fixed refresh margin before expiry; `None` uses the default rule.
    pub refresh_margin: Option<Duration>,
    /// Endpoints that override discovery.
    pub endpoints: ExplicitEndpoints,
}

/// One validated `[[route]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// URL prefix the route answers for.
    pub url: Url,
    /// Profile that answers.
    pub profile: String,
    /// Username the helpers return.
    pub username: String,
}

/// A loaded and validated config.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// Profile used when a request names none.
    pub default_profile: Option<String>,
    /// Secret store choice.
    pub store: StoreKind,
    /// Profiles by name.
    pub profiles: BTreeMap<String, Profile>,
    /// Helper routes, in file order.
    pub routes: Vec<Route>,
}

/// Turns a byte offset into a 1-based line number.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: std::ops::Range<usize>, key: &str, msg: impl fmt::Display) -> ConfigError {
        ConfigError(format!(
            "{}:{}: {key}: {msg}",
            self.path.display(),
            line_of(self.text, span.start)
        ))
    }

    fn endpoint(&self, v: &Option<Spanned<String>>, key: &str) -> Result<Option<Url>, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        let url = Url::parse(v.get_ref())
            .map_err(|e| self.err(v.span(), key, format!("not a URL: {e}")))?;
        tokctl_oauth::check_url(&url, key).map_err(|e| self.err(v.span(), key, e))?;
        Ok(Some(url))
    }
}

impl Config {
    /// Reads and validates the config at `path`. A missing file is an empty config, so the
    /// daemon can start (and say what to configure) before the user wrote one.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config {
                path: path.to_path_buf(),
                ..Default::default()
            }),
            Err(e) => Err(ConfigError(format!("{}: cannot read: {e}", path.display()))),
        }
    }

    /// Parses config text; `path` is only used in error messages and to resolve `ca_file`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cx = Ctx { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            // toml's own message names the offending key ("unknown field `x`", "missing field `y`").
            ConfigError(format!("{}:{line}: {}", path.display(), e.message().trim()))
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let mut profiles = BTreeMap::new();
        for (name, sp) in raw.profile {
            let key = |k: &str| format!("profile.{name}.{k}");
            let p = sp.into_inner();
            if name.is_empty() || name.chars().any(|c| c.is_control() || c == ':' || c == '/') {
                return Err(cx.err(
                    p.issuer.span(),
                    &format!("profile.{name}"),
                    "profile names may not contain ':', '/' or control characters",
                ));
            }
            let issuer_url = Url::parse(p.issuer.get_ref())
                .map_err(|e| cx.err(p.issuer.span(), &key("issuer"), format!("not a URL: {e}")))?;
            tokctl_oauth::check_url(&issuer_url, "issuer")
                .map_err(|e| cx.err(p.issuer.span(), &key("issuer"), e))?;
            if p.client_id.is_empty() {
                return Err(cx.err(p.issuer.span(), &key("client_id"), "must not be empty"));
            }
            let mut resources = Vec::new();
            for r in &p.resource {
                let u = Url::parse(r.get_ref()).map_err(|e| {
                    cx.err(
                        r.span(),
                        &key("resource"),
                        format!("not an absolute URI: {e}"),
                    )
                })?;
                if u.fragment().is_some() {
                    return Err(cx.err(
                        r.span(),
                        &key("resource"),
                        "a resource indicator may not have a fragment (RFC 8707)",
                    ));
                }
                resources.push(r.get_ref().clone());
            }
            let refresh_margin = match &p.refresh_margin {
                None => None,
                Some(m) => Some(humantime::parse_duration(m.get_ref()).map_err(|e| {
                    cx.err(
                        m.span(),
                        &key("refresh_margin"),
                        format!("not a duration like \"5m\": {e}"),
                    )
                })?),
            };
            let ca_file = p.ca_file.as_ref().map(|c| {
                let c = c.get_ref();
                if c.is_absolute() {
                    c.clone()
                } else {
                    base_dir.join(c)
                }
            });
            let endpoints = ExplicitEndpoints {
                token: cx.endpoint(&p.token_endpoint, &key("token_endpoint"))?,
                device_authorization: cx.endpoint(
                    &p.device_authorization_endpoint,
                    &key("device_authorization_endpoint"),
                )?,
                authorization: cx
                    .endpoint(&p.authorization_endpoint, &key("authorization_endpoint"))?,
                revocation: cx.endpoint(&p.revocation_endpoint, &key("revocation_endpoint"))?,
                jwks: cx.endpoint(&p.jwks_uri, &key("jwks_uri"))?,
            };
            profiles.insert(
                name.clone(),
                Profile {
                    name: name.clone(),
                    issuer: p.issuer.into_inner(),
                    client_id: p.client_id,
                    grant: p.grant,
                    scopes: p.scopes,
                    audience: p.audience,
                    resources,
                    redirect_port: p.redirect_port,
                    ca_file,
                    client_auth: p.client_auth,
                    refresh_margin,
                    endpoints,
                },
            );
        }
        let default_profile = match raw.default_profile {
            None => None,
            Some(d) => {
                if !profiles.contains_key(d.get_ref()) {
                    return Err(cx.err(
                        d.span(),
                        "default_profile",
                        format!("no [profile.{}] in this file", d.get_ref()),
                    ));
                }
                Some(d.into_inner())
            }
        };
        let mut routes = Vec::new();
        for r in raw.route {
            let span = r.span();
            let r = r.into_inner();
            let url = Url::parse(r.url.get_ref())
                .map_err(|e| cx.err(r.url.span(), "route.url", format!("not a URL: {e}")))?;
            // The same rules as endpoints: a host, https (http only for loopback hosts),
            // no userinfo, no fragment. A route with userinfo or a query could never match
            // (`route_for` refuses URLs with userinfo and compares paths only), so it is an
            // error rather than a silently dead route.
            if tokctl_oauth::check_url(&url, "route.url").is_err() || url.query().is_some() {
                return Err(cx.err(
                    r.url.span(),
                    "route.url",
                    "must be https (http only for loopback hosts), without user name, \
                     password, query or fragment",
                ));
            }
            if !profiles.contains_key(r.profile.get_ref()) {
                return Err(cx.err(
                    r.profile.span(),
                    "route.profile",
                    format!("no [profile.{}] in this file", r.profile.get_ref()),
                ));
            }
            let username = r.username.unwrap_or_else(|| "oauth2".to_string());
            if username.is_empty() || username.chars().any(|c| c.is_control()) {
                return Err(cx.err(
                    span,
                    "route.username",
                    "must be non-empty without control characters",
                ));
            }
            routes.push(Route {
                url,
                profile: r.profile.into_inner(),
                username,
            });
        }
        Ok(Config {
            path: path.to_path_buf(),
            default_profile,
            store: raw.store,
            profiles,
            routes,
        })
    }

    /// Resolves a requested profile name (or the default) to its config.
    pub fn profile(&self, name: Option<&str>) -> Result<&Profile, String> {
        let name = match name {
            Some(n) => n,
            None => match (&self.default_profile, self.profiles.len()) {
                (Some(d), _) => d.as_str(),
                (None, 1) => self
                    .profiles
                    .keys()
                    .next()
                    .map(String::as_str)
                    .unwrap_or_default(),
                (None, 0) => {
                    return Err(format!(
                        "no profiles configured: add a [profile.NAME] to {}",
                        self.path.display()
                    ))
                }
                (None, _) => {
                    return Err(format!(
                        "no profile given and no default_profile in {}",
                        self.path.display()
                    ))
                }
            },
        };
        self.profiles.get(name).ok_or_else(|| {
            format!(
                "unknown profile `{}`: not in {}",
                tokctl_proto::printable(name, 64),
                self.path.display()
            )
        })
    }
}

impl Config {
    /// The route answering for `url`: same scheme, host (case-insensitive) and port,
    /// then the longest path prefix that ends at a segment boundary. `None`: no route.
    pub fn route_for(&self, url: &Url) -> Option<&Route> {
        // `https://user@git.example.test/` is not a request for git.example.test's route:
        // a URL carrying userinfo gets no route (A6), whatever the helper let through.
        if !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let same_origin = |r: &Route| {
            r.url.scheme() == url.scheme()
                && r.url.host_str().map(str::to_ascii_lowercase)
                    == url.host_str().map(str::to_ascii_lowercase)
                && r.url.port_or_known_default() == url.port_or_known_default()
        };
        self.routes
            .iter()
            .filter(|r| same_origin(r) && path_under(url.path(), r.url.path()))
            .max_by_key(|r| r.url.path().len())
    }
}

/// Whether `path` is `prefix` or below it: `/org` covers `/org` and `/org/x`, not `/orgx`.
fn path_under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/c/config.toml"), s)
    }

    const GOOD: &str = r#"
default_profile = "work"
store = "keychain"

[profile.work]
issuer = "https://idp.example.com/realms/x"
client_id = "tokctl-cli"
grant = "device_code"
scopes = ["openid", "offline_access", "api"]
audience = "https://api.example.com"
resource = ["https://api.example.com"]
redirect_port = 0
ca_file = "ca.pem"

[profile.local]
issuer = "http://127.0.0.1:9000"
client_id = "cc"
grant = "client_credentials"
client_auth = "client_secret_post"
refresh_margin = "2m"

[[route]]
url = "https://git.example.com/org/"
profile = "work"
"#;

    #[test]
    fn parses_the_design_example() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.default_profile.as_deref(), Some("work"));
        let w = &c.profiles["work"];
        assert_eq!(w.grant, Grant::DeviceCode);
        assert_eq!(w.ca_file.as_deref(), Some(Path::new("/c/ca.pem")));
        assert_eq!(w.resources, vec!["https://api.example.com"]);
        let l = &c.profiles["local"];
        assert_eq!(l.client_auth, ClientAuthKind::ClientSecretPost);
        assert_eq!(l.refresh_margin, Some(Duration::from_secs(120)));
        assert_eq!(c.routes[0].username, "oauth2");
        assert_eq!(c.profile(None).unwrap().name, "work");
        assert!(c
            .profile(Some("nope"))
            .unwrap_err()
            .contains("unknown profile `nope`"));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e =
            parse("[profile.a]\nissuer = \"https://x\"\nclient_id = \"c\"\ngrnt = \"password\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.starts_with("/c/config.toml:"), "{e}");
        assert!(e.contains("grnt"), "{e}");

        let e = parse("[profile.a]\nclient_id = \"c\"\ngrant = \"password\"\nissuer = \"http://idp.example.com\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/c/config.toml:4: profile.a.issuer:"), "{e}");
        assert!(e.contains("http"), "{e}");

        let e = parse("x = [\n").unwrap_err().to_string();
        assert!(e.starts_with("/c/config.toml:"), "{e}");

        let e = parse("default_profile = \"b\"\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "/c/config.toml:1: default_profile: no [profile.b] in this file"
        );

        let e =
            parse("[profile.a]\nissuer = \"https://x\"\nclient_id = \"c\"\ngrant = \"implicit\"\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains(":4:") && e.contains("implicit"), "{e}");
    }

    #[test]
    fn http_is_loopback_only_everywhere() {
        for issuer in [
            "http://127.0.0.1:1",
            "http://[::1]:8080/x",
            "http://localhost",
        ] {
            let t = format!(
                "[profile.a]\nissuer = \"{issuer}\"\nclient_id = \"c\"\ngrant = \"password\"\n"
            );
            parse(&t).unwrap();
        }
        let t = "[profile.a]\nissuer = \"https://x\"\nclient_id = \"c\"\ngrant = \"password\"\ntoken_endpoint = \"http://10.0.0.1/t\"\n";
        assert!(parse(t)
            .unwrap_err()
            .to_string()
            .contains(":5: profile.a.token_endpoint"));
        let t = "[profile.a]\nissuer = \"https://x\"\nclient_id = \"c\"\ngrant = \"password\"\n[[route]]\nurl = \"http://git.example.com/\"\nprofile = \"a\"\n";
        assert!(parse(t).unwrap_err().to_string().contains("route.url"));
    }

    #[test]
    fn resource_must_be_absolute_without_fragment() {
        let t = "[profile.a]\nissuer = \"https://x\"\nclient_id = \"c\"\ngrant = \"password\"\nresource = [\"https://r/#f\"]\n";
        assert!(parse(t).unwrap_err().to_string().contains("fragment"));
        let t = "[profile.a]\nissuer = \"https://x\"\nclient_id = \"c\"\ngrant = \"password\"\nresource = [\"relative\"]\n";
        assert!(parse(t).unwrap_err().to_string().contains("absolute"));
    }

    #[test]
    fn missing_file_is_empty_config() {
        let c = Config::load(Path::new("/nonexistent/tokctl/config.toml")).unwrap();
        assert!(c.profiles.is_empty());
        assert!(c
            .profile(None)
            .unwrap_err()
            .contains("no profiles configured"));
    }

    #[test]
    fn routes_match_origin_exactly_then_the_longest_path() {
        let t = "[profile.a]\nissuer = \"https://x\"\nclient_id = \"c\"\ngrant = \"password\"\n\
                 [profile.b]\nissuer = \"https://x\"\nclient_id = \"c\"\ngrant = \"password\"\n\
                 [[route]]\nurl = \"https://Git.Example.com/\"\nprofile = \"a\"\n\
                 [[route]]\nurl = \"https://git.example.com/org\"\nprofile = \"b\"\nusername = \"x-token\"\n";
        let c = parse(t).unwrap();
        let at = |u: &str| {
            c.route_for(&Url::parse(u).unwrap())
                .map(|r| (r.profile.as_str(), r.username.as_str()))
        };
        assert_eq!(at("https://git.example.com/"), Some(("a", "oauth2")));
        assert_eq!(
            at("https://GIT.example.com:443/other"),
            Some(("a", "oauth2"))
        );
        assert_eq!(at("https://git.example.com/org"), Some(("b", "x-token")));
        assert_eq!(
            at("https://git.example.com/org/repo.git"),
            Some(("b", "x-token"))
        );
        assert_eq!(
            at("https://git.example.com/orgx/repo.git"),
            Some(("a", "oauth2"))
        );
        // Look-alikes and other origins get nothing.
        assert_eq!(at("http://git.example.com/"), None);
        assert_eq!(at("https://git.example.com:8443/"), None);
        assert_eq!(at("https://git.example.com.evil.test/"), None);
        assert_eq!(at("https://evilgit.example.com/"), None);
        // Userinfo never reaches the host's route (found writing fuzz/config_parse), nor a
        // trailing dot.
        assert_eq!(at("https://u@git.example.com/"), None);
        assert_eq!(at("https://u:p@git.example.com/org/x"), None);
        assert_eq!(at("https://git.example.com./"), None);
    }

    #[test]
    fn routes_that_could_never_match_are_errors() {
        let head = "[profile.a]\nissuer = \"https://x\"\nclient_id = \"c\"\ngrant = \"password\"\n";
        for url in [
            "https://u@git.example.com/",
            "https://git.example.com/?x=1",
            "https://git.example.com/#f",
            "http://git.example.com/",
            "ssh://git.example.com/",
        ] {
            let t = format!("{head}[[route]]\nurl = \"{url}\"\nprofile = \"a\"\n");
            let e = parse(&t).unwrap_err().to_string();
            assert!(
                e.starts_with("/c/config.toml:6: route.url: must be https"),
                "{url}: {e}"
            );
        }
        let t = format!("{head}[[route]]\nurl = \"http://127.0.0.1:5000/\"\nprofile = \"a\"\n");
        assert!(parse(&t).is_ok());
    }
}
