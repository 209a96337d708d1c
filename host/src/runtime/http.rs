//! Outbound HTTP for functions (`wasi:http/outgoing-handler`), deny by default: every request
//! is checked against the function's `allowed_hosts` grant before a connection is made. A
//! request to anything else fails with the WIT error `http-request-denied` (the guest sees an
//! error value, never a crash) and is recorded as a denial.
//!
//! Grant entries: `host` (ports 80 and 443), `host:port`, or `host:*` (any port); hosts compare
//! case-insensitively and exactly (no wildcards: `api.example.com` does not grant
//! `evil.api.example.com`).

use std::future::Future;
use std::sync::Arc;

use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::Denials;

/// Checks a grant entry's form; the error says what is wrong.
pub fn check_entry(entry: &str) -> Result<(), String> {
    let (host, port) = entry.rsplit_once(':').map_or((entry, None), |(h, p)| (h, Some(p)));
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !host.starts_with('.')
        && !host.starts_with('-');
    let port_ok = match port {
        None | Some("*") => true,
        Some(p) => p.parse::<u16>().is_ok_and(|p| p > 0),
    };
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!("`{entry}` is not `host`, `host:port` or `host:*` (no scheme, path or wildcard host)"))
    }
}

/// Whether `host`:`port` is granted by `allowed`.
pub fn is_allowed(allowed: &[String], host: &str, port: u16) -> bool {
    allowed.iter().any(|entry| {
        let (h, p) = entry.rsplit_once(':').map_or((entry.as_str(), None), |(h, p)| (h, Some(p)));
        h.eq_ignore_ascii_case(host)
            && match p {
                None => port == 80 || port == 443,
                Some("*") => true,
                Some(p) => p.parse::<u16>() == Ok(port),
            }
    })
}

/// The per-call `wasi:http` hooks: the grant, and where its denials go (the call's list,
/// shared with its other capabilities).
#[derive(Default)]
pub struct HttpGuard {
    pub allowed: Arc<Vec<String>>,
    pub denials: Denials,
}

type SendResult = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>), HttpError>;

impl WasiHttpHooks for HttpGuard {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        _ = fut;
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_string();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if !is_allowed(&self.allowed, &host, port) {
            self.denials.push(
                "allowed_hosts",
                &format!("{host}:{port}"),
                "not in the manifest's capabilities.allowed_hosts",
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_match_hosts_and_ports_exactly() {
        let allowed = vec!["api.example.com".to_string(), "127.0.0.1:8080".to_string(), "localhost:*".to_string()];
        assert!(is_allowed(&allowed, "api.example.com", 443));
        assert!(is_allowed(&allowed, "API.example.com", 80));
        assert!(!is_allowed(&allowed, "api.example.com", 8443));
        assert!(!is_allowed(&allowed, "evil.api.example.com", 443));
        assert!(!is_allowed(&allowed, "example.com", 443));
        assert!(is_allowed(&allowed, "127.0.0.1", 8080));
        assert!(!is_allowed(&allowed, "127.0.0.1", 8081));
        assert!(is_allowed(&allowed, "localhost", 1));
        for bad in ["https://api.example.com", "api.example.com/v1", "*.example.com", "", "h:0", "h:99999", ".x"] {
            assert!(check_entry(bad).is_err(), "{bad}");
        }
        for good in ["api.example.com", "127.0.0.1:8080", "localhost:*"] {
            assert!(check_entry(good).is_ok(), "{good}");
        }
    }
}
