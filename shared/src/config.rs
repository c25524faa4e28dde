//! Configuration shared by every service: how to reach NATS.
//!
//! Each service has one typed config struct (clap, with `env` fallbacks), and flattens
//! [`NatsArgs`] into it, so every value can come from a flag or an environment variable
//! and the defaults work on a developer machine.

use std::path::PathBuf;
use std::time::Duration;

/// Why a service could not reach NATS; each says which setting to look at.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url:?} is not a NATS server URL: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("NATS_URL names no server")]
    NoServer,
    #[error("reading NATS credentials {path}: {source}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not connect to NATS at {url} within {secs}s: {source}")]
    Unreachable {
        url: String,
        secs: u64,
        #[source]
        source: async_nats::ConnectError,
    },
}

#[derive(clap::Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated: with a cluster, list several so a service
    /// can (re)connect while any one of them is down.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Credentials file (JWT + nkey seed).
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// User name, with --nats-password.
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// How long to keep trying to reach NATS at start before giving up.
    #[arg(long, env = "JETJOBS_CONNECT_TIMEOUT_SECS", default_value_t = 30)]
    pub connect_timeout_secs: u64,
}

impl NatsArgs {
    pub fn local(url: impl Into<String>) -> Self {
        Self {
            nats_url: url.into(),
            nats_creds: None,
            nats_user: None,
            nats_password: None,
            connect_timeout_secs: 30,
        }
    }

    /// Connects as `name` (shown by `nats server report connections`), retrying with
    /// backoff until `connect_timeout_secs` have passed. After the first connection the
    /// client reconnects by itself, forever.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, ConnectError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.connect_timeout_secs);
        let mut delay = Duration::from_millis(100);
        loop {
            match self.options(name).await?.connect(self.servers()?).await {
                Ok(client) => return Ok(client),
                Err(e) if tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(url = %self.nats_url, error = %e, "NATS is not reachable yet; retrying.");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(source) => {
                    return Err(ConnectError::Unreachable {
                        url: self.nats_url.clone(),
                        secs: self.connect_timeout_secs,
                        source,
                    });
                }
            }
        }
    }

    /// The servers of `nats_url`, which may list several, comma-separated.
    pub fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, ConnectError> {
        let servers = self
            .nats_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(|url| {
                url.parse::<async_nats::ServerAddr>()
                    .map_err(|source| ConnectError::BadUrl {
                        url: url.to_string(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err(ConnectError::NoServer);
        }
        Ok(servers)
    }

    async fn options(&self, name: &str) -> Result<async_nats::ConnectOptions, ConnectError> {
        let mut options = match &self.nats_creds {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| ConnectError::Credentials {
                    path: path.display().to_string(),
                    source,
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            options = options
                .user_and_password(user.clone(), password.clone())
                .custom_inbox_prefix(inbox_prefix(user));
        }
        Ok(options
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => tracing::warn!("Disconnected from NATS."),
                    async_nats::Event::Connected => tracing::info!("Connected to NATS."),
                    other => tracing::debug!(event = %other, "NATS connection event."),
                }
            }))
    }
}

/// Where a client connected as `user` gets its replies: `_INBOX.<user>`. Every JetStream
/// call, KV read and watch replies to an inbox, so with one prefix per user the NATS
/// permissions can let each service read its own replies and no one else's
/// (`deploy/nats/auth.conf`): a processor cannot listen in on the gateway's KV reads.
pub fn inbox_prefix(user: &str) -> String {
    let token_safe = !user.is_empty()
        && !user
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace());
    if token_safe {
        format!("_INBOX.{user}")
    } else {
        // Not one subject token: the shared default, which auth.conf cannot narrow.
        "_INBOX".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_gets_its_own_inbox_prefix() {
        assert_eq!(inbox_prefix("processor-io"), "_INBOX.processor-io");
        assert_eq!(inbox_prefix("a.b"), "_INBOX");
        assert_eq!(inbox_prefix(""), "_INBOX");
    }

    #[test]
    fn nats_url_may_list_several_servers() {
        let args = NatsArgs::local("nats://a:4222, nats://b:4223,nats://c:4224");
        let servers = args.servers().expect("three servers");
        assert_eq!(servers.len(), 3);
        assert!(NatsArgs::local("nats://a:4222,,").servers().is_ok());
        assert!(NatsArgs::local(" , ").servers().is_err());
        assert!(NatsArgs::local("nats://a:notaport").servers().is_err());
    }
}
