//! First-party caveats: the ones we mint and the rules a presented token must satisfy.
//!
//! Minted, in this order (the first three exactly as Aperture mints them):
//! ```text
//! services=<service>:0
//! <service>_capabilities=
//! <service>_valid_until=<unix seconds>
//! <service>_key=<key id>                     (the filter key it was minted with, see `keys`)
//! <service>_path=<concrete request path>     (when the token is bound to the request)
//! <service>_method=<METHOD>                  (idem)
//! ```
//! The verifier binds every token to the path and method of the request that got the 402
//! unless the route opts out; an unbound token is valid on every Lightning route of the
//! service until it expires, so opt out only where routes are interchangeable.
//!
//! Evaluation is stricter than Aperture: every caveat must be `condition=value` with a known
//! condition (anything else is refused, e.g. another service's `x_valid_until`); a later caveat
//! of a condition may only narrow the earlier ones (services a subset, valid_until not later,
//! capabilities a subset, path/method equal); `services` and `valid_until` must be present.

use super::error::L402Error;
use super::macaroon::Caveat;
use crate::keys::KeyId;

/// The key id a token names (its first `<service>_key` caveat), read before its signature is
/// checked: it only picks the key the signature is then checked with. `None`: a token from
/// before key ids, or one that does not parse (the signature check refuses it).
pub fn key_id(caveats: &[Caveat], service: &str) -> Option<KeyId> {
    caveats.iter().find_map(|c| {
        let text = std::str::from_utf8(&c.id).ok()?;
        let (condition, value) = text.split_once('=')?;
        let suffix = condition.strip_prefix(service)?;
        (suffix == SUFFIX_KEY).then(|| KeyId::parse(value))?
    })
}

pub const CONDITION_SERVICES: &str = "services";
pub const SUFFIX_CAPABILITIES: &str = "_capabilities";
pub const SUFFIX_VALID_UNTIL: &str = "_valid_until";
pub const SUFFIX_PATH: &str = "_path";
pub const SUFFIX_METHOD: &str = "_method";
pub const SUFFIX_KEY: &str = "_key";

/// The caveats minted for `service`, in order.
pub fn mint_caveats(
    service: &str,
    valid_until: u64,
    key_id: KeyId,
    path: Option<&str>,
    method: Option<&str>,
) -> Vec<String> {
    let mut out = vec![
        format!("{CONDITION_SERVICES}={service}:0"),
        format!("{service}{SUFFIX_CAPABILITIES}="),
        format!("{service}{SUFFIX_VALID_UNTIL}={valid_until}"),
        format!("{service}{SUFFIX_KEY}={key_id}"),
    ];
    if let Some(path) = path {
        out.push(format!("{service}{SUFFIX_PATH}={path}"));
    }
    if let Some(method) = method {
        out.push(format!("{service}{SUFFIX_METHOD}={method}"));
    }
    out
}

/// A service name usable in caveats: non-empty, `[A-Za-z0-9_.-]` (no `=`, `:`, `,`).
pub fn is_valid_service(service: &str) -> bool {
    !service.is_empty()
        && service.len() <= 64
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// What the request must match, after the caveats were folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restrictions<'a> {
    pub valid_until: u64,
    /// `None`: the token is not bound to a path (or method).
    pub path: Option<&'a str>,
    pub method: Option<&'a str>,
}

