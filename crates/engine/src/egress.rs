//! One egress policy for every request the server makes on an agent's or a tenant's behalf (`http_get`, the x402
//! rail's requests to a resource, the LLM planner). Names are resolved here and only the addresses that pass are handed to the
//! connection, so what is checked is what is connected to; loopback, private, link-local (cloud metadata),
//! multicast and unspecified addresses are refused unless the configuration allows them; every redirect is
//! checked the same way; time is capped, and bodies are read as a stream up to a byte cap, never buffered past it.

use ipnet::IpNet;
use reqwest::dns::{Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// What outbound requests may reach, and how long and how much they may take.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    allow_nets: Vec<IpNet>,
    /// Host names allowed whatever they resolve to, lower-case.
    allow_hosts: Vec<String>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// The most of a response body read.
    pub max_body: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(
        "refused by the egress policy: {host} is a {kind} address (PAYGENT_EGRESS_ALLOW can allow it)"
    )]
    Refused { host: String, kind: &'static str },
    #[error("bad egress_allow entry {0:?}: give a CIDR (10.0.0.0/8) or a host name")]
    BadAllow(String),
}

/// Why an outbound request brought no answer, with its causes in words.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unanswered {
    /// Where it leads is not allowed (the URL, the addresses its name resolves to, or a redirect), or it is not
    /// a URL: a caller's mistake, not an outage.
    #[error("{0}")]
    Refused(String),
    /// It was allowed but failed: not reached, timed out, or its answer broke off.
    #[error("{0}")]
    Failed(String),
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            allow_nets: Vec::new(),
            allow_hosts: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            max_body: 64 * 1024,
        }
    }
}

/// The kind of address that is not reached by default, if `ip` is one.
fn restricted(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local (cloud metadata)")
            } else if v4.is_multicast() || v4.is_broadcast() {
                Some("multicast or broadcast")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if let Some(v4) = v6.to_ipv4_mapped() {
                restricted(IpAddr::V4(v4))
            } else if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast or broadcast")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local (cloud metadata)")
            } else {
                None
            }
        }
    }
}

impl EgressPolicy {
    /// The default policy, with `allow` (a comma list of CIDRs and host names) let through.
    pub fn allowing(allow: &str) -> Result<EgressPolicy, EgressError> {
        let mut policy = EgressPolicy::default();
        for entry in allow.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            policy = policy.also_allowing(entry)?;
        }
        Ok(policy)
    }

    /// This policy, with one more CIDR, address or host name let through: for an endpoint the operator
    /// configured (an LLM on loopback), never for one an agent names.
    pub fn also_allowing(mut self, entry: &str) -> Result<EgressPolicy, EgressError> {
        let bare = entry.trim_start_matches('[').trim_end_matches(']');
        if let Ok(net) = bare.parse::<IpNet>() {
            self.allow_nets.push(net);
        } else if let Ok(ip) = bare.parse::<IpAddr>() {
            self.allow_nets.push(IpNet::from(ip));
        } else if !bare.is_empty()
            && bare
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            self.allow_hosts.push(bare.to_ascii_lowercase());
        } else {
            return Err(EgressError::BadAllow(entry.to_owned()));
        }
        Ok(self)
    }

    fn allows_host(&self, host: &str) -> bool {
        self.allow_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Why `ip` may not be reached, if it may not.
    fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if self.allow_nets.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        restricted(ip)
    }

    /// Checks a URL's host when it is an address; names are checked when they are resolved.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), EgressError> {
        let host = url.host_str().unwrap_or_default();
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return Ok(());
        };
        match self.refusal(ip) {
            Some(kind) => Err(EgressError::Refused {
                host: ip.to_string(),
                kind,
            }),
            None => Ok(()),
        }
    }
}

/// An HTTP client that keeps to an [`EgressPolicy`]: it resolves names itself, checks every redirect (at most
/// five), caps connecting and the whole exchange in time, and reads bodies up to the cap.
#[derive(Debug, Clone)]
pub struct Egress {
    policy: Arc<EgressPolicy>,
    client: reqwest::Client,
}

