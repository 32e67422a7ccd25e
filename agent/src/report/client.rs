//! The server's agent API (protocol v1, see docs/protocol.md).

use std::time::Duration;

use landfall_proto::agent::ErrorBody;
use landfall_proto::verify::{VerifyRequest, VerifyResponse};
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
    },
    #[error("{url} answered with a body that is not the expected JSON: {source}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ApiError {
    /// Connection problems and 408/429/5xx are worth retrying; other 4xx are not.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Self::Decode { .. } => false,
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
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.error)
                .unwrap_or_else(|_| text.chars().take(300).collect());
            return Err(ApiError::Status {
                url,
                status,
                message,
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
