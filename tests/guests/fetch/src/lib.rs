//! `fetch`: `GET /?to=HOST:PORT/PATH` makes an outbound HTTP GET to `http://HOST:PORT/PATH`
//! through `wasi:http/outgoing-handler` and answers `status <code>: <body>`, or
//! `error: <what the host said>` when the request fails (a host not granted: `ErrorCode::HttpRequestDenied`).
//! `&n=N` makes the request N times and answers one line per request.

use infercell_guest::{Error, Handler, Request, Response};
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, OutgoingRequest, Scheme};

struct Fetch;

fn get(target: &str) -> Result<(u16, String), String> {
    let (authority, path) = target.split_once('/').map_or((target, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| "bad scheme".to_string())?;
    request.set_authority(Some(authority)).map_err(|()| format!("bad authority {authority}"))?;
    request.set_path_with_query(Some(&path)).map_err(|()| format!("bad path {path}"))?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    let response = loop {
        if let Some(result) = pending.get() {
            break result.map_err(|()| "response taken twice".to_string())?.map_err(|e| format!("{e:?}"))?;
        }
        pending.subscribe().block();
    };
    let status = response.status();
    let body = response.consume().map_err(|()| "no body".to_string())?;
    let stream = body.stream().map_err(|()| "no body stream".to_string())?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend(chunk),
            Err(wasi::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(format!("reading the body: {e:?}")),
        }
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

impl Handler for Fetch {
    fn handle(req: Request) -> Result<Response, Error> {
        let target = req.query_param("to").ok_or_else(|| Error::BadRequest("expected ?to=HOST:PORT/PATH".into()))?;
        let times: usize = req.query_param("n").map_or(Ok(1), |n| n.parse()).map_err(|_| Error::BadRequest("n is a count".into()))?;
        let answers: Vec<String> = (0..times)
            .map(|_| match get(&target) {
                Ok((status, body)) => format!("status {status}: {body}"),
                Err(e) => format!("error: {e}"),
            })
            .collect();
        Ok(Response::text(answers.join("\n")))
    }
}

infercell_guest::export!(Fetch);
