//! A small blocking HTTP layer over ureq: no redirects followed, no status treated as an
//! error, and a minimal cookie jar for acting as the user in a browser-less login.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::time::Duration;

/// One HTTP response, body read in full.
pub(crate) struct Reply {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub body: String,
}

impl Reply {
    /// The body as JSON, or a protocol error naming `what` (the body itself is not quoted).
    pub fn json(&self, what: &str) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).map_err(|e| {
            Error::protocol(
                what,
                format!("HTTP {}, body is not JSON ({e})", self.status),
            )
        })
    }
}

/// An agent that returns every response as is, follows no redirect, gives up after
/// `timeout`, and trusts only the PEM certificates in `ca_pem` for https when given.
pub(crate) fn agent_with_timeout(
    ca_pem: &Option<Vec<u8>>,
    timeout: Duration,
) -> Result<ureq::Agent> {
    let mut b = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(timeout));
    if let Some(pem) = ca_pem {
        let certs = ureq::tls::parse_pem(pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect::<Vec<_>>();
        if certs.is_empty() {
            return Err(Error::Setup("the CA file holds no PEM certificate".into()));
        }
        b = b.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    Ok(b.build().into())
}

fn finish(
    method: &'static str,
    url: &str,
    r: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Reply> {
    let resp = r.map_err(|e| Error::Http {
        method,
        url: url.to_string(),
        message: e.to_string(),
    })?;
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let set_cookies = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let body = resp.into_body().read_to_string().map_err(|e| Error::Http {
        method,
        url: url.to_string(),
        message: format!("reading the body: {e}"),
    })?;
    Ok(Reply {
        status,
        location,
        set_cookies,
        body,
    })
}

/// GET `url` with extra `headers`.
pub(crate) fn get(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Result<Reply> {
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    finish("GET", url, req.call())
}

/// POST a form to `url` with extra `headers`.
pub(crate) fn post_form(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
    form: &[(&str, &str)],
) -> Result<Reply> {
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    finish("POST", url, req.send_form(form.iter().copied()))
}

/// POST JSON to `url`.
pub(crate) fn post_json(agent: &ureq::Agent, url: &str, body: &serde_json::Value) -> Result<Reply> {
    finish("POST", url, agent.post(url).send_json(body))
}

/// `Authorization: Basic` value for a client, with RFC 6749 §2.3.1 form-encoding.
pub(crate) fn basic_auth(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(id), enc(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A browser stand-in: one origin's cookies, sent on every request to it.
pub(crate) struct Browser {
    agent: ureq::Agent,
    origin: String,
    // Paths are ignored: oidc-provider's cookies have distinct names per purpose, and a
    // stale one sent to a path that does not read it is harmless.
    cookies: BTreeMap<String, String>,
}

impl Browser {
    pub fn new(origin: &str, agent: ureq::Agent) -> Self {
        Browser {
            agent,
            origin: origin.trim_end_matches('/').to_string(),
            cookies: BTreeMap::new(),
        }
    }

    fn same_origin(&self, url: &str) -> bool {
        url == self.origin || url.starts_with(&format!("{}/", self.origin))
    }

    /// Resolves a `Location` or form `action` against `base`.
    pub fn resolve(&self, base: &str, target: &str) -> Result<String> {
        let base = url::Url::parse(base).map_err(|e| Error::protocol("URL", e.to_string()))?;
        base.join(target)
            .map(String::from)
            .map_err(|e| Error::protocol("URL", e.to_string()))
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn absorb(&mut self, reply: &Reply) {
        for sc in &reply.set_cookies {
            let mut parts = sc.split(';');
            let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
                continue;
            };
            let attrs: Vec<String> = parts.map(|a| a.trim().to_ascii_lowercase()).collect();
            let expired = value.is_empty()
                || attrs
                    .iter()
                    .any(|a| a == "max-age=0" || a.starts_with("max-age=-") || a.contains("1970"));
            if expired {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    /// GET `url`, with cookies when it is on the browser's origin.
    pub fn get(&mut self, url: &str) -> Result<Reply> {
        if !self.same_origin(url) {
            return get(&self.agent, url, &[]);
        }
        let cookie = self.cookie_header();
        let r = get(&self.agent, url, &[("cookie", &cookie)])?;
        self.absorb(&r);
        Ok(r)
    }

    /// POST a form to `url` on the browser's origin.
    pub fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Result<Reply> {
        let cookie = self.cookie_header();
        let headers: Vec<(&str, &str)> = if self.same_origin(url) {
            vec![("cookie", &cookie)]
        } else {
            vec![]
        };
        let r = post_form(&self.agent, url, &headers, form)?;
        if self.same_origin(url) {
            self.absorb(&r);
        }
        Ok(r)
    }
}

/// The value of attribute `attr` in the first tag after `marker` in `html`.
pub(crate) fn attr_after(html: &str, marker: &str, attr: &str) -> Option<String> {
    let start = html.find(marker)?;
    let rest = &html[start..];
    let tag_end = rest.find('>')?;
    let tag = &rest[..tag_end];
    let key = format!("{attr}=\"");
    let v = tag.find(&key)? + key.len();
    let end = tag[v..].find('"')?;
    Some(unescape(&tag[v..v + end]))
}

/// The value of the `<input name="NAME" value="…">` in `html`.
pub(crate) fn input_value(html: &str, name: &str) -> Option<String> {
    attr_after(html, &format!("name=\"{name}\""), "value")
}

/// `data-error="…"` on the page's body, set by the test IdP on error pages.
pub(crate) fn page_error(html: &str) -> Option<String> {
    attr_after(html, "<body", "data-error")
}

/// The page title, for error messages.
pub(crate) fn page_title(html: &str) -> String {
    html.find("<title>")
        .and_then(|s| {
            let rest = &html[s + 7..];
            rest.find("</title>").map(|e| unescape(&rest[..e]))
        })
        .unwrap_or_else(|| "(untitled page)".into())
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}
