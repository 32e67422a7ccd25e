//! The server's agent API (protocol v1, see docs/protocol.md).

use std::time::Duration;

use landfall_proto::verify::{VerifyRequest, VerifyResponse};
use landfall_proto::{ErrorBody, ErrorCode};
use landfall_proto::{
    EventsRequest, EventsResponse, HelloRequest, HelloResponse, WaitRequest, WaitResponse,
    AGENT_API,
};
use reqwest::StatusCode;
use serde::{de::DeserializeOwned, Serialize};

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
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
            Self::Decode { .. } => false,
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
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("landfall-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
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
        let resp = req.send().await.map_err(|source| ApiError::Transport {
            url: url.clone(),
            source,
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
