//! Loading an untrusted model first in a throwaway process with bounded memory.
//!
//! Engines fold constants while they load: a 157-byte ONNX model whose `ConstantOfShape` asks
//! for a 100,000 x 100,000 tensor makes tract allocate 40 GB before it runs anything, and the
//! allocation failure would abort the whole server. So before a graph is loaded into the server
//! for the first time, the same engine loads it in a child process (`infercell nn-probe`) whose
//! address space is limited (`nn.load_memory_bytes`); a model that cannot load within it is
//! refused with `too-large`, and the server never tries.
//!
//! Building a plan per input folds constants too: a model whose `ConstantOfShape` is fed by a
//! small integer input is specialized to that input's values, and tract allocates the tensor
//! while it builds the plan. So before a model that makes plans per input builds a new one,
//! the child builds the same plan for the same inputs ([`Prober::check_specialization`]); a
//! plan that does not fit is refused with `too-large`, and the refusal is remembered for those
//! inputs.
//!
//! The child parses untrusted bytes, so it gets nothing it does not need: an empty environment
//! (no `INFERCELL_ADMIN_KEY`, no secrets key, no `ORT_DYLIB_PATH`; ONNX Runtime's path comes as
//! an argument), no stdout, and only the model on stdin.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{ElemType, ErrorCode, HostTensor, NnError};

/// How a server probes models: its own binary, the memory a load may use, the ONNX Runtime
/// library the child should use.
#[derive(Debug, Clone)]
pub struct Prober {
    pub binary: PathBuf,
    pub max_bytes: u64,
    pub onnxruntime: Option<PathBuf>,
    pub timeout: Duration,
}

impl Prober {
    /// Loads `bytes` on `engine` in a child process limited to `max_bytes` of address space.
    pub fn check(&self, engine: &str, bytes: &[u8]) -> Result<(), NnError> {
        self.spawn(engine, bytes, None).map_err(|e| match e {
            Failure::Refused(e) | Failure::Failed(e) => e,
            Failure::OutOfMemory => NnError::new(
                ErrorCode::TooLarge,
                format!(
                    "loading this model needs more than {} MiB of memory (nn.load_memory_bytes); it was not loaded",
                    self.max_bytes >> 20
                ),
            ),
        })
    }

    /// Builds `engine`'s plan of the model `bytes` for `inputs` (in the model's input order) in
    /// a child process limited to `max_bytes`. An engine's own refusal passes (the server's
    /// build reports it, without the risk); a child past its memory is a `too-large` refusal.
    pub fn check_specialization(&self, engine: &str, bytes: &[u8], inputs: &[HostTensor]) -> Result<(), NnError> {
        let encoded = encode_inputs(inputs);
        let mut stdin = Vec::with_capacity(bytes.len() + encoded.len());
        stdin.extend_from_slice(bytes);
        stdin.extend_from_slice(&encoded);
        match self.spawn(engine, &stdin, Some(encoded.len())) {
            Ok(()) | Err(Failure::Refused(_)) => Ok(()),
            Err(Failure::Failed(e)) => Err(e),
            Err(Failure::OutOfMemory) => Err(NnError::new(
                ErrorCode::TooLarge,
                format!(
                    "building this model's plan for these inputs needs more than {} MiB of memory (nn.load_memory_bytes): refused before it ran",
                    self.max_bytes >> 20
                ),
            )),
        }
    }

    /// Runs the child on `stdin` (the model, then `inputs` bytes of inputs when given).
    fn spawn(&self, engine: &str, stdin: &[u8], inputs: Option<usize>) -> Result<(), Failure> {
        let mut command = Command::new(&self.binary);
        command.args(["nn-probe", "--engine", engine, "--max-bytes", &self.max_bytes.to_string()]);
        if let Some(ort) = &self.onnxruntime {
            command.arg("--onnxruntime").arg(ort);
        }
        if let Some(n) = inputs {
            command.args(["--inputs-bytes", &n.to_string()]);
        }
        let mut child =
            command.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).env_clear().spawn().map_err(
                |e| {
                    Failure::Failed(NnError::new(ErrorCode::RuntimeError, format!("cannot start the model probe: {e}")))
                },
            )?;
        // Read its stderr as it comes (at most 64 KiB kept): a chatty child must not block on a
        // full pipe while we wait for it.
        let stderr_reader = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let mut chunk = [0u8; 8192];
                while let Ok(n) = std::io::Read::read(&mut pipe, &mut chunk) {
                    if n == 0 {
                        break;
                    }
                    if kept.len() < 64 << 10 {
                        kept.extend_from_slice(&chunk[..n]);
                    }
                }
                String::from_utf8_lossy(&kept).into_owned()
            })
        });
        if let Some(mut pipe) = child.stdin.take() {
            // A child that died early closes the pipe: its exit status says why.
            let _ = pipe.write_all(stdin);
        }
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Failure::Failed(NnError::new(
                        ErrorCode::TooLarge,
                        format!("preparing this model took longer than {} s", self.timeout.as_secs()),
                    )));
                }
            }
        };
        if status.success() {
            return Ok(());
        }
        let stderr = stderr_reader.and_then(|t| t.join().ok()).unwrap_or_default();
        match status.code() {
            // The probe reports the engine's own refusal (bad model, unsupported op) with code 3,
            // as `<error code>\t<message>`.
            Some(3) => {
                let (code, message) = stderr.trim().split_once('\t').unwrap_or(("UnsupportedOperation", stderr.trim()));
                let code = match code {
                    "InvalidEncoding" => ErrorCode::InvalidEncoding,
                    "InvalidArgument" => ErrorCode::InvalidArgument,
                    "TooLarge" => ErrorCode::TooLarge,
                    "RuntimeError" => ErrorCode::RuntimeError,
                    _ => ErrorCode::UnsupportedOperation,
                };
                Err(Failure::Refused(NnError::new(code, message.to_string())))
            }
            _ => Err(Failure::OutOfMemory),
        }
    }
}

