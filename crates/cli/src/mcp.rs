//! `paygent mcp`: MCP on stdin and stdout for a local client (a desktop app launches it as a command), relayed
//! message by message to a Paygent server's `/mcp` over streamable HTTP. The tools run in the server, as the key
//! given here, so the two transports answer alike.

use anyhow::Context;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::Transport;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, RoleServer};

/// Relays until the local client closes its input or the server goes away.
pub async fn relay(server: &str, token: &str) -> anyhow::Result<()> {
    let uri = format!("{}/mcp", server.trim_end_matches('/'));
    let mut config = StreamableHttpClientTransportConfig::with_uri(uri).auth_header(token);
    // Paygent's endpoint is stateless: any instance answers any message.
    config.allow_stateless = true;
    let mut upstream = StreamableHttpClientTransport::from_config(config);
    let mut local =
        AsyncRwTransport::<RoleServer, _, _>::new(tokio::io::stdin(), tokio::io::stdout());
    let ended = loop {
        tokio::select! {
            asked = Transport::<RoleServer>::receive(&mut local) => match asked {
                Some(message) => {
                    Transport::<RoleClient>::send(&mut upstream, message)
                        .await
                        .context("the Paygent server did not take the message")?;
                }
                None => break Ok(()),
            },
            answered = Transport::<RoleClient>::receive(&mut upstream) => match answered {
                Some(message) => {
                    Transport::<RoleServer>::send(&mut local, message)
                        .await
                        .context("the local client went away")?;
                }
                None => break Err(anyhow::anyhow!("the Paygent server closed the connection")),
            },
        }
    };
    let _ = Transport::<RoleClient>::close(&mut upstream).await;
    ended
}
