//! Webhooks: which events a job's callback hears, how a callback URL is judged safe,
//! and the Standard Webhooks signature (<https://www.standardwebhooks.com/>).
//!
//! The gateway checks a callback URL when a job is submitted; the notifier checks the
//! address it actually connects to (a name can resolve to anything, and resolve again
//! to something else later), so both share [`AddressPolicy`].

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit as _, Mac as _};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Longest callback URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Header names of a delivery (Standard Webhooks).
pub mod headers {
    /// Same on every retry of one event, so a receiver can deduplicate.
    pub const ID: &str = "webhook-id";
    /// Unix seconds when this attempt was signed.
    pub const TIMESTAMP: &str = "webhook-timestamp";
    /// `v1,<base64 HMAC-SHA256>` per active secret, space-separated.
    pub const SIGNATURE: &str = "webhook-signature";
}

/// The job events a callback can subscribe to (`callback_events`).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CallbackEvent {
    Started,
    Progress,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
    Requeued,
}

impl CallbackEvent {
    pub const ALL: [Self; 7] = [
        Self::Started,
        Self::Progress,
        Self::Retrying,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Requeued,
    ];
    /// What a callback hears when `callback_events` is not given: how the job ended.
    pub const DEFAULT: [Self; 3] = [Self::Succeeded, Self::Failed, Self::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Progress => "progress",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Requeued => "requeued",
        }
    }

    /// Whether a callback with this `callback_events` (absent: the default) hears `self`.
    pub fn selected_by(self, filter: Option<&[Self]>) -> bool {
        filter.unwrap_or(&Self::DEFAULT).contains(&self)
    }
}

impl fmt::Display for CallbackEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a callback URL or address is refused. The text is shown to API clients and
/// recorded as a delivery's error, so it says what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("callback_url is longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error("callback_url is not an absolute URL: {0}")]
    Malformed(String),
    #[error("callback_url must use http or https, not {0:?}")]
    Scheme(String),
    #[error("callback_url must not contain a user name or password")]
    Userinfo,
    #[error("callback_url has no host")]
    NoHost,
    #[error(
        "callback address {ip} is refused ({reason}); webhooks are only sent to public addresses \
         unless an operator allow-lists the range in JETJOBS_WEBHOOK_ALLOW"
    )]
    Refused { ip: IpAddr, reason: &'static str },
}

/// Parses and checks the form of a callback URL (not its address: see [`AddressPolicy`]).
pub fn parse_callback_url(raw: &str) -> Result<url::Url, CallbackError> {
    if raw.len() > MAX_URL_LEN {
        return Err(CallbackError::TooLong);
    }
    let url = url::Url::parse(raw).map_err(|e| CallbackError::Malformed(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(CallbackError::Scheme(url.scheme().to_string()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(CallbackError::Userinfo);
    }
    match url.host() {
        None => Err(CallbackError::NoHost),
        Some(url::Host::Domain("")) => Err(CallbackError::NoHost),
        Some(_) => Ok(url),
    }
}

/// The IP address of a URL whose host is an IP literal (`http://10.0.0.1/`, `http://[::1]/`).
pub fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// Which addresses webhooks may be sent to: every public address, plus the ranges an
/// operator allow-listed (`JETJOBS_WEBHOOK_ALLOW`, e.g. an internal receiver's subnet).
///
/// Without it a client could make the notifier (inside the network) call internal
/// services or the cloud metadata endpoint (169.254.169.254) for it: SSRF.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("JETJOBS_WEBHOOK_ALLOW: {0:?} is not a CIDR range (like 10.1.0.0/16 or fd00::/8)")]
pub struct InvalidAllowList(pub String);

impl FromStr for AddressPolicy {
    type Err = InvalidAllowList;

    /// Comma-separated CIDRs; a bare address means just that address.
    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let allow = list
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| InvalidAllowList(item.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }
}

impl AddressPolicy {
    /// `Err` with the reason when webhooks must not go to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), CallbackError> {
        match refused_reason(ip) {
            Some(reason) if !self.allows(ip) => Err(CallbackError::Refused { ip, reason }),
            _ => Ok(()),
        }
    }

    fn allows(&self, ip: IpAddr) -> bool {
        // An allow-listed IPv4 range also covers its IPv4-mapped IPv6 form.
        let plain = canonical(ip);
        self.allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&plain))
    }

    /// Checks the address of an IP-literal URL; names are checked when resolved.
    pub fn check_url(&self, url: &url::Url) -> Result<(), CallbackError> {
        literal_ip(url).map_or(Ok(()), |ip| self.check(ip))
    }
}

