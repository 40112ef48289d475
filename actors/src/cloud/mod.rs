//! The JumpCloud API client: the only code that knows JumpCloud's URLs, headers and JSON.
//!
//! This module builds requests and classifies answers; rate limiting, retries and ordering belong to
//! the API actor that owns the one client instance.

mod bound;
mod error;
mod groups;
mod users;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use rustls::ClientConfig;
use serde::Deserialize;

pub use bound::JcProfile;
pub use error::CloudError;
pub use groups::{
    group_description, group_marker, AssocTarget, GraphOp, JcGroup, GROUP_ANCHOR_PREFIX,
};
pub(crate) use users::state_name;
pub use users::{
    with_anchor_attribute, JcAttribute, JcUser, UserUpdate, ANCHOR_ATTRIBUTE, EXTERNAL_SOURCE_TYPE,
    PAGE_LIMIT,
};

use crate::secret::Secret;

/// How to reach one JumpCloud organisation.
#[derive(Clone, Debug)]
pub struct CloudEndpoint {
    /// Console base URL without `/api`, e.g. `https://console.jumpcloud.com` (US) or the EU/IN console.
    pub base_url: String,
    pub api_key: Secret,
    /// Sent as `x-org-id` when set (multi-tenant admins need it).
    pub org_id: Option<String>,
    pub timeout: Duration,
}

/// A configured HTTP client for one organisation.
#[derive(Clone)]
pub struct CloudClient {
    http: reqwest::Client,
    endpoint: Arc<CloudEndpoint>,
}

/// What the key probe learned.
#[derive(Clone, Debug)]
pub struct KeyProbe {
    /// `totalCount` of `GET /api/systemusers`: how many users the organisation holds.
    pub user_count: u64,
}

#[derive(Deserialize)]
struct SystemUsersPage {
    #[serde(rename = "totalCount")]
    total_count: Option<u64>,
}

impl CloudClient {
    pub fn new(endpoint: CloudEndpoint, tls: Arc<ClientConfig>) -> Result<Self, CloudError> {
        let base = url::Url::parse(&endpoint.base_url).map_err(|e| CloudError::BadBaseUrl {
            url: endpoint.base_url.clone(),
            reason: e.to_string(),
        })?;
        if base.scheme() != "https" && base.scheme() != "http" {
            return Err(CloudError::BadBaseUrl {
                url: endpoint.base_url.clone(),
                reason: "scheme must be https".into(),
            });
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut key =
            HeaderValue::from_str(endpoint.api_key.expose()).map_err(|_| CloudError::BadApiKey)?;
        key.set_sensitive(true);
        headers.insert("x-api-key", key);
        if let Some(org) = &endpoint.org_id {
            let org = HeaderValue::from_str(org).map_err(|_| CloudError::BadOrgId {
                org_id: org.clone(),
            })?;
            headers.insert("x-org-id", org);
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .default_headers(headers)
            .timeout(endpoint.timeout)
            .connect_timeout(endpoint.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("forestsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CloudError::Client(e.to_string()))?;
        Ok(CloudClient {
            http,
            endpoint: Arc::new(endpoint),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.endpoint.base_url.trim_end_matches('/'), path)
    }

    /// Proves TLS, the API key and the org id with the cheapest read there is.
    pub async fn probe_key(&self) -> Result<KeyProbe, CloudError> {
        let url = self.url("/api/systemusers?limit=1&fields=_id");
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| CloudError::from_transport(&url, e))?;
        let response = CloudError::check_status(&url, response).await?;
        let page: SystemUsersPage = Self::read_json(&url, response).await?;
        Ok(KeyProbe {
            user_count: page.total_count.unwrap_or(0),
        })
    }
}
