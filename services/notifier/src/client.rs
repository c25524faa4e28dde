//! The HTTP(S) client webhooks go out with, and the resolver that keeps them off internal
//! addresses.
//!
//! It is hyper's client with rustls (the `ring` provider) rather than reqwest: reqwest's
//! TLS features would be unified into every other reqwest user of the workspace.
//!
//! The address check happens on what a name resolves to, inside the connection, so a
//! name that resolves to a public address when checked and to 127.0.0.1 when used (DNS
//! rebinding) cannot slip through. IP-literal URLs never reach a resolver; they are
//! checked before sending ([`jetjobs::webhook::AddressPolicy::check_url`]).
//!
//! What reqwest gave for free is kept by construction: hyper follows no redirect and
//! knows no proxy, and the caller bounds each delivery with one total timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use jetjobs::webhook::{AddressPolicy, CallbackError};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

pub type HttpClient = Client<HttpsConnector<HttpConnector<PolicyResolver>>, Full<Bytes>>;

/// A resolution whose every address was refused: the delivery fails for good.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub CallbackError);

/// A name that resolved to nothing at all.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves to no address")]
struct Unresolved(String);

/// Resolves with the system resolver and keeps only addresses the policy allows.
#[derive(Clone)]
pub struct PolicyResolver {
    policy: AddressPolicy,
}

type Resolving = Pin<
    Box<
        dyn Future<
                Output = Result<
                    std::vec::IntoIter<SocketAddr>,
                    Box<dyn std::error::Error + Send + Sync>,
                >,
            > + Send,
    >,
>;

impl tower_service::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            // `lookup_host` resolves on tokio's blocking pool, off the async workers; the
            // delivery's timeout bounds it.
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
                (true, None) => Err(Box::new(Unresolved(host)) as _),
                (false, _) => Ok(allowed.into_iter()),
            }
        })
    }
}

/// The roots a receiver's certificate must chain to: the system's, plus those of
/// `JETJOBS_WEBHOOK_CA_FILE` (a private CA, say).
fn roots(ca_file: Option<&Path>) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "Some system CA certificates could not be loaded.");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .with_context(|| format!("reading CA certificates from {}", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "{} holds no PEM certificate",
            path.display()
        );
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("a CA certificate of {}", path.display()))?;
        }
    } else if added == 0 {
        tracing::warn!("No trusted CA certificate found; https webhooks will fail.");
    }
    Ok(roots)
}

pub fn build(config: &crate::Config) -> anyhow::Result<HttpClient> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots(config.ca_file.as_deref())?)
        .with_no_client_auth();
    let mut http = HttpConnector::new_with_resolver(PolicyResolver {
        policy: config.allow.clone(),
    });
    // https URLs go to the TLS layer with their scheme intact.
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(config.timeout_secs)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4)
        .pool_idle_timeout(Duration::from_secs(30))
        // Retries are ours (recorded, with backoff), not the client's.
        .retry_canceled_requests(false)
        .build(connector))
}

/// The refusal behind a failed request, if the resolver refused every address.
pub fn refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a CallbackError> {
    let mut source: Option<&'a (dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(Refused(reason)) = e.downcast_ref::<Refused>() {
            return Some(reason);
        }
        source = e.source();
    }
    None
}