/// `::ffff:a.b.c.d` and `::a.b.c.d` reach the IPv4 host `a.b.c.d`: judge them as it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => match v6.segments() {
                // IPv4-compatible (deprecated, but some stacks still route it).
                [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => IpAddr::V4(std::net::Ipv4Addr::from(
                    (u32::from(hi) << 16) | u32::from(lo),
                )),
                _ => ip,
            },
        },
        IpAddr::V4(_) => ip,
    }
}

/// Why `ip` is not a public address, or `None` if it is.
pub fn refused_reason(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private network")
            } else if v4.is_link_local() {
                Some("link-local, including the cloud metadata endpoint")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified (\"this network\")")
            } else if a == 100 && (64..128).contains(&b) {
                Some("carrier-grade NAT")
            } else if v4.is_multicast() || a >= 240 {
                Some("multicast, broadcast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique local (private network)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

/// A signing secret, configured as `whsec_<base64>` (the Standard Webhooks form).
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSecret {
    #[error("a webhook secret must start with \"whsec_\"")]
    Prefix,
    #[error("a webhook secret must be whsec_ followed by base64: {0}")]
    Base64(String),
    #[error("a webhook secret must be at least 16 bytes (24 base64 characters)")]
    TooShort,
}

impl FromStr for Secret {
    type Err = InvalidSecret;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let encoded = s
            .trim()
            .strip_prefix("whsec_")
            .ok_or(InvalidSecret::Prefix)?;
        let key = BASE64
            .decode(encoded)
            .map_err(|e| InvalidSecret::Base64(e.to_string()))?;
        if key.len() < 16 {
            return Err(InvalidSecret::TooShort);
        }
        Ok(Self(key))
    }
}

impl Secret {
    pub fn from_bytes(key: impl Into<Vec<u8>>) -> Self {
        Self(key.into())
    }

    /// The `whsec_<base64>` form, as configured.
    pub fn to_whsec(&self) -> String {
        format!("whsec_{}", BASE64.encode(&self.0))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        let mut mac = <hmac::Hmac<sha2::Sha256>>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// Parses `JETJOBS_WEBHOOK_SECRETS`: comma- or space-separated `whsec_` secrets. Several
/// are active at once while a secret is rotated: every delivery is signed with each.
pub fn parse_secrets(list: &str) -> Result<Vec<Secret>, InvalidSecret> {
    list.split([',', ' '])
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// The `webhook-signature` header value: `v1,<sig>` for each secret, space-separated.
pub fn sign(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| {
            let tag = secret.mac(id, timestamp, body).finalize().into_bytes();
            format!("v1,{}", BASE64.encode(tag))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} s away from now: too old or too new (replay?)")]
    Stale(i64),
    #[error("no v1 signature in webhook-signature matches")]
    NoMatch,
}

/// Verifies a delivery as a receiver would: some `v1` signature in `signature` must be
/// the HMAC of `id.timestamp.body` with `secret`, and `timestamp` within `tolerance_secs`
/// of `now` (unix seconds).
pub fn verify(
    secret: &Secret,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    if (now - ts).abs() > tolerance_secs {
        return Err(VerifyError::Stale(now - ts));
    }
    let matches = signature
        .split(' ')
        .filter_map(|part| part.strip_prefix("v1,"))
        .filter_map(|sig| BASE64.decode(sig).ok())
        .any(|tag| secret.mac(id, ts, body).verify_slice(&tag).is_ok());
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

/// Where a job's webhook deliveries stand, as shown in its snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookState {
    /// An event is due for delivery and no attempt is recorded yet.
    Pending,
    Delivered,
    /// The last attempt failed and another one is scheduled.
    Retrying,
    /// Delivery was given up: a refused address, a 4xx, or the retry period ran out.
    Failed,
}

impl WebhookState {
    /// A final outcome outranks a `retrying` record of the same attempt.
    fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Failed)
    }
}

/// One delivery attempt, published by the notifier on `jobs.events.<kind>.<id>.webhook`
/// (not the job's own subject, which writers fence on).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookRecord {
    /// The delivered event's type (`succeeded`, ...).
    pub event: CallbackEvent,
    /// The delivered event's sequence in `JOB_EVENTS`: orders records of different events.
    pub event_seq: u64,
    /// 1 for the first try of this event.
    pub delivery_attempt: u32,
    pub outcome: WebhookState,
    /// The receiver's HTTP status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `retrying`: when the next attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

impl WebhookRecord {
    /// Records of a job are applied in this order whatever order they arrive in.
    pub fn order_key(&self) -> (u64, u32, bool) {
        (
            self.event_seq,
            self.delivery_attempt,
            self.outcome.is_final(),
        )
    }
}

/// The `webhook` object of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookStatus {
    pub state: WebhookState,
    /// The event being (or last) delivered.
    pub event: CallbackEvent,
    /// Attempts made for that event.
    pub attempts: u32,
    #[serde(default)]
    pub last_status: Option<u16>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `JOB_EVENTS` sequence of the event; 0 while pending.
    #[serde(default)]
    pub event_seq: u64,
}

impl WebhookStatus {
    pub fn pending(event: CallbackEvent) -> Self {
        Self {
            state: WebhookState::Pending,
            event,
            attempts: 0,
            last_status: None,
            last_error: None,
            last_attempt_at: None,
            event_seq: 0,
        }
    }

    /// Where this status stands among records; pending stands before all of them.
    pub fn order_key(&self) -> (u64, u32, bool) {
        (self.event_seq, self.attempts, self.state.is_final())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        let policy = AddressPolicy::default();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
        ] {
            assert!(policy.check(ip(bad)).is_err(), "{bad} must be refused");
        }
        for good in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "8.8.8.8",
            "2606:4700::1111",
        ] {
            assert!(policy.check(ip(good)).is_ok(), "{good} is public");
        }
    }

    #[test]
    fn an_allow_list_opens_only_its_ranges() {
        let policy: AddressPolicy = "127.0.0.0/8, 10.9.0.0/16".parse().expect("allow list");
        assert!(policy.check(ip("127.0.0.1")).is_ok());
        assert!(policy.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(policy.check(ip("10.9.1.1")).is_ok());
        assert!(policy.check(ip("10.8.1.1")).is_err());
        assert!(policy.check(ip("169.254.169.254")).is_err());
        assert!("not-a-cidr".parse::<AddressPolicy>().is_err());
        assert!("".parse::<AddressPolicy>().expect("empty").allow.is_empty());
    }

    #[test]
    fn callback_urls_must_be_absolute_http_without_userinfo() {
        assert!(parse_callback_url("https://example.com/hook?x=1").is_ok());
        assert!(parse_callback_url("http://[2606:4700::1111]:8080/").is_ok());
        for (bad, want) in [
            ("/relative", "absolute"),
            ("ftp://example.com/", "http or https"),
            ("https://user:pw@example.com/", "user name"),
            ("not a url", "absolute"),
        ] {
            let err = parse_callback_url(bad).expect_err(bad).to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(parse_callback_url(&long), Err(CallbackError::TooLong));
    }

    #[test]
    fn signatures_verify_and_rotation_signs_with_every_secret() {
        let old: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            .parse()
            .expect("secret");
        let new = Secret::from_bytes(vec![7_u8; 32]);
        let reparsed: Secret = new.to_whsec().parse().expect("round trip");
        let body = br#"{"type":"job.succeeded"}"#;
        let header = sign(&[old.clone(), new.clone()], "msg_1", 1_700_000_000, body);
        assert_eq!(header.split(' ').count(), 2);
        for secret in [&old, &new, &reparsed] {
            verify(
                secret,
                "msg_1",
                "1700000000",
                &header,
                body,
                1_700_000_010,
                300,
            )
            .expect("verifies");
        }
        let other = Secret::from_bytes(vec![9_u8; 32]);
        assert_eq!(
            verify(
                &other,
                "msg_1",
                "1700000000",
                &header,
                body,
                1_700_000_000,
                300
            ),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(
                &old,
                "msg_1",
                "1700000000",
                &header,
                b"tampered",
                1_700_000_000,
                300
            ),
            Err(VerifyError::NoMatch)
        );
        assert!(matches!(
            verify(
                &old,
                "msg_1",
                "1700000000",
                &header,
                body,
                1_700_001_000,
                300
            ),
            Err(VerifyError::Stale(_))
        ));
        assert!("whsec_short".parse::<Secret>().is_err());
        assert!("nope".parse::<Secret>().is_err());
    }

    #[test]
    fn signing_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification and its reference libraries.
        let secret: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            .parse()
            .expect("secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(
                &[secret],
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                body
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn the_default_filter_is_how_the_job_ended() {
        assert!(CallbackEvent::Succeeded.selected_by(None));
        assert!(!CallbackEvent::Started.selected_by(None));
        assert!(CallbackEvent::Started.selected_by(Some(&[CallbackEvent::Started])));
        assert!(!CallbackEvent::Failed.selected_by(Some(&[CallbackEvent::Started])));
    }
}
