//! `hostile`: a function that misbehaves in a chosen way, picked by the request path.
//!
//! The host's tests call it to prove that one tenant's bad code costs only that tenant's
//! request: a trap, a runaway loop, memory exhaustion and output floods must each end in an
//! error response while the host keeps serving, and the sandbox must show no ambient
//! environment, arguments or files. Every path and what it does:
//!
//! | path | behaviour |
//! |---|---|
//! | `/ok` | 200 `ok` |
//! | `/trap` | panics, which traps the instance |
//! | `/loop` | spins forever (only an epoch deadline or fuel stops it) |
//! | `/alloc` | keeps 1 MiB blocks alive and touched until allocation fails (aborts) |
//! | `/stdout`, `/stderr` | prints 10 MiB in 1 KiB lines, then 200 |
//! | `/log` | writes 10,000 lines through the `log` import, then 200 |
//! | `/env` | 200 `{"vars":[[name,value],...],"args":[...]}` from `std::env` |
//! | `/fs` | 200 `denied: <error>` or `read: <bytes>` for `/etc/passwd` |
//! | `/bad-request`, `/not-found`, `/internal` | the matching [`Error`] value |
//! | `/status/{n}` | an empty response with status `n` (400 if `n` is not a `u16`) |
//! | `/headers` | 200 with the request headers as a JSON list of `[name, value]` |
//! | `/nn/{probe}` | misuses wasi:nn in the named way; 200 `ok: ...` or `error <code>: <message>` |
//! | `/file?name=N` | 200 with the content of `/files/N`, or `denied: <error>` |
//! | `/files-escape` | 200 with what came of reaching past `/files` (`..`, absolute paths, writes) |
//! | `/config?key=K` | 200 with config value K (a granted secret reads the same way), or `none` |
//! | `/config-log?key=K` | writes config value K to its log, stdout and stderr; 200 `logged` |
//! | `/stack` | recurses until the wasm stack overflows (a trap) |
//! | `/big-body` | answers 20 MiB (more than the platform passes on by default) |
//! | `/many-headers` | answers with 10,000 headers |
//! | `/bad-header` | answers with a header whose name is not a valid HTTP token |
//! | `/nn/dropped` | computes with a tensor handle it already dropped |
//! | `/nn/slow` | computes with the model `slow` (seconds of work; the tests push it) |
//! | `/nn/table` | makes tensors until the host refuses more (resource-table exhaustion) |
//! | `/raw?model=M&input=I&shape=1,224,224,3` | runs model `M` on the body (f32 little-endian) as input `I`; 200 with the first output's bytes (the benchmarks' pure wasi:nn path) |
//! | anything else | [`Error::NotFound`] |

use std::hint::black_box;

use infercell_guest::{Error, Handler, Request, Response, log};
use serde::Serialize;

const MIB: usize = 1 << 20;
/// What `/stdout` and `/stderr` print: 10 MiB in lines of 1 KiB (newline included).
const FLOOD_BYTES: usize = 10 * MIB;
const FLOOD_LINE: usize = 1024;
const LOG_LINES: usize = 10_000;

struct Hostile;

impl Handler for Hostile {
    fn handle(req: Request) -> Result<Response, Error> {
        match req.path.as_str() {
            "/ok" => Ok(Response::text("ok")),
            "/trap" => panic!("hostile guest panicked on purpose"),
            "/loop" => spin(),
            "/alloc" => exhaust_memory(),
            "/stdout" => Ok(flood(|line| println!("{line}"), "stdout")),
            "/stderr" => Ok(flood(|line| eprintln!("{line}"), "stderr")),
            "/log" => {
                for i in 0..LOG_LINES {
                    log::info(format!("hostile log line {i}"));
                }
                Ok(Response::text(format!("wrote {LOG_LINES} log lines")))
            }
            "/env" => {
                Response::json(&Environment { vars: std::env::vars().collect(), args: std::env::args().collect() })
            }
            "/fs" => Ok(Response::text(match std::fs::read_to_string("/etc/passwd") {
                Ok(text) => format!("read: {}", text.len()),
                Err(e) => format!("denied: {e}"),
            })),
            "/bad-request" => Err(Error::BadRequest("bad on purpose".to_owned())),
            "/not-found" => Err(Error::NotFound("nothing here".to_owned())),
            "/internal" => Err(Error::Internal("broken on purpose".to_owned())),
            "/headers" => Response::json(&req.headers),
            "/file" => {
                let name = req.query_param("name").unwrap_or_default();
                Ok(Response::text(match std::fs::read_to_string(format!("/files/{name}")) {
                    Ok(text) => text,
                    Err(e) => format!("denied: {e}"),
                }))
            }
            "/files-escape" => Response::json(&escape_files()),
            "/config" => {
                let key = req.query_param("key").unwrap_or_default();
                Ok(Response::text(infercell_guest::config::get(&key).unwrap_or_else(|| "none".into())))
            }
            "/config-log" => {
                let key = req.query_param("key").unwrap_or_default();
                let value = infercell_guest::config::get(&key).unwrap_or_default();
                log::info(format!("the value is {value}"));
                println!("stdout has {value}");
                eprintln!("stderr has {value}");
                Ok(Response::text("logged"))
            }
            "/stack" => Ok(Response::text(format!("depth {}", recurse(black_box(0))))),
            "/big-body" => Ok(Response::new(200).body(vec![b'x'; 20 * MIB])),
            "/many-headers" => {
                let mut response = Response::text("many headers");
                for i in 0..10_000 {
                    response = response.header(format!("x-h{i}"), "v");
                }
                Ok(response)
            }
            "/bad-header" => Ok(Response::text("bad header").header("bad header\n", "v")),
            "/raw" => raw_tensor(&req),
            path if path.starts_with("/nn/") => Ok(Response::text(nn_probe(&path[4..]))),
            path => match path.strip_prefix("/status/") {
                Some(code) => code
                    .parse::<u16>()
                    .map(Response::new)
                    .map_err(|e| Error::BadRequest(format!("status {code:?} is not a u16: {e}"))),
                None => Err(Error::NotFound(format!("no behaviour for path {path:?}"))),
            },
        }
    }
}