/// Folds the caveats (narrowing rules, service membership) into the request restrictions.
pub fn evaluate<'a>(caveats: &'a [Caveat], service: &str) -> Result<Restrictions<'a>, L402Error> {
    let mut services: Option<Vec<&str>> = None;
    let mut capabilities: Option<Vec<&str>> = None;
    let mut valid_until: Option<u64> = None;
    let mut path: Option<&str> = None;
    let mut method: Option<&str> = None;
    let mut key: Option<&str> = None;

    for caveat in caveats {
        let text = std::str::from_utf8(&caveat.id)
            .map_err(|_| L402Error::UnknownCaveat(String::from_utf8_lossy(&caveat.id).into()))?;
        let Some((condition, value)) = text.split_once('=') else {
            return Err(L402Error::UnknownCaveat(text.to_owned()));
        };
        let bad = || L402Error::BadCaveat(text.to_owned());
        let widening = || L402Error::WideningCaveat(text.to_owned());

        if condition == CONDITION_SERVICES {
            let names = parse_services(value).ok_or_else(bad)?;
            if let Some(previous) = &services {
                if !names.iter().all(|n| previous.contains(n)) {
                    return Err(widening());
                }
            }
            services = Some(names);
            continue;
        }
        let suffix = condition
            .strip_prefix(service)
            .filter(|s| s.starts_with('_'))
            .ok_or_else(|| L402Error::UnknownCaveat(text.to_owned()))?;
        match suffix {
            SUFFIX_CAPABILITIES => {
                let list: Vec<&str> = if value.is_empty() {
                    Vec::new()
                } else {
                    value.split(',').collect()
                };
                if let Some(previous) = &capabilities {
                    if !list.iter().all(|c| previous.contains(c)) {
                        return Err(widening());
                    }
                }
                capabilities = Some(list);
            }
            SUFFIX_VALID_UNTIL => {
                let t = parse_unix(value).ok_or_else(bad)?;
                if valid_until.is_some_and(|previous| t > previous) {
                    return Err(widening());
                }
                valid_until = Some(t);
            }
            SUFFIX_PATH => {
                if value.is_empty() {
                    return Err(bad());
                }
                if path.is_some_and(|p| p != value) {
                    return Err(widening());
                }
                path = Some(value);
            }
            SUFFIX_METHOD => {
                if value.is_empty() {
                    return Err(bad());
                }
                if method.is_some_and(|m| m != value) {
                    return Err(widening());
                }
                method = Some(value);
            }
            // Which key minted it: one value (a second, different one is refused).
            SUFFIX_KEY => {
                if KeyId::parse(value).is_none() {
                    return Err(bad());
                }
                if key.is_some_and(|k| k != value) {
                    return Err(widening());
                }
                key = Some(value);
            }
            _ => return Err(L402Error::UnknownCaveat(text.to_owned())),
        }
    }

    let services = services.ok_or(L402Error::WrongService)?;
    if !services.contains(&service) {
        return Err(L402Error::WrongService);
    }
    let valid_until = valid_until.ok_or(L402Error::MissingCaveat("valid_until"))?;
    Ok(Restrictions {
        valid_until,
        path,
        method,
    })
}

impl Restrictions<'_> {
    /// `now < valid_until`, then path and method when bound (exact, except that a GET token
    /// also allows HEAD). `path` has no query string.
    pub fn check(&self, now: u64, path: &str, method: &str) -> Result<(), L402Error> {
        if now >= self.valid_until {
            return Err(L402Error::Expired);
        }
        if self.path.is_some_and(|p| p != path) {
            return Err(L402Error::WrongPath);
        }
        // HEAD is GET without the body (and GET routes serve HEAD), so a GET token covers it.
        if self
            .method
            .is_some_and(|m| m != method && !(m == "GET" && method == "HEAD"))
        {
            return Err(L402Error::WrongMethod);
        }
        Ok(())
    }
}

/// `name:tier[,name:tier…]`: each exactly two parts, non-empty name, tier a decimal u8.
fn parse_services(value: &str) -> Option<Vec<&str>> {
    value
        .split(',')
        .map(|entry| {
            let (name, tier) = entry.split_once(':')?;
            let tier_ok = !tier.is_empty()
                && tier.len() <= 3
                && tier.bytes().all(|b| b.is_ascii_digit())
                && tier.parse::<u8>().is_ok();
            (!name.is_empty() && !name.contains(':') && tier_ok).then_some(name)
        })
        .collect()
}

/// Plain decimal seconds within i64 (what Aperture parses).
fn parse_unix(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u64>().ok().filter(|&t| t <= i64::MAX as u64)
}
