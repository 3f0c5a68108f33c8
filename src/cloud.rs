//! Microsoft clouds and the base URLs a connector may talk to.

/// A national cloud: which login authority and which Graph host serve it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cloud {
    Global,
    UsGov,
    UsGovDod,
    China,
}

impl Cloud {
    pub const NAMES: &'static [&'static str] = &["global", "usgov", "usgov-dod", "china"];

    pub fn from_name(name: &str) -> Option<Self> {
        [Cloud::Global, Cloud::UsGov, Cloud::UsGovDod, Cloud::China]
            .into_iter()
            .find(|c| c.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::UsGov => "usgov",
            Cloud::UsGovDod => "usgov-dod",
            Cloud::China => "china",
        }
    }

    pub fn login_base(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::UsGov | Cloud::UsGovDod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }

    pub fn graph_base(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::UsGov => "https://graph.microsoft.us",
            Cloud::UsGovDod => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }
}

/// Checks a base URL override (`graph_url`, `login_url`) and returns it without a trailing
/// slash. Only `scheme://host[:port]` is accepted: `https`, or `http` to a loopback host
/// (local simulators and tests), so a token never crosses the network in clear text.
pub fn parse_base_url(url: &str) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("`{url}` is not an absolute URL"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    if authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "`{url}` must be a base URL with only a scheme and host (and port), no path, query or user"
        ));
    }
    match scheme {
        "https" => {}
        "http" if is_loopback(host_of(authority)) => {}
        "http" => {
            return Err(format!(
                "`{url}` uses plain http to a non-loopback host; tokens would travel unencrypted"
            ));
        }
        _ => return Err(format!("`{url}` must use https")),
    }
    Ok(format!("{scheme}://{}", authority.to_ascii_lowercase()))
}

fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host == "::1"
        || host.strip_prefix("127.").is_some_and(|r| {
            r.split('.').count() == 3 && r.split('.').all(|p| p.parse::<u8>().is_ok())
        })
}

/// True when `url` lies under `base` (same scheme, host and port). Compared with the `/`
/// after the authority, so `https://graph.microsoft.com.evil.example` and
/// `https://graph.microsoft.com@evil.example` do not pass.
pub fn is_under(url: &str, base: &str) -> bool {
    url.len() > base.len()
        && url[..base.len()].eq_ignore_ascii_case(base)
        && url.as_bytes()[base.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised_and_checked() {
        assert_eq!(
            parse_base_url("https://Graph.Microsoft.us/").unwrap(),
            "https://graph.microsoft.us"
        );
        assert_eq!(
            parse_base_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            parse_base_url("http://localhost:9").unwrap(),
            "http://localhost:9"
        );
        assert_eq!(parse_base_url("http://[::1]:9").unwrap(), "http://[::1]:9");
        for bad in [
            "http://graph.microsoft.com",
            "ftp://graph.microsoft.com",
            "https://graph.microsoft.com/v1.0",
            "https://user@graph.microsoft.com",
            "graph.microsoft.com",
            "https://",
            "http://127.0.0.1.evil.example",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn next_links_must_stay_under_the_graph_base() {
        let base = "https://graph.microsoft.com";
        assert!(is_under(
            "https://graph.microsoft.com/v1.0/security/alerts_v2?$skip=2",
            base
        ));
        assert!(!is_under(
            "https://graph.microsoft.com.evil.example/v1.0",
            base
        ));
        assert!(!is_under(
            "https://graph.microsoft.com@evil.example/v1.0",
            base
        ));
        assert!(!is_under("http://graph.microsoft.com/v1.0", base));
        assert!(!is_under("https://evil.example/v1.0", base));
        assert!(!is_under(base, base));
    }

    #[test]
    fn every_cloud_has_https_hosts() {
        for name in Cloud::NAMES {
            let c = Cloud::from_name(name).unwrap();
            assert!(parse_base_url(c.login_base()).is_ok());
            assert!(parse_base_url(c.graph_base()).is_ok());
        }
        assert_eq!(Cloud::from_name("germany"), None);
    }
}
