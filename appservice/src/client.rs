//! Homeserver → appservice requests: transactions, pings, user and alias queries, third-party
//! look-ups. Every request carries the registration's `hs_token` as a bearer token, and only to
//! the registration's URL (never as a query parameter, where logs would keep it).

use std::time::Duration;

use serde::Serialize;
use serde_json::{value::RawValue, Value as JsonValue};

use crate::Registration;

/// Why a request to an appservice did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the appservice has no URL")]
    NoUrl,
    #[error("the appservice could not be reached: {0}")]
    Unreachable(String),
    #[error("the appservice did not answer in time")]
    Timeout,
    /// It answered with an error status; `errcode` when its body was a Matrix error.
    #[error("the appservice answered {status}{}", errcode.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Status {
        status: u16,
        errcode: Option<String>,
        body: String,
    },
}

/// The body of `PUT /_matrix/app/v1/transactions/{txnId}`, with the unstable names that bridges
/// still read next to the stable ones.
#[derive(Debug, Default, Serialize)]
pub struct Transaction<'a> {
    pub events: Vec<&'a RawValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ephemeral: Vec<&'a RawValue>,
    /// MSC2409's name for `ephemeral`.
    #[serde(
        rename = "de.sorunome.msc2409.ephemeral",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub msc2409_ephemeral: Vec<&'a RawValue>,
    /// To-device messages for the namespace's users (MSC2409 / MSC4203).
    #[serde(
        rename = "de.sorunome.msc2409.to_device",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub to_device: Vec<&'a RawValue>,
    /// Device-list changes of users the namespace shares rooms with (MSC3202).
    #[serde(
        rename = "org.matrix.msc3202.device_lists",
        skip_serializing_if = "Option::is_none"
    )]
    pub device_lists: Option<DeviceLists>,
    /// One-time key counts of the namespace's devices (MSC3202).
    #[serde(
        rename = "org.matrix.msc3202.device_one_time_keys_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub one_time_keys_count: Option<JsonValue>,
    #[serde(
        rename = "org.matrix.msc3202.device_unused_fallback_key_types",
        skip_serializing_if = "Option::is_none"
    )]
    pub unused_fallback_key_types: Option<JsonValue>,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DeviceLists {
    pub changed: Vec<String>,
    pub left: Vec<String>,
}

/// An HTTP client for appservices.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
}

impl Client {
    /// `timeout` bounds every request; appservices run next to the server, so it is short.
    pub fn new(timeout: Duration) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        Ok(Self { http })
    }

    fn url(reg: &Registration, path: &str) -> Result<String, ClientError> {
        let base = reg.url.as_deref().ok_or(ClientError::NoUrl)?;
        Ok(format!("{}{path}", base.trim_end_matches('/')))
    }

    async fn send(
        &self,
        reg: &Registration,
        request: reqwest::RequestBuilder,
    ) -> Result<JsonValue, ClientError> {
        let response = request
            .bearer_auth(&reg.hs_token)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    ClientError::Timeout
                } else {
                    ClientError::Unreachable(e.to_string())
                }
            })?;
        let status = response.status();
        let body = response.text().await.map_err(|e| {
            if e.is_timeout() {
                ClientError::Timeout
            } else {
                ClientError::Unreachable(e.to_string())
            }
        })?;
        if !status.is_success() {
            let errcode = serde_json::from_str::<JsonValue>(&body)
                .ok()
                .and_then(|v| v.get("errcode")?.as_str().map(str::to_owned));
            return Err(ClientError::Status {
                status: status.as_u16(),
                errcode,
                body: body.chars().take(500).collect(),
            });
        }
        Ok(serde_json::from_str(&body).unwrap_or(JsonValue::Null))
    }

    /// Pushes a transaction. The same `txn_id` must always carry the same content.
    pub async fn push(
        &self,
        reg: &Registration,
        txn_id: &str,
        transaction: &Transaction<'_>,
    ) -> Result<(), ClientError> {
        let url = Self::url(
            reg,
            &format!("/_matrix/app/v1/transactions/{}", encode(txn_id)),
        )?;
        self.send(reg, self.http.put(url).json(transaction))
            .await
            .map(drop)
    }

    /// `POST /_matrix/app/v1/ping`.
    pub async fn ping(
        &self,
        reg: &Registration,
        transaction_id: Option<&str>,
    ) -> Result<(), ClientError> {
        let url = Self::url(reg, "/_matrix/app/v1/ping")?;
        let body = match transaction_id {
            Some(t) => serde_json::json!({ "transaction_id": t }),
            None => serde_json::json!({}),
        };
        self.send(reg, self.http.post(url).json(&body))
            .await
            .map(drop)
    }

    /// Asks whether a user of the appservice's namespace exists (the appservice creates it if
    /// so). `Ok(false)` on 404.
    pub async fn query_user(&self, reg: &Registration, user_id: &str) -> Result<bool, ClientError> {
        self.query(reg, &format!("/_matrix/app/v1/users/{}", encode(user_id)))
            .await
    }

    /// Asks whether a room alias of the appservice's namespace exists (the appservice creates
    /// the room and the alias if so). `Ok(false)` on 404.
    pub async fn query_alias(&self, reg: &Registration, alias: &str) -> Result<bool, ClientError> {
        self.query(reg, &format!("/_matrix/app/v1/rooms/{}", encode(alias)))
            .await
    }

    async fn query(&self, reg: &Registration, path: &str) -> Result<bool, ClientError> {
        let url = Self::url(reg, path)?;
        match self.send(reg, self.http.get(url)).await {
            Ok(_) => Ok(true),
            Err(ClientError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A third-party look-up (`/_matrix/app/v1/thirdparty/...`), passed through as JSON.
    pub async fn thirdparty(
        &self,
        reg: &Registration,
        path: &str,
        query: &[(String, String)],
    ) -> Result<JsonValue, ClientError> {
        let mut url = url::Url::parse(&Self::url(
            reg,
            &format!("/_matrix/app/v1/thirdparty/{path}"),
        )?)
        .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        url.query_pairs_mut().extend_pairs(query);
        self.send(reg, self.http.get(url)).await
    }
}

/// Percent-encodes one path segment.
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