/// How a probe child did not succeed.
enum Failure {
    /// The engine refused the model or inputs (the child finished within its limits).
    Refused(NnError),
    /// The child could not start or did not finish in time.
    Failed(NnError),
    /// The child ended past its memory.
    OutOfMemory,
}

/// `inputs` for the child: per tensor its type's name, its dimensions, and its bytes when it
/// is small enough to be pinned (larger ones are only shapes: the child makes zeros).
fn encode_inputs(inputs: &[HostTensor]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in inputs {
        let name = t.ty.oip_name().as_bytes();
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        let small = t.data.len() / t.ty.size().max(1) <= super::tract::MAX_PINNED_ELEMENTS;
        let data: &[u8] = if small { &t.data } else { &[] };
        out.push(u8::from(small));
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

fn decode_inputs(mut bytes: &[u8]) -> Option<Vec<HostTensor>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = tail;
        Some(head)
    }
    let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = take(&mut bytes, 1)?[0] as usize;
        let ty = ElemType::from_oip_name(std::str::from_utf8(take(&mut bytes, len)?).ok()?)?;
        let rank = u32_of(take(&mut bytes, 4)?) as usize;
        let dims = (0..rank).map(|_| take(&mut bytes, 4).map(u32_of)).collect::<Option<Vec<u32>>>()?;
        let small = take(&mut bytes, 1)?[0] == 1;
        let n = u64::from_le_bytes(take(&mut bytes, 8)?.try_into().ok()?) as usize;
        let data = take(&mut bytes, n)?.to_vec();
        let data = if small {
            data
        } else {
            let elements = dims.iter().try_fold(1usize, |n, d| n.checked_mul(*d as usize))?;
            vec![0; elements.checked_mul(ty.size())?]
        };
        out.push(HostTensor::new(dims, ty, data).ok()?);
    }
    Some(out)
}

/// The child's side (`infercell nn-probe`): limits its own address space, loads the model from
/// stdin on `engine`, exits 0 when it loads, 3 with the engine's message when it refuses; an
/// allocation past the limit aborts it.
/// With `inputs_bytes`, the last that many bytes of stdin are inputs ([`encode_inputs`]): the
/// child then also builds the plan for them, as the server's engine would.
pub fn run_child(engine: &str, max_bytes: u64, onnxruntime: Option<PathBuf>, inputs_bytes: Option<usize>) -> i32 {
    if let Err(e) = rlimit::setrlimit(rlimit::Resource::AS, max_bytes, max_bytes) {
        eprintln!("cannot limit the probe's memory: {e}");
        return 2;
    }
    let mut bytes = Vec::new();
    if std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).is_err() {
        return 2;
    }
    let inputs = match inputs_bytes {
        None => None,
        Some(n) if n <= bytes.len() => match decode_inputs(&bytes.split_off(bytes.len() - n)) {
            Some(inputs) => Some(inputs),
            None => {
                eprintln!("the probe's inputs are malformed");
                return 2;
            }
        },
        Some(_) => return 2,
    };
    let refused = |e: NnError| {
        eprint!("{:?}\t{}", e.code, e.message);
        3
    };
    if let (Some(inputs), "wgpu") = (&inputs, engine) {
        // No device here: the CPU side of a GPU plan (pinning and folding) is what can allocate.
        return super::gpu::prepare_on_cpu(&bytes, inputs).map_or_else(refused, |()| 0);
    }
    let engine: Box<dyn super::Engine> = match engine {
        "onnxruntime" => match onnxruntime.map(|p| super::onnxruntime::OnnxRuntime::load(&p)) {
            Some(Ok(ort)) => Box::new(ort),
            _ => {
                eprintln!("ONNX Runtime is not available to the probe");
                return 2;
            }
        },
        _ => Box::new(super::tract::Tract),
    };
    match engine.load(&bytes) {
        Ok(model) => match inputs {
            Some(inputs) => model.prepare(&inputs).map_or_else(refused, |()| 0),
            None => 0,
        },
        Err(e) => refused(e),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// The child starts with an empty environment: whatever the server holds (its admin key,
    /// the secrets key, `PATH`, ...) never reaches the process that parses untrusted models.
    #[test]
    fn the_probe_child_inherits_no_environment() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("infercell-probe-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let out = dir.join("environ");
        // A stand-in for the infercell binary: it records its environment, exactly as the
        // kernel gave it (/proc/self/environ), and reports success.
        let fake = dir.join("infercell");
        std::fs::write(&fake, format!("#!/bin/sh\ncat /proc/$$/environ > '{}'\ncat > /dev/null\n", out.display()))
            .expect("write");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(std::env::var_os("PATH").is_some(), "the parent has an environment to leak");
        let prober = Prober { binary: fake, max_bytes: 1 << 30, onnxruntime: None, timeout: Duration::from_secs(30) };
        prober.check("tract", b"model bytes").expect("the stand-in succeeds");
        let environ = std::fs::read(&out).expect("the child wrote its environment");
        let names: Vec<String> = environ
            .split(|&b| b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).split('=').next().unwrap_or_default().to_string())
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(names.is_empty(), "the probe child inherited {names:?}");
    }
}
