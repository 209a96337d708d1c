//! The commands' HTTP client: authenticated requests to the server, its answers as JSON or
//! as its error message, and printing an answer as JSON or as a readable summary.

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::cli::ClientArgs;

pub(super) struct Client {
    http: reqwest::Client,
    pub(super) url: String,
    key: Option<String>,
    pub(super) json: bool,
}

impl Client {
    pub(super) fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().build()?,
            url: args.url.trim_end_matches('/').to_string(),
            key: args.key.clone(),
            json: args.json,
        })
    }

    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> anyhow::Result<reqwest::RequestBuilder> {
        let key = self.key.as_deref().context("no API key: set INFERCELL_KEY (or pass --key)")?;
        Ok(self.http.request(method, format!("{}{path}", self.url)).bearer_auth(key))
    }

    /// Sends and returns the JSON body of a 2xx answer; otherwise the server's error message.
    pub(super) async fn send_json(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = req.send().await.with_context(|| format!("cannot reach the server at {}", self.url))?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            bail!("{}", server_error(status, &body));
        }
        serde_json::from_slice(&body).context("the server's answer is not JSON")
    }

    /// Sends a request whose success has no body (204); otherwise the server's error message.
    pub(super) async fn send_empty(&self, req: reqwest::RequestBuilder) -> anyhow::Result<()> {
        let response = req.send().await.with_context(|| format!("cannot reach the server at {}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            bail!("{}", server_error(status, &response.bytes().await?));
        }
        Ok(())
    }

    /// Prints the answer (JSON or the summary); a closed stdout (`| head`) is not an error.
    pub(super) fn print(&self, value: &Value, summary: impl FnOnce(&Value) -> String) {
        use std::io::Write as _;
        let text = if self.json { serde_json::to_string_pretty(value).unwrap_or_default() } else { summary(value) };
        let _ = writeln!(std::io::stdout(), "{text}");
    }
}

pub(super) fn server_error(status: reqwest::StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.get("error").is_some() => format!(
            "{} (HTTP {}, request id {})",
            v["error"].as_str().unwrap_or_default(),
            status.as_u16(),
            v["request_id"].as_str().unwrap_or("-")
        ),
        _ => format!("HTTP {}: {}", status, String::from_utf8_lossy(body).trim()),
    }
}