impl Egress {
    pub fn new(policy: EgressPolicy) -> Egress {
        let policy = Arc::new(policy);
        let checks = policy.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                return attempt.error("more than 5 redirects");
            }
            match checks.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(Checked(policy.clone())))
            .redirect(redirects)
            .connect_timeout(policy.connect_timeout)
            .timeout(policy.timeout)
            .build()
            .expect("an HTTP client with a resolver builds");
        Egress { policy, client }
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// GETs `url` (with one extra header, if given) within the policy, and reads its body up to the cap. The
    /// error says what refused or failed, with its causes.
    pub async fn get(
        &self,
        url: &str,
        header: Option<(&str, &str)>,
    ) -> Result<Fetched, Unanswered> {
        let mut request = self.client.get(self.checked(url)?);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        self.send(url, request).await
    }

    /// POSTs `body` as JSON to `url`, with a bearer token if given, within the policy, as [`Egress::get`].
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        bearer: Option<&str>,
    ) -> Result<Fetched, Unanswered> {
        let auth = bearer.map(|token| ("authorization", format!("Bearer {token}")));
        self.post(url, body.to_string(), auth.as_slice()).await
    }

    /// POSTs `body` as JSON to `url` with `headers`, within the policy, as [`Egress::get`].
    pub async fn post(
        &self,
        url: &str,
        body: String,
        headers: &[(&str, String)],
    ) -> Result<Fetched, Unanswered> {
        let mut request = self
            .client
            .post(self.checked(url)?)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        self.send(url, request).await
    }

    fn checked(&self, url: &str) -> Result<reqwest::Url, Unanswered> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Unanswered::Refused(format!("bad URL {url}: {e}")))?;
        self.policy
            .check_url(&parsed)
            .map_err(|e| Unanswered::Refused(e.to_string()))?;
        Ok(parsed)
    }

    async fn send(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Fetched, Unanswered> {
        let mut resp = request.send().await.map_err(|e| {
            let why = format!("fetching {url}: {}", explain(&e));
            // The policy refused a name's addresses or a redirect inside the connection.
            if refused_within(&e) {
                Unanswered::Refused(why)
            } else {
                Unanswered::Failed(why)
            }
        })?;
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        let (mut body, mut truncated) = (Vec::new(), false);
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| Unanswered::Failed(format!("reading {url}: {}", explain(&e))))?
        {
            let room = self.policy.max_body - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if chunk.len() > room {
                truncated = true;
                break;
            }
        }
        Ok(Fetched {
            status,
            headers,
            body,
            truncated,
        })
    }
}

impl Default for Egress {
    fn default() -> Self {
        Egress::new(EgressPolicy::default())
    }
}

/// A response read within the policy's caps.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
    /// True when the body was longer than the cap and was cut.
    pub truncated: bool,
}

/// Whether the egress policy is among an error's causes.
fn refused_within(e: &reqwest::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<EgressError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// An error with its causes, so a refusal inside the connection says which rule refused.
fn explain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Resolves names and hands on only the addresses the policy lets through.
struct Checked(Arc<EgressPolicy>);

impl Resolve for Checked {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if policy.allows_host(&host) {
                return Ok(
                    Box::new(addrs.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>
                );
            }
            let mut refused = "unresolvable";
            let passed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match policy.refusal(a.ip()) {
                    Some(kind) => {
                        refused = kind;
                        false
                    }
                    None => true,
                })
                .collect();
            if passed.is_empty() {
                return Err(Box::new(EgressError::Refused {
                    host,
                    kind: refused,
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(passed.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_refused_by_default() {
        let p = EgressPolicy::default();
        for (ip, kind) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "private"),
            ("fd00::1", "private"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("fe80::1", "link-local (cloud metadata)"),
            ("::ffff:127.0.0.1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast or broadcast"),
        ] {
            assert_eq!(p.refusal(ip.parse().unwrap()), Some(kind), "{ip}");
        }
        assert_eq!(p.refusal("93.184.216.34".parse().unwrap()), None);
        assert_eq!(p.refusal("2606:4700::1111".parse().unwrap()), None);
    }

    #[test]
    fn configuration_allows() {
        let p = EgressPolicy::allowing("127.0.0.1/32, ::1, peer.internal").unwrap();
        assert_eq!(p.refusal("127.0.0.1".parse().unwrap()), None);
        assert_eq!(p.refusal("::1".parse().unwrap()), None);
        assert_eq!(p.refusal("127.0.0.2".parse().unwrap()), Some("loopback"));
        assert!(p.allows_host("Peer.Internal"));
        assert!(EgressPolicy::allowing("not a host!").is_err());
    }
}
