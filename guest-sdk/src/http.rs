//! Helpers on the generated [`Request`] and [`Response`] records.
//!
//! The records are plain data (public fields, generated from `wit/function.wit`); these methods
//! only read or build them, so a handler can always fall back to the fields. Everything that
//! reads tenant input returns an [`Error`] value instead of panicking: a bad request is the
//! caller's mistake, and the host answers it with a 400.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Request, Response};

impl Request {
    /// The value of the first header named `name`, compared ASCII case-insensitively.
    ///
    /// The host passes header names in lower case and never passes the caller's
    /// `Authorization` header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(header, _)| header.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The first value of the query parameter `name`, percent-decoded (`+` is a space).
    ///
    /// A parameter without `=` has the value `""`. Invalid escapes are kept literally and
    /// invalid UTF-8 becomes U+FFFD, so this never fails.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_pairs(&self.query).find(|(key, _)| key == name).map(|(_, value)| value)
    }

    /// Every query parameter as decoded `(name, value)` pairs, in order, repeats included.
    pub fn query_params(&self) -> Vec<(String, String)> {
        query_pairs(&self.query).collect()
    }

    /// The body as UTF-8 text, or [`Error::BadRequest`] when it is not valid UTF-8.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.body).map_err(|e| Error::BadRequest(format!("request body is not UTF-8 text: {e}")))
    }

    /// Parses the body as JSON into `T`.
    ///
    /// Fails with [`Error::BadRequest`] whose message says what is wrong: the body is empty,
    /// is not JSON at all (`request body is not JSON: ...`), or is JSON of another shape than
    /// `T` (`request body JSON has the wrong shape: ...`).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        if self.body.is_empty() {
            return Err(Error::BadRequest("request body is empty; expected JSON".to_owned()));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            let message = match e.classify() {
                serde_json::error::Category::Data => {
                    format!("request body JSON has the wrong shape: {e}")
                }
                _ => format!("request body is not JSON: {e}"),
            };
            Error::BadRequest(message)
        })
    }
}

impl Response {
    /// A response with `status`, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: Vec::new() }
    }

    /// A 200 response whose body is `value` as JSON, with `content-type: application/json`.
    ///
    /// Fails with [`Error::Internal`] only if `value` cannot be represented as JSON (for
    /// example a map whose keys are not strings): that is the function's bug, not the caller's.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::Internal(format!("cannot encode the response as JSON: {e}")))?;
        Ok(Self::new(200).header("content-type", "application/json").body(body))
    }

    /// A 200 response whose body is `text`, with `content-type: text/plain; charset=utf-8`.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(200).header("content-type", "text/plain; charset=utf-8").body(text.into())
    }

    /// Replaces the status code.
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Sets the header `name` (stored in lower case) to `value`, replacing any earlier value.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into().to_ascii_lowercase();
        self.headers.retain(|(header, _)| !header.eq_ignore_ascii_case(&name));
        self.headers.push((name, value.into()));
        self
    }

    /// Adds a header `name` (stored in lower case) without removing earlier ones, for headers
    /// that may repeat such as `set-cookie`.
    pub fn append_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// Replaces the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// Splits an `application/x-www-form-urlencoded` query string into decoded pairs.
fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_component(key), decode_component(value))
    })
}

/// Percent-decodes one query component; `+` means a space, bad escapes stay as written.
fn decode_component(raw: &str) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        let decoded = match (byte, tail) {
            (b'+', _) => b' ',
            (b'%', [high, low, after @ ..]) => match (hex(*high), hex(*low)) {
                (Some(high), Some(low)) => {
                    rest = after;
                    (high << 4) | low
                }
                _ => b'%',
            },
            (other, _) => other,
        };
        out.push(decoded);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str, headers: &[(&str, &str)], body: &[u8]) -> Request {
        Request {
            method: "POST".to_owned(),
            path: "/".to_owned(),
            query: query.to_owned(),
            headers: headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(),
            body: body.to_vec(),
        }
    }

    fn bad_request_message(result: Result<serde_json::Value, Error>) -> String {
        match result {
            Err(Error::BadRequest(message)) => message,
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn header_lookup_ignores_case() {
        let req = request("", &[("content-type", "text/csv")], b"");
        assert_eq!(req.header("Content-Type"), Some("text/csv"));
        assert_eq!(req.header("accept"), None);
    }

    #[test]
    fn query_params_are_decoded() {
        let req = request("name=Ada+Lovelace&x=%41%2f&flag&bad=%zz%4&name=second", &[], b"");
        assert_eq!(req.query_param("name").as_deref(), Some("Ada Lovelace"));
        assert_eq!(req.query_param("x").as_deref(), Some("A/"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("bad").as_deref(), Some("%zz%4"));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(req.query_params().len(), 5);
    }

    #[test]
    fn query_decoding_survives_invalid_utf8() {
        let req = request("name=%ff%C3%A9", &[], b"");
        assert_eq!(req.query_param("name").as_deref(), Some("\u{fffd}é"));
    }

    #[test]
    fn json_errors_name_the_problem() {
        let empty = bad_request_message(request("", &[], b"").json());
        assert!(empty.contains("empty"), "{empty}");

        let garbage = bad_request_message(request("", &[], b"not json").json());
        assert!(garbage.starts_with("request body is not JSON: "), "{garbage}");

        let truncated = bad_request_message(request("", &[], b"{\"a\":").json());
        assert!(truncated.starts_with("request body is not JSON: "), "{truncated}");

        let shape = match request("", &[], b"[1]").json::<std::collections::BTreeMap<String, u8>>() {
            Err(Error::BadRequest(message)) => message,
            other => panic!("expected a bad request, got {other:?}"),
        };
        assert!(shape.starts_with("request body JSON has the wrong shape: "), "{shape}");
    }

    #[test]
    fn json_parses_a_valid_body() {
        let value: serde_json::Value = request("", &[], br#"{"name":"Ada"}"#).json().expect("valid JSON parses");
        assert_eq!(value["name"], "Ada");
    }

    #[test]
    fn response_builders_set_headers_once() {
        let response = Response::json(&serde_json::json!({"ok": true}))
            .expect("a JSON object encodes")
            .header("Content-Type", "application/problem+json")
            .append_header("set-cookie", "a=1")
            .append_header("set-cookie", "b=2")
            .status(201);
        assert_eq!(response.status, 201);
        assert_eq!(
            response.headers,
            [
                ("content-type".to_owned(), "application/problem+json".to_owned()),
                ("set-cookie".to_owned(), "a=1".to_owned()),
                ("set-cookie".to_owned(), "b=2".to_owned()),
            ]
        );
        assert_eq!(response.body, br#"{"ok":true}"#);
    }

    #[test]
    fn text_response_is_plain_text() {
        let response = Response::text("hi");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"hi");
        assert_eq!(response.headers[0].1, "text/plain; charset=utf-8");
    }

    #[test]
    fn unencodable_json_is_an_internal_error() {
        let mut map = std::collections::BTreeMap::new();
        map.insert(vec![1u8], 1u8);
        assert!(matches!(Response::json(&map), Err(Error::Internal(_))));
    }
}
