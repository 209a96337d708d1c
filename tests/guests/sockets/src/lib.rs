//! `sockets`: reaches for the network with `std::net`, which makes the component import
//! `wasi:sockets`. The platform never provides sockets, so the upload must be refused, naming
//! the interface.

use infercell_guest::{Error, Handler, Request, Response};

struct Sockets;

impl Handler for Sockets {
    fn handle(req: Request) -> Result<Response, Error> {
        let target = req.query_param("to").unwrap_or_else(|| "127.0.0.1:80".to_string());
        match std::net::TcpStream::connect(target.as_str()) {
            Ok(_) => Ok(Response::text(format!("connected to {target}"))),
            Err(e) => Ok(Response::text(format!("refused: {e}"))),
        }
    }
}

infercell_guest::export!(Sockets);
