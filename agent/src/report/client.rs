//! The server's agent API (protocol v1, see docs/protocol.md).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use landfall_proto::verify::{VerifyRequest, VerifyResponse};
use landfall_proto::{ErrorBody, ErrorCode};
use landfall_proto::{
    EventsRequest, EventsResponse, HelloRequest, HelloResponse, WaitRequest, WaitResponse,
    AGENT_API,
};
use reqwest::StatusCode;

use super::tls::ServerTrust;
use serde::{de::DeserializeOwned, Serialize};

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// The last certificate refusal of the pinned verifier ([`ServerTrust`]).
    refusal: Arc<Mutex<Option<String>>>,
}

/// Why a call failed; [`ApiError::retryable`] says whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        message: String,
        /// The body's code; for a body without one (an older server, a
        /// proxy), the status's generic code ([`ErrorCode::from_status`]).
        code: ErrorCode,
    },
    /// The server's certificate is not the pinned one: never retried.
    #[error("{url}: {message}")]
    Untrusted { url: String, message: String },
    #[error("{url} answered with a body that is not the expected JSON: {source}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ApiError {
    /// Connection problems and the codes of a passing trouble (5xx, 408,
    /// 429: [`ErrorCode::retryable`]) are worth retrying; others are not.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { code, .. } => code.retryable(),
            Self::Decode { .. } | Self::Untrusted { .. } => false,
        }
    }

    /// The server's code for an answer that was an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl Client {
    /// A client of the server at `base` that accepts only what `trust` pins.
    pub fn new(base: &str, trust: &ServerTrust) -> anyhow::Result<Self> {
        let refusal = Arc::new(Mutex::new(None));
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(trust.client_config(refusal.clone())?)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("landfall-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            refusal,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &Req,
    ) -> Result<Resp, ApiError> {
        self.post_with(path, bearer, body, None).await
    }

    /// `post` with its own timeout instead of the client's 30 s.
    async fn post_with<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, ApiError> {
        let url = format!("{}{AGENT_API}/{path}", self.base);
        let mut req = self.http.post(&url).json(body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|source| {
            let refused = self
                .refusal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            match refused {
                Some(message) => ApiError::Untrusted {
                    url: url.clone(),
                    message,
                },
                None => ApiError::Transport {
                    url: url.clone(),
                    source,
                },
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let (message, code) = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(b) => (b.error, b.code),
                Err(_) => (text.chars().take(300).collect(), ErrorCode::Unknown),
            };
            let code = match code {
                ErrorCode::Unknown => ErrorCode::from_status(status.as_u16()),
                code => code,
            };
            return Err(ApiError::Status {
                url,
                status,
                message,
                code,
            });
        }
        resp.json()
            .await
            .map_err(|source| ApiError::Decode { url, source })
    }

    pub async fn hello(&self, req: &HelloRequest) -> Result<HelloResponse, ApiError> {
        self.post("hello", None, req).await
    }

    pub async fn events(
        &self,
        agent_token: &str,
        req: &EventsRequest,
    ) -> Result<EventsResponse, ApiError> {
        self.post("events", Some(agent_token), req).await
    }

    /// `POST wait`: a failed agent long-polls for the operator's answer.
    /// The HTTP timeout is stretched past the requested hold time.
    pub async fn wait(
        &self,
        agent_token: &str,
        req: &WaitRequest,
    ) -> Result<WaitResponse, ApiError> {
        let timeout = Duration::from_secs(req.timeout_secs + 15);
        self.post_with("wait", Some(agent_token), req, Some(timeout))
            .await
    }

    /// `POST verify` with the verify token (first boot of the installed system).
    pub async fn verify(
        &self,
        verify_token: &str,
        req: &VerifyRequest,
    ) -> Result<VerifyResponse, ApiError> {
        self.post("verify", Some(verify_token), req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request with `status` and `body`.
    async fn answering(status: &'static str, body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 16384];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        format!("http://{addr}")
    }

    async fn hello_error(status: &'static str, body: &'static str) -> ApiError {
        let client =
            Client::new(&answering(status, body).await, &ServerTrust::InsecureHttp).unwrap();
        let req = HelloRequest {
            boot_token: "t".into(),
            agent_version: "test".into(),
            protocol: 1,
            inventory: Default::default(),
            nonce: None,
        };
        client.hello(&req).await.unwrap_err()
    }

    #[tokio::test]
    async fn the_code_of_the_body_decides_and_a_body_without_one_falls_back_to_the_status() {
        let e = hello_error(
            "401 Unauthorized",
            r#"{"error":"boot token unknown or expired","code":"boot_token_invalid"}"#,
        )
        .await;
        assert_eq!(e.code(), Some(ErrorCode::BootTokenInvalid), "{e}");
        assert!(!e.retryable());
        assert!(e.to_string().contains("401"), "{e}");
        // A proxy's page, or a server older than the codes.
        let e = hello_error("502 Bad Gateway", "<html>bad gateway</html>").await;
        assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
        assert!(e.retryable());
        let e = hello_error("409 Conflict", r#"{"error":"no role"}"#).await;
        assert_eq!(e.code(), Some(ErrorCode::Conflict), "{e}");
        assert!(!e.retryable());
        // A code newer than this agent: the status's generic code.
        let e = hello_error(
            "503 Service Unavailable",
            r#"{"error":"x","code":"new_thing"}"#,
        )
        .await;
        assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
        assert!(e.retryable());
    }
}