#[derive(Serialize)]
struct Environment {
    vars: Vec<(String, String)>,
    args: Vec<String>,
}

/// The body as one f32 tensor through a named model, the first output's bytes back: no parsing
/// or preprocessing, so a benchmark sees only the sandbox and wasi:nn.
fn raw_tensor(req: &Request) -> Result<Response, Error> {
    use infercell_guest::nn::{Graph, Tensor, TensorType};
    let param = |name: &str| req.query_param(name).ok_or_else(|| Error::BadRequest(format!("missing ?{name}=")));
    let shape = param("shape")?
        .split(',')
        .map(|d| d.trim().parse::<u32>().map_err(|e| Error::BadRequest(format!("shape: {e}"))))
        .collect::<Result<Vec<u32>, Error>>()?;
    let graph = Graph::load_by_name(&param("model")?)?;
    let input = Tensor::from_bytes(&shape, TensorType::Fp32, req.body.clone());
    let outputs = graph.run(&[(param("input")?.as_str(), &input)])?;
    let (_, first) = outputs.iter().next().ok_or_else(|| Error::Internal("the model returned nothing".into()))?;
    Ok(Response::new(200).body(first.bytes()))
}

/// Every way out of `/files` we can think of; each entry is `(attempt, outcome)`.
fn escape_files() -> Vec<(String, String)> {
    let show = |r: std::io::Result<String>| match r {
        Ok(v) => format!("ok: {}", v.len()),
        Err(e) => format!("denied: {e}"),
    };
    let mut out = Vec::new();
    for path in ["/files/../../../../etc/passwd", "/files/../infercell.db", "/etc/passwd", "../etc/passwd", "/files/.."]
    {
        out.push((format!("read {path}"), show(std::fs::read_to_string(path))));
    }
    for path in ["/", "/files/..", "/files/../.."] {
        let listed = std::fs::read_dir(path)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path().display().to_string()).collect::<Vec<_>>().join(","));
        out.push((format!("list {path}"), show(listed)));
    }
    out.push(("write /files/new.txt".into(), show(std::fs::write("/files/new.txt", b"x").map(|()| String::new()))));
    out.push((
        "append /files/labels.txt".into(),
        show(std::fs::OpenOptions::new().append(true).open("/files/labels.txt").map(|_| String::new())),
    ));
    out.push((
        "remove /files/labels.txt".into(),
        show(std::fs::remove_file("/files/labels.txt").map(|()| String::new())),
    ));
    out
}

/// Recurses without end; `black_box` keeps it a real call chain.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    recurse(black_box(frame[0] + 1)) + frame[63]
}

/// Computes with a tensor whose handle was already dropped (through the raw bindings: the SDK
/// has no way to do this, on purpose).
#[allow(unsafe_code)]
fn stale_handle() -> Result<String, infercell_guest::bindings::wasi::nn::errors::Error> {
    use infercell_guest::bindings::wasi::nn::{graph, tensor};
    let g = graph::load_by_name("digits")?;
    let context = g.init_execution_context()?;
    let t = tensor::Tensor::new(&[1, 64], tensor::TensorType::Fp32, &[0u8; 256]);
    let handle = t.handle();
    drop(t);
    // SAFETY: deliberately unsound from the guest's side; the host must refuse the handle.
    let stale = unsafe { tensor::Tensor::from_handle(handle) };
    context.compute(vec![("input".to_string(), stale)]).map(|out| format!("computed {} outputs", out.len()))
}

