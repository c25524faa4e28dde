//! The HTTP client webhooks go out with, and the resolver that keeps them off internal
//! addresses.
//!
//! The address check happens on what a name resolves to, inside the connection, so a
//! name that resolves to a public address when checked and to 127.0.0.1 when used (DNS
//! rebinding) cannot slip through. IP-literal URLs never reach a resolver; they are
//! checked before sending ([`jetjobs::webhook::AddressPolicy::check_url`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use jetjobs::webhook::{AddressPolicy, CallbackError};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A resolution whose every address was refused: the delivery fails for good.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub CallbackError);

/// Resolves with the system resolver and keeps only addresses the policy allows.
struct PolicyResolver {
    policy: AddressPolicy,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            // `lookup_host` resolves on tokio's blocking pool, off the async workers; the
            // request timeout bounds it.
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let mut allowed = Vec::new();
            let mut refused = None;
            for addr in resolved {
                match policy.check(addr.ip()) {
                    Ok(()) => allowed.push(addr),
                    Err(e) => refused = refused.or(Some(e)),
                }
            }
            match (allowed.is_empty(), refused) {
                (true, Some(e)) => Err(Box::new(Refused(e)) as _),
                (true, None) => Err(format!("{host} resolves to no address").into()),
                (false, _) => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

pub fn build(config: &crate::Config) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_secs))
        .connect_timeout(Duration::from_secs(config.timeout_secs))
        // A redirect would send the delivery to an address nobody checked.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would connect for us, past the address check.
        .no_proxy()
        // Retries are ours (recorded, with backoff), not the client's.
        .retry(reqwest::retry::never())
        .dns_resolver(Arc::new(PolicyResolver {
            policy: config.allow.clone(),
        }))
        .user_agent(concat!("jetjobs-notifier/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(4)
        .build()
        .context("building the webhook HTTP client")
}

/// The refusal behind a failed request, if the resolver refused every address.
pub fn refusal(error: &reqwest::Error) -> Option<&CallbackError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(Refused(reason)) = e.downcast_ref::<Refused>() {
            return Some(reason);
        }
        source = e.source();
    }
    None
}
