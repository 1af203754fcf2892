//! Which device a session is on: the browser and OS (from `User-Agent`) and a
//! truncated IP address, recorded at login so a user's session list can tell
//! their sessions apart.
//!
//! The layer keeps the request's `User-Agent` header and the client IP (when
//! [`with_client_ip`](crate::SessionLayerBuilder::with_client_ip) says how to
//! find it) with each request's session; [`login`](super::login) parses and
//! stores them. Nothing is parsed on requests that do not log in.
//!
//! Parsing uses `ua-parser`, the Rust implementation of the ua-parser project
//! (uap-core), with the browser and OS rules of uap-core's `regexes.yaml`
//! converted to JSON (`uap-regexes.json`, Apache-2.0, the uap-core project).
//! The rules compile once per process, on the first login.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use http::{Extensions, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

/// Finds the client's IP address in a request (see
/// [`SessionLayerBuilder::with_client_ip`](crate::SessionLayerBuilder::with_client_ip)).
pub(crate) type ClientIp = Arc<dyn Fn(&HeaderMap, &Extensions) -> Option<IpAddr> + Send + Sync>;

/// What the layer kept of a request for a login to record: cheap to take
/// (a reference-counted header value and an address), parsed only at login.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hints {
    user_agent: Option<HeaderValue>,
    ip: Option<IpAddr>,
}

impl Hints {
    pub(crate) fn capture(
        find_ip: Option<&ClientIp>,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Self {
        Hints {
            user_agent: headers.get(http::header::USER_AGENT).cloned(),
            ip: find_ip.and_then(|f| f(headers, extensions)),
        }
    }

    /// The device as recorded with the session.
    pub(crate) fn describe(&self) -> Device {
        let ua = self.user_agent.as_ref().and_then(|v| v.to_str().ok());
        let (browser, os) = ua.map_or((None, None), parse);
        Device {
            browser,
            os,
            ip: self.ip.map(truncate).map(|ip| ip.to_string()),
        }
    }
}

/// The device a session was logged in from, kept with the session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Device {
    pub(crate) browser: Option<String>,
    pub(crate) os: Option<String>,
    pub(crate) ip: Option<String>,
}

/// The network an address belongs to, not the address: IPv4 keeps its
/// first 24 bits (`203.0.113.77` → `203.0.113.0`), IPv6 its first 48
/// (`2001:db8:1234:5678::1` → `2001:db8:1234::`). Enough to tell "home" from
/// "office" or another country, too little to single out one household.
pub(crate) fn truncate(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => truncate(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
            }
        },
    }
}

/// The longest `User-Agent` worth parsing; real ones are a few hundred bytes.
const MAX_USER_AGENT: usize = 1024;

#[cfg(feature = "user-agent")]
struct Rules {
    ua: ua_parser::user_agent::Extractor<'static>,
    os: ua_parser::os::Extractor<'static>,
}

/// The compiled rules (a few hundred regexes), made once per process.
#[cfg(feature = "user-agent")]
fn rules() -> Option<&'static Rules> {
    use std::sync::OnceLock;
    static RULES: OnceLock<Option<Rules>> = OnceLock::new();
    const JSON: &str = include_str!("uap-regexes.json");
    RULES
        .get_or_init(|| {
            let regexes: ua_parser::Regexes<'static> = serde_json::from_str(JSON).ok()?;
            let ua = ua_parser::user_agent::Builder::new()
                .push_all(regexes.user_agent_parsers)
                .ok()?
                .build()
                .ok()?;
            let os = ua_parser::os::Builder::new()
                .push_all(regexes.os_parsers)
                .ok()?
                .build()
                .ok()?;
            Some(Rules { ua, os })
        })
        .as_ref()
}

/// Compiles the rules on a thread of their own, so the first login does
/// not wait for them on an async worker (the layer calls it when built).
pub(crate) fn warm_up() {
    #[cfg(feature = "user-agent")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let _ = std::thread::Builder::new()
                .name("keyfob-ua-rules".into())
                .spawn(|| {
                    let _ = rules();
                });
        });
    }
}

#[cfg(feature = "user-agent")]
fn parse(ua: &str) -> (Option<String>, Option<String>) {
    if ua.len() > MAX_USER_AGENT {
        return (None, None);
    }
    let Some(rules) = rules() else {
        tracing::warn!("keyfob: the User-Agent rules did not compile; browsers are not recorded");
        return (None, None);
    };
    let browser = rules.ua.extract(ua).map(|v| match v.major {
        Some(major) => format!("{} {major}", v.family),
        None => v.family.into_owned(),
    });
    let os = rules.os.extract(ua).map(|v| match v.major {
        Some(major) if !major.is_empty() => format!("{} {major}", v.os),
        _ => v.os.into_owned(),
    });
    // uap-core's name for "no rule matched".
    let known = |s: Option<String>| s.filter(|s| s != "Other");
    (known(browser), known(os))
}

#[cfg(not(feature = "user-agent"))]
fn parse(_: &str) -> (Option<String>, Option<String>) {
    let _ = MAX_USER_AGENT;
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_cut_to_their_network() {
        let cut = |s: &str| truncate(s.parse().unwrap()).to_string();
        assert_eq!(cut("203.0.113.77"), "203.0.113.0");
        assert_eq!(cut("2001:db8:1234:5678::1"), "2001:db8:1234::");
        assert_eq!(cut("::ffff:198.51.100.9"), "198.51.100.0");
    }

    #[cfg(feature = "user-agent")]
    #[test]
    fn browser_and_os_are_named_from_the_user_agent() {
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        assert_eq!(
            parse(chrome),
            (Some("Chrome 120".into()), Some("Linux".into()))
        );
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
        assert_eq!(
            parse(iphone),
            (Some("Mobile Safari 17".into()), Some("iOS 17".into()))
        );
        assert_eq!(parse("curl/8.5.0"), (Some("curl 8".into()), None));
        assert_eq!(parse("x"), (None, None));
        assert_eq!(parse(&"a".repeat(5000)), (None, None));
    }
}
