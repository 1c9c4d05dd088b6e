//! HTTP plumbing shared by the REST backends (clnrest, LNbits): the client (pinned or
//! private-CA TLS when a certificate is configured, public roots otherwise), transport error
//! mapping and bounded reading of answers.

use rustls::pki_types::CertificateDer;

use super::tls::{client_config, PinnedVerifier};
use super::{NodeError, NODE_TIMEOUT};

/// Largest answer body read from a node.
const MAX_BODY: usize = 64 * 1024;
/// Longest piece of an error body kept for logs.
const MAX_SNIPPET: usize = 200;

pub fn client(
    tls_cert: Option<Vec<CertificateDer<'static>>>,
) -> Result<reqwest::Client, NodeError> {
    let mut builder = reqwest::Client::builder()
        .timeout(NODE_TIMEOUT)
        .connect_timeout(NODE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tollway/", env!("CARGO_PKG_VERSION")));
    if let Some(certs) = tls_cert {
        let verifier =
            PinnedVerifier::pinned_or_ca(certs).map_err(|e| NodeError::Connect(e.to_string()))?;
        let config =
            client_config(verifier, false).map_err(|e| NodeError::Connect(e.to_string()))?;
        builder = builder.use_preconfigured_tls(config);
    }
    builder
        .build()
        .map_err(|e| NodeError::Connect(format!("cannot build HTTP client: {e}")))
}

/// A failed request (no answer) → our error. reqwest's messages never carry headers.
pub fn send_error(e: &reqwest::Error) -> NodeError {
    if e.is_timeout() {
        NodeError::Timeout {
            ms: u64::try_from(NODE_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        }
    } else {
        // Include the source chain: "error sending request" alone says nothing.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        NodeError::Connect(text)
    }
}

/// Status and body (at most [`MAX_BODY`] bytes) of an answer.
pub async fn read(response: reqwest::Response) -> Result<(u16, Vec<u8>), NodeError> {
    let status = response.status().as_u16();
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| send_error(&e))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(NodeError::BadAnswer(format!(
                "answer larger than {MAX_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

/// The start of a body, printable, for logs.
pub fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(MAX_SNIPPET)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
