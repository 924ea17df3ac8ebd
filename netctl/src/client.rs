//! Connecting to the manager's Control service with the admin token, over
//! TLS trusting only the CA the token pins.

use crate::cli::ClientArgs;
use anyhow::{anyhow, Context};
use netctl_proto::control_client::ControlClient;
use netctl_proto::convention::{ADMIN_TOKEN_FILE, DEFAULT_MANAGER_DATA_DIR};
use netctl_proto::pki::{Token, TokenKind};
use netctl_proto::BearerToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A Control client that presents the admin token.
pub type Control = ControlClient<InterceptedService<Channel, BearerToken>>;

/// Connects to the manager named in `args`.
pub async fn connect(args: &ClientArgs) -> anyhow::Result<Control> {
    let token = match &args.token {
        Some(token) => token.clone(),
        None => {
            // The manager's own host: its admin token file.
            let path = std::path::Path::new(DEFAULT_MANAGER_DATA_DIR).join(ADMIN_TOKEN_FILE);
            std::fs::read_to_string(&path).map(|t| t.trim().to_string()).map_err(|err| {
                anyhow!(
                    "no admin token: pass --token or set NETCTL_TOKEN (reading {}: {err})",
                    path.display()
                )
            })?
        }
    };
    let parsed = Token::parse(&token).map_err(|err| anyhow!("admin token: {err}"))?;
    if parsed.kind != TokenKind::Admin {
        anyhow::bail!("the token given is a join token: client commands need the admin token");
    }
    let interceptor = BearerToken::new(&token).context("admin token")?;
    let (channel, _) = netctl_proto::connect_with_token(&args.manager, &parsed).await?;
    Ok(ControlClient::with_interceptor(channel, interceptor))
}

/// The manager refused a request; shown as Docker shows a daemon's refusal.
#[derive(Debug)]
pub struct ManagerRefusal(pub String);

impl std::fmt::Display for ManagerRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Error response from manager: {}", self.0)
    }
}

impl std::error::Error for ManagerRefusal {}

/// Turns a gRPC error into what the user reads.
pub fn rpc_error(status: tonic::Status) -> anyhow::Error {
    ManagerRefusal(status.message().to_string()).into()
}

/// A failure whose details were already printed (one line per object of a
/// multi-object command); only the exit code remains to be set.
#[derive(Debug)]
pub struct AlreadyReported;

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failures were reported above")
    }
}

impl std::error::Error for AlreadyReported {}

/// Runs `call` for each item, handing successes to `done` and printing each
/// refusal; fails at the end if any call did, as Docker does.
pub async fn for_each<I, T, F, Fut>(items: Vec<I>, call: F, mut done: impl FnMut(T)) -> anyhow::Result<()>
where
    F: Fn(I) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut failed = false;
    for item in items {
        match call(item).await {
            Ok(value) => done(value),
            Err(status) => {
                eprintln!("{}", rpc_error(status));
                failed = true;
            }
        }
    }
    if failed {
        Err(AlreadyReported.into())
    } else {
        Ok(())
    }
}
