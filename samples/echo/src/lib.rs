//! `echo`: answers 200 with the request body unchanged.
//!
//! The response keeps the request's `content-type`, or says `application/octet-stream` when
//! the request had none. It imports nothing but what every component gets.

use infercell_guest::{Error, Handler, Request, Response};

struct Echo;

impl Handler for Echo {
    fn handle(req: Request) -> Result<Response, Error> {
        let content_type = req.header("content-type").unwrap_or("application/octet-stream").to_owned();
        Ok(Response::new(200).header("content-type", content_type).body(req.body))
    }
}

infercell_guest::export!(Echo);

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)], body: &[u8]) -> Request {
        Request {
            method: "POST".to_owned(),
            path: "/".to_owned(),
            query: String::new(),
            headers: headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(),
            body: body.to_vec(),
        }
    }

    #[test]
    fn echoes_body_and_content_type() {
        let response = Echo::handle(request(&[("content-type", "text/csv")], b"a,b\n1,2\n")).expect("echo never fails");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"a,b\n1,2\n");
        assert_eq!(response.headers, [("content-type".to_owned(), "text/csv".to_owned())]);
    }

    #[test]
    fn defaults_to_octet_stream() {
        let response = Echo::handle(request(&[], &[0, 159, 146, 150])).expect("echo never fails");
        assert_eq!(response.body, [0, 159, 146, 150]);
        assert_eq!(response.headers, [("content-type".to_owned(), "application/octet-stream".to_owned())]);
    }
}
