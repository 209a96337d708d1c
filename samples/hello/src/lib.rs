//! `hello`: a JSON greeting, `{"message":"<greeting>, <name>!"}`.
//!
//! The greeting is the config value `greeting` (the manifest sets it; "Hello" when unset).
//! The name is the query parameter `name`, else the field `"name"` of a JSON body, else
//! "world"; an empty name counts as none. A non-empty body must be JSON (an object whose
//! `name`, if present, is a string), otherwise the caller gets a 400 saying why.

use infercell_guest::{Error, Handler, Request, Response, config, log};
use serde::{Deserialize, Serialize};

/// The part of a request body this function reads; other fields are ignored.
#[derive(Deserialize)]
struct Body {
    name: Option<String>,
}

#[derive(Serialize)]
struct Greeting {
    message: String,
}

struct Hello;

impl Handler for Hello {
    fn handle(req: Request) -> Result<Response, Error> {
        // Parse a body even when the query names someone: a malformed body is always an error.
        let body_name = if req.body.is_empty() { None } else { req.json::<Body>()?.name };
        let name = req
            .query_param("name")
            .filter(|name| !name.is_empty())
            .or(body_name.filter(|name| !name.is_empty()))
            .unwrap_or_else(|| "world".to_owned());
        let greeting = config::get("greeting").unwrap_or_else(|| "Hello".to_owned());

        log::info(format!("greeting {name}"));
        Response::json(&Greeting { message: format!("{greeting}, {name}!") })
    }
}

infercell_guest::export!(Hello);

#[cfg(test)]
mod tests {
    //! Natively there is no host: `config::get` returns `None`, so the greeting is "Hello".

    use super::*;

    fn greet(query: &str, body: &str) -> Result<String, Error> {
        let response = Hello::handle(Request {
            method: "POST".to_owned(),
            path: "/".to_owned(),
            query: query.to_owned(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        })?;
        assert_eq!(response.status, 200);
        assert_eq!(response.headers, [("content-type".to_owned(), "application/json".to_owned())]);
        Ok(String::from_utf8(response.body).expect("JSON is UTF-8"))
    }

    #[test]
    fn greets_the_world_by_default() {
        assert_eq!(greet("", "").ok().as_deref(), Some(r#"{"message":"Hello, world!"}"#));
        assert_eq!(greet("name=", "{}").ok().as_deref(), Some(r#"{"message":"Hello, world!"}"#));
    }

    #[test]
    fn takes_the_name_from_the_query_then_the_body() {
        let expected = Some(r#"{"message":"Hello, Ada Lovelace!"}"#);
        assert_eq!(greet("name=Ada%20Lovelace", "").ok().as_deref(), expected);
        assert_eq!(greet("", r#"{"name":"Ada Lovelace"}"#).ok().as_deref(), expected);
        assert_eq!(greet("name=Ada+Lovelace", r#"{"name":"Grace"}"#).ok().as_deref(), expected);
    }

    #[test]
    fn rejects_a_body_that_is_not_json() {
        match greet("", "name=Ada") {
            Err(Error::BadRequest(message)) => {
                assert!(message.starts_with("request body is not JSON: "), "{message}");
            }
            other => panic!("expected a bad request, got {other:?}"),
        }
        assert!(matches!(greet("", r#"{"name":5}"#), Err(Error::BadRequest(_))));
    }
}