/// Misuses wasi:nn in the named way and reports what the host answered, as
/// `ok: ...` or `error <code>: <message>` (the host must answer with an error value, not trap).
fn nn_probe(what: &str) -> String {
    use infercell_guest::nn::{ExecutionTarget, Graph, Tensor, TensorType};
    let result: Result<String, infercell_guest::nn::NnError> = (|| match what {
        // A model by name: granted or not, existing or not, the same not-found.
        "digits" => Graph::load_by_name("digits").map(|_| "loaded".to_owned()),
        "other" => Graph::load_by_name("someone-elses-model").map(|_| "loaded".to_owned()),
        "garbage" => Graph::load_onnx(b"this is not an onnx model", ExecutionTarget::Cpu).map(|_| "loaded".to_owned()),
        "gpu" => Graph::load_onnx(b"\x08\x07", ExecutionTarget::Gpu).map(|_| "loaded".to_owned()),
        // Dimensions that claim 4 GiB with no data behind them: refused, never allocated.
        "huge" => {
            let graph = Graph::load_by_name("digits")?;
            let tensor = Tensor::from_bytes(&[1 << 30, 4], TensorType::Fp32, Vec::new());
            graph.run(&[("input", &tensor)]).map(|_| "computed".to_owned())
        }
        "wrong-shape" => {
            let graph = Graph::load_by_name("digits")?;
            graph.run(&[("input", &Tensor::from_f32(&[1, 63], &[0.0; 63])?)]).map(|_| "computed".to_owned())
        }
        "wrong-type" => {
            let graph = Graph::load_by_name("digits")?;
            graph.run(&[("input", &Tensor::from_i64(&[1, 64], &[0; 64])?)]).map(|_| "computed".to_owned())
        }
        "wrong-name" => {
            let graph = Graph::load_by_name("digits")?;
            graph.run(&[("pixels", &Tensor::from_f32(&[1, 64], &[0.0; 64])?)]).map(|_| "computed".to_owned())
        }
        "batch" => {
            let graph = Graph::load_by_name("digits")?;
            let out = graph.run(&[("input", &Tensor::from_f32(&[3, 64], &[0.5; 192])?)])?;
            Ok(format!("{:?}", out.get("probabilities")?.dims()))
        }
        // A model that computes for seconds (the tests push one named `slow`, input `x` [1, 1]):
        // the call's timeout cuts it while the engine works.
        "slow" => {
            let graph = Graph::load_by_name("slow")?;
            graph.run(&[("x", &Tensor::from_f32(&[1, 1], &[0.001])?)]).map(|_| "computed".to_owned())
        }
        // A handle used after it was dropped: the host must answer with an error or trap the
        // guest, never touch freed memory.
        "dropped" => stale_handle().map_err(Into::into),
        // Zero-byte tensors cost no memory: only a cap on host resources stops this loop.
        "table" => {
            let mut kept = Vec::new();
            for _ in 0..1_000_000 {
                kept.push(Tensor::from_bytes(&[0], TensorType::Fp32, Vec::new()));
            }
            Ok(format!("made {} tensors", kept.len()))
        }
        _ => Ok("unknown probe".to_owned()),
    })();
    match result {
        Ok(s) => format!("ok: {s}"),
        Err(e) => format!("error {:?}: {}", e.code, e.message),
    }
}

/// Loops forever; `black_box` keeps the optimizer from proving the loop has no effect.
fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Allocates 1 MiB blocks, writes every byte and keeps them all alive. When the memory limit
/// refuses to grow the heap the allocator fails and the guest aborts: a trap, not an answer.
fn exhaust_memory() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        let fill = u8::try_from(kept.len() % 251).unwrap_or(0) + 1;
        let block = black_box(vec![fill; MIB]);
        kept.push(block);
        black_box(&kept);
    }
}

/// Writes [`FLOOD_BYTES`] through `print` in lines of [`FLOOD_LINE`] bytes.
fn flood(print: impl Fn(&str), stream: &str) -> Response {
    let line = "x".repeat(FLOOD_LINE - 1);
    for _ in 0..FLOOD_BYTES / FLOOD_LINE {
        print(&line);
    }
    Response::text(format!("printed {FLOOD_BYTES} bytes to {stream}"))
}

infercell_guest::export!(Hostile);

#[cfg(test)]
mod tests {
    //! Only the well-behaved paths: the hostile ones need a sandbox, which the host tests own.

    use super::*;

    fn call(path: &str) -> Result<Response, Error> {
        Hostile::handle(Request {
            method: "GET".to_owned(),
            path: path.to_owned(),
            query: String::new(),
            headers: vec![("x-test".to_owned(), "1".to_owned())],
            body: Vec::new(),
        })
    }

    #[test]
    fn answers_the_plain_paths() {
        assert!(matches!(call("/ok"), Ok(r) if r.status == 200 && r.body == b"ok"));
        assert!(matches!(call("/status/418"), Ok(r) if r.status == 418 && r.body.is_empty()));
        assert!(matches!(call("/headers"), Ok(r) if r.body == br#"[["x-test","1"]]"#));
    }

    #[test]
    fn returns_error_values() {
        assert!(matches!(call("/bad-request"), Err(Error::BadRequest(m)) if m == "bad on purpose"));
        assert!(matches!(call("/not-found"), Err(Error::NotFound(m)) if m == "nothing here"));
        assert!(matches!(call("/internal"), Err(Error::Internal(m)) if m == "broken on purpose"));
        assert!(matches!(call("/status/70000"), Err(Error::BadRequest(_))));
        assert!(matches!(call("/nope"), Err(Error::NotFound(_))));
    }
}
