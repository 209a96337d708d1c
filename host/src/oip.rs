//! The Open Inference Protocol's (KServe v2) infer messages, with Triton's binary tensor
//! extension: parsing requests into tensors and encoding responses, independent of HTTP.
//!
//! A request body is a JSON header, optionally followed by raw tensor bytes: the header's
//! length is in `Inference-Header-Content-Length`, and each input sent in binary names its size
//! in `parameters.binary_data_size`, in input order. Tensor data is kept as little-endian
//! row-major bytes; `BYTES` elements are each a 4-byte little-endian length and the bytes, as
//! Triton lays them out. JSON `data` may be flat or nested (row-major either way).

use half::f16;
use serde_json::{Map, Value, json};

use crate::nn::ElemType;

/// A named tensor as the protocol carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    /// "BOOL", "UINT8" ... "INT64", "FP16", "FP32", "FP64" or "BYTES".
    pub datatype: String,
    pub shape: Vec<i64>,
    /// Little-endian row-major bytes; for BYTES, length-prefixed elements.
    pub data: Vec<u8>,
}

/// An output the client asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    /// Whether to send it as binary; `None` = the request's `binary_data_output` default.
    pub binary: Option<bool>,
}

/// A parsed `POST .../infer` request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    /// Request-level `parameters`, passed through to a predictor and echoed back.
    pub parameters: Map<String, Value>,
    pub inputs: Vec<Tensor>,
    /// Empty: every output.
    pub outputs: Vec<RequestedOutput>,
    /// `parameters.binary_data_output`: the default for outputs that do not say.
    pub binary_output: bool,
}

/// Why a request is malformed: the message for a 400.
pub type ProtocolError = String;

/// Every datatype the protocol names.
pub const DATATYPES: &[&str] = &[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES",
];

impl Tensor {
    /// The number of elements the shape declares.
    pub fn element_count(&self) -> Result<usize, ProtocolError> {
        shape_elements(&self.name, &self.shape)
    }

    /// The elements of a BYTES tensor.
    pub fn byte_elements(&self) -> Result<Vec<&[u8]>, ProtocolError> {
        split_bytes(&self.name, &self.data)
    }
}

fn shape_elements(name: &str, shape: &[i64]) -> Result<usize, ProtocolError> {
    shape.iter().try_fold(1usize, |acc, d| {
        let d = usize::try_from(*d).map_err(|_| format!("input `{name}`: shape {shape:?} has a negative dimension"))?;
        acc.checked_mul(d).ok_or_else(|| format!("input `{name}`: shape {shape:?} is too large"))
    })
}

fn split_bytes<'a>(name: &str, mut data: &'a [u8]) -> Result<Vec<&'a [u8]>, ProtocolError> {
    let mut elements = Vec::new();
    while !data.is_empty() {
        let Some((len, rest)) = data.split_first_chunk::<4>() else {
            return Err(format!("tensor `{name}`: BYTES data ends inside an element's 4-byte length"));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(format!("tensor `{name}`: a BYTES element claims {len} bytes, {} remain", rest.len()));
        }
        elements.push(&rest[..len]);
        data = &rest[len..];
    }
    Ok(elements)
}

/// Parses an infer request: `header_length` is `Inference-Header-Content-Length`, if sent.
///
/// Python clients write that header into the caller's headers dict, so a later JSON-only call
/// that reuses the dict carries a stale length: when the length does not fit but the whole
/// body is a valid JSON request, that request is taken.
pub fn parse_request(body: &[u8], header_length: Option<usize>) -> Result<InferRequest, ProtocolError> {
    match header_length {
        Some(n) if n != body.len() => parse_parts(body, Some(n)).or_else(|e| parse_parts(body, None).map_err(|_| e)),
        other => parse_parts(body, other),
    }
}

fn parse_parts(body: &[u8], header_length: Option<usize>) -> Result<InferRequest, ProtocolError> {
    let (json_part, mut binary) = match header_length {
        Some(n) if n > body.len() => {
            return Err(format!("Inference-Header-Content-Length is {n}, but the body has only {} bytes", body.len()));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let header: Value = serde_json::from_slice(json_part).map_err(|e| format!("malformed JSON request: {e}"))?;
    let Value::Object(mut header) = header else {
        return Err("the request must be a JSON object with `inputs`".into());
    };
    let id = match header.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => return Err(format!("`id` must be a string, got {other}")),
    };
    let parameters = match header.remove("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return Err("`parameters` must be an object".into()),
    };
    let binary_output = parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let Some(Value::Array(raw_inputs)) = header.remove("inputs") else {
        return Err("the request needs `inputs`: a list of tensors".into());
    };
    let mut inputs: Vec<Tensor> = Vec::with_capacity(raw_inputs.len());
    for raw in raw_inputs {
        let tensor = parse_input(raw, &mut binary)?;
        if inputs.iter().any(|t| t.name == tensor.name) {
            return Err(format!("input `{}` is given twice", tensor.name));
        }
        inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(format!("{} bytes of binary data follow the inputs that claim them", binary.len()));
    }
    let outputs = match header.remove("outputs") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(outputs)) => outputs
            .into_iter()
            .map(|o| {
                let name = o.get("name").and_then(Value::as_str).ok_or("every requested output needs a `name`")?;
                let binary = o.pointer("/parameters/binary_data").and_then(Value::as_bool);
                Ok(RequestedOutput { name: name.to_string(), binary })
            })
            .collect::<Result<_, &str>>()?,
        Some(_) => return Err("`outputs` must be a list".into()),
    };
    Ok(InferRequest { id, parameters, inputs, outputs, binary_output })
}

fn parse_input(raw: Value, binary: &mut &[u8]) -> Result<Tensor, ProtocolError> {
    let Value::Object(mut raw) = raw else { return Err("every input must be an object".into()) };
    let name = match raw.remove("name") {
        Some(Value::String(name)) => name,
        _ => return Err("every input needs a `name`".into()),
    };
    let datatype = match raw.remove("datatype") {
        Some(Value::String(d)) if DATATYPES.contains(&d.as_str()) => d,
        Some(Value::String(d)) => return Err(format!("input `{name}`: unknown datatype `{d}`")),
        _ => return Err(format!("input `{name}` needs a `datatype`")),
    };
    let shape: Vec<i64> = match raw.remove("shape") {
        Some(Value::Array(dims)) => dims
            .iter()
            .map(|d| d.as_i64().filter(|d| *d >= 0))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("input `{name}`: `shape` must be a list of non-negative integers"))?,
        _ => return Err(format!("input `{name}` needs a `shape`")),
    };
    let count = shape_elements(&name, &shape)?;
    let binary_size = raw.get("parameters").and_then(|p| p.get("binary_data_size")).cloned();
    let data = match (binary_size, raw.remove("data")) {
        (Some(size), _) => {
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| format!("input `{name}`: `binary_data_size` must be a non-negative integer"))?;
            if size > binary.len() {
                return Err(format!(
                    "input `{name}`: binary_data_size is {size}, but only {} bytes of binary data remain",
                    binary.len()
                ));
            }
            let (data, rest) = binary.split_at(size);
            *binary = rest;
            data.to_vec()
        }
        (None, Some(data)) => from_json(&name, &datatype, data)?,
        (None, None) => return Err(format!("input `{name}` has neither `data` nor `binary_data_size`")),
    };
    let tensor = Tensor { name, datatype, shape, data };
    let given = match ElemType::from_oip_name(&tensor.datatype) {
        Some(ty) if tensor.data.len().is_multiple_of(ty.size()) => tensor.data.len() / ty.size(),
        Some(ty) => {
            return Err(format!(
                "input `{}`: {} bytes are not a whole number of {} elements",
                tensor.name,
                tensor.data.len(),
                ty.oip_name()
            ));
        }
        None => tensor.byte_elements()?.len(),
    };
    if given != count {
        return Err(format!(
            "input `{}`: shape {:?} needs {count} elements, the data has {given}",
            tensor.name, tensor.shape
        ));
    }
    Ok(tensor)
}

/// Checks that a tensor's datatype is known and its data matches its shape (used on what a
/// predictor returns before it is sent).
pub fn check_tensor(t: &Tensor) -> Result<(), ProtocolError> {
    if !DATATYPES.contains(&t.datatype.as_str()) {
        return Err(format!("tensor `{}` with unknown datatype `{}`", t.name, t.datatype));
    }
    let count = shape_elements(&t.name, &t.shape)?;
    let given = match ElemType::from_oip_name(&t.datatype) {
        Some(ty) => t.data.len() as f64 / ty.size() as f64,
        None => t.byte_elements()?.len() as f64,
    };
    if given != count as f64 {
        return Err(format!(
            "tensor `{}` of shape {:?} with {} bytes of {} data",
            t.name,
            t.shape,
            t.data.len(),
            t.datatype
        ));
    }
    Ok(())
}

/// Flattens nested JSON `data` into little-endian bytes of `datatype`.
fn from_json(name: &str, datatype: &str, data: Value) -> Result<Vec<u8>, ProtocolError> {
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    let bad = |v: &Value| format!("input `{name}`: {v} is not a valid {datatype} value");
    let mut out = Vec::with_capacity(flat.len() * 4);
    for v in &flat {
        match datatype {
            "BOOL" => out.push(match v {
                Value::Bool(b) => u8::from(*b),
                Value::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => n.as_u64().unwrap_or(0) as u8,
                _ => return Err(bad(v)),
            }),
            "UINT8" => out.extend(v.as_u64().and_then(|n| u8::try_from(n).ok()).ok_or_else(|| bad(v))?.to_le_bytes()),
            "UINT16" => out.extend(v.as_u64().and_then(|n| u16::try_from(n).ok()).ok_or_else(|| bad(v))?.to_le_bytes()),
            "UINT32" => out.extend(v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad(v))?.to_le_bytes()),
            "UINT64" => out.extend(v.as_u64().ok_or_else(|| bad(v))?.to_le_bytes()),
            "INT8" => out.extend(v.as_i64().and_then(|n| i8::try_from(n).ok()).ok_or_else(|| bad(v))?.to_le_bytes()),
            "INT16" => out.extend(v.as_i64().and_then(|n| i16::try_from(n).ok()).ok_or_else(|| bad(v))?.to_le_bytes()),
            "INT32" => out.extend(v.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(|| bad(v))?.to_le_bytes()),
            "INT64" => out.extend(v.as_i64().ok_or_else(|| bad(v))?.to_le_bytes()),
            "FP16" => out.extend(f16::from_f64(v.as_f64().ok_or_else(|| bad(v))?).to_le_bytes()),
            "FP32" => out.extend((v.as_f64().ok_or_else(|| bad(v))? as f32).to_le_bytes()),
            "FP64" => out.extend(v.as_f64().ok_or_else(|| bad(v))?.to_le_bytes()),
            "BYTES" => {
                let s = v.as_str().ok_or_else(|| bad(v))?;
                out.extend((s.len() as u32).to_le_bytes());
                out.extend(s.as_bytes());
            }
            _ => return Err(format!("input `{name}`: unknown datatype `{datatype}`")),
        }
    }
    Ok(out)
}

fn flatten(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.into_iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

/// The tensor's elements as a flat JSON list.
fn to_json(t: &Tensor) -> Value {
    fn each<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> Value) -> Value {
        Value::Array(data.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect())
    }
    match t.datatype.as_str() {
        "BOOL" => Value::Array(t.data.iter().map(|b| Value::Bool(*b != 0)).collect()),
        "UINT8" => each(&t.data, |b: [u8; 1]| json!(b[0])),
        "UINT16" => each(&t.data, |b| json!(u16::from_le_bytes(b))),
        "UINT32" => each(&t.data, |b| json!(u32::from_le_bytes(b))),
        "UINT64" => each(&t.data, |b| json!(u64::from_le_bytes(b))),
        "INT8" => each(&t.data, |b| json!(i8::from_le_bytes(b))),
        "INT16" => each(&t.data, |b| json!(i16::from_le_bytes(b))),
        "INT32" => each(&t.data, |b| json!(i32::from_le_bytes(b))),
        "INT64" => each(&t.data, |b| json!(i64::from_le_bytes(b))),
        "FP16" => each(&t.data, |b| json!(f16::from_le_bytes(b).to_f32())),
        "FP32" => each(&t.data, |b| json!(f32::from_le_bytes(b))),
        "FP64" => each(&t.data, |b| json!(f64::from_le_bytes(b))),
        "BYTES" => Value::Array(
            split_bytes(&t.name, &t.data)
                .unwrap_or_default()
                .into_iter()
                .map(|e| Value::String(String::from_utf8_lossy(e).into_owned()))
                .collect(),
        ),
        _ => Value::Array(Vec::new()),
    }
}

/// An encoded infer response.
#[derive(Debug)]
pub struct EncodedResponse {
    pub body: Vec<u8>,
    /// `Inference-Header-Content-Length`, when binary outputs follow the JSON.
    pub header_length: Option<usize>,
}

/// Picks the requested outputs (all, in model order, when none were named) and encodes them,
/// each as JSON data or as binary after the JSON header, as the request asks.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    request: &InferRequest,
    mut outputs: Vec<Tensor>,
) -> Result<EncodedResponse, ProtocolError> {
    let chosen: Vec<(Tensor, bool)> = if request.outputs.is_empty() {
        outputs.into_iter().map(|t| (t, request.binary_output)).collect()
    } else {
        let mut chosen = Vec::with_capacity(request.outputs.len());
        for wanted in &request.outputs {
            let Some(i) = outputs.iter().position(|t| t.name == wanted.name) else {
                let known: Vec<&str> = outputs.iter().map(|t| t.name.as_str()).collect();
                return Err(format!("unknown output `{}` (the model's outputs: {})", wanted.name, known.join(", ")));
            };
            chosen.push((outputs.swap_remove(i), wanted.binary.unwrap_or(request.binary_output)));
        }
        chosen
    };
    let mut binary = Vec::new();
    let described: Vec<Value> = chosen
        .iter()
        .map(|(t, as_binary)| {
            let mut o = json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape });
            if *as_binary {
                o["parameters"] = json!({ "binary_data_size": t.data.len() });
                binary.extend_from_slice(&t.data);
            } else {
                o["data"] = to_json(t);
            }
            o
        })
        .collect();
    let mut header = json!({ "model_name": model_name, "model_version": model_version, "outputs": described });
    if let Some(id) = &request.id {
        header["id"] = json!(id);
    }
    if !request.parameters.is_empty() {
        let mut echoed = request.parameters.clone();
        echoed.remove("binary_data_output");
        if !echoed.is_empty() {
            header["parameters"] = Value::Object(echoed);
        }
    }
    let mut body = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let header_length = chosen.iter().any(|(_, b)| *b).then_some(body.len());
    body.extend_from_slice(&binary);
    Ok(EncodedResponse { body, header_length })
}

/// Triton's model-configuration name of a datatype (`FP32` -> `TYPE_FP32`, `BYTES` -> `TYPE_STRING`).
pub fn config_type(datatype: &str) -> String {
    match datatype {
        "BYTES" => "TYPE_STRING".to_string(),
        other => format!("TYPE_{other}"),
    }
}

/// Whether a mirror's outputs agree with the served ones: the same names, datatypes and shapes,
/// and values equal (floats within an absolute 1e-5 plus a relative 1e-3, the spread two
/// engines or two exports of one model show; other types exactly).
pub fn outputs_agree(served: &[Tensor], mirrored: &[Tensor]) -> bool {
    served.len() == mirrored.len()
        && served.iter().all(|a| {
            mirrored.iter().any(|b| {
                a.name == b.name
                    && a.datatype == b.datatype
                    && a.shape == b.shape
                    && values_agree(&a.datatype, &a.data, &b.data)
            })
        })
}

fn values_agree(datatype: &str, a: &[u8], b: &[u8]) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-5 + 1e-3 * y.abs() || (x.is_nan() && y.is_nan());
    match datatype {
        _ if a.len() != b.len() => false,
        "FP32" => a.chunks_exact(4).zip(b.chunks_exact(4)).all(|(x, y)| {
            close(
                f64::from(f32::from_le_bytes([x[0], x[1], x[2], x[3]])),
                f64::from(f32::from_le_bytes([y[0], y[1], y[2], y[3]])),
            )
        }),
        "FP64" => a.chunks_exact(8).zip(b.chunks_exact(8)).all(|(x, y)| {
            let (mut xb, mut yb) = ([0u8; 8], [0u8; 8]);
            xb.copy_from_slice(x);
            yb.copy_from_slice(y);
            close(f64::from_le_bytes(xb), f64::from_le_bytes(yb))
        }),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn floats(data: &[u8]) -> Vec<f32> {
        data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn parses_json_tensors_flat_or_nested() {
        let body = br#"{"id":"r1","parameters":{"p":1},"inputs":[
            {"name":"x","datatype":"FP32","shape":[2,2],"data":[[1,2],[3,4.5]]},
            {"name":"n","datatype":"INT64","shape":[1],"data":[7]},
            {"name":"b","datatype":"BOOL","shape":[2],"data":[true,false]},
            {"name":"s","datatype":"BYTES","shape":[2],"data":["hi",""]}],
            "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let req = parse_request(body, None).unwrap();
        assert_eq!(req.id.as_deref(), Some("r1"));
        assert_eq!(req.parameters["p"], 1);
        assert_eq!(floats(&req.inputs[0].data), vec![1.0, 2.0, 3.0, 4.5]);
        assert_eq!(req.inputs[1].data, 7i64.to_le_bytes());
        assert_eq!(req.inputs[2].data, vec![1, 0]);
        assert_eq!(req.inputs[3].byte_elements().unwrap(), vec![&b"hi"[..], &b""[..]]);
        assert_eq!(req.outputs, vec![RequestedOutput { name: "y".into(), binary: Some(true) }]);
    }

    #[test]
    fn parses_binary_tensors_after_the_header() {
        let header = br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}},
            {"name":"s","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":7}}],
            "parameters":{"binary_data_output":true}}"#;
        let mut body = header.to_vec();
        body.extend(1.5f32.to_le_bytes());
        body.extend((-2.0f32).to_le_bytes());
        body.extend(3u32.to_le_bytes());
        body.extend(b"abc");
        let req = parse_request(&body, Some(header.len())).unwrap();
        assert_eq!(floats(&req.inputs[0].data), vec![1.5, -2.0]);
        assert_eq!(req.inputs[1].byte_elements().unwrap(), vec![&b"abc"[..]]);
        assert!(req.binary_output);
    }

    #[test]
    fn every_malformed_request_is_named() {
        let cases: &[(&[u8], Option<usize>, &str)] = &[
            (b"{not json", None, "malformed JSON request"),
            (b"[]", None, "JSON object"),
            (b"{}", None, "needs `inputs`"),
            (br#"{"inputs":[{"datatype":"FP32","shape":[1],"data":[1]}]}"#, None, "needs a `name`"),
            (br#"{"inputs":[{"name":"x","datatype":"FLOAT","shape":[1],"data":[1]}]}"#, None, "unknown datatype `FLOAT`"),
            (br#"{"inputs":[{"name":"x","datatype":"FP32","data":[1]}]}"#, None, "needs a `shape`"),
            (br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[-1],"data":[1]}]}"#, None, "non-negative"),
            (br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[3],"data":[1,2]}]}"#, None, "needs 3 elements, the data has 2"),
            (br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":["a"]}]}"#, None, "\"a\" is not a valid FP32"),
            (br#"{"inputs":[{"name":"x","datatype":"UINT8","shape":[1],"data":[300]}]}"#, None, "300 is not a valid UINT8"),
            (br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1]}]}"#, None, "neither `data`"),
            (
                br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]},{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}"#,
                None,
                "given twice",
            ),
            (br#"{"inputs":[]} trailing"#, Some(999), "Inference-Header-Content-Length is 999"),
            (
                br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":4}}]}"#,
                Some(91),
                "only 0 bytes of binary data remain",
            ),
        ];
        for (body, header_length, needle) in cases {
            let e = parse_request(body, *header_length).unwrap_err();
            assert!(e.contains(needle), "`{needle}` not in `{e}`");
        }
    }

    #[test]
    fn a_stale_header_length_on_a_json_body_is_forgiven() {
        let body = br#"{"inputs":[{"name":"x","datatype":"INT64","shape":[1],"data":[3]}]}"#;
        let req = parse_request(body, Some(20)).unwrap();
        assert_eq!(req.inputs[0].data, 3i64.to_le_bytes());
    }

    #[test]
    fn encodes_json_and_binary_outputs_as_asked() {
        let y = Tensor {
            name: "y".into(),
            datatype: "FP32".into(),
            shape: vec![2],
            data: [1f32, 2.0].iter().flat_map(|f| f.to_le_bytes()).collect(),
        };
        let z =
            Tensor { name: "z".into(), datatype: "INT64".into(), shape: vec![1], data: 5i64.to_le_bytes().to_vec() };
        let mut req = parse_request(br#"{"id":"7","inputs":[]}"#, None).unwrap();
        let json_only = encode_response("m", "1", &req, vec![y.clone(), z.clone()]).unwrap();
        assert_eq!(json_only.header_length, None);
        let v: Value = serde_json::from_slice(&json_only.body).unwrap();
        assert_eq!(v["id"], "7");
        assert_eq!(v["outputs"][0]["data"], json!([1.0, 2.0]));
        assert_eq!(v["outputs"][1]["data"], json!([5]));

        req.outputs = vec![
            RequestedOutput { name: "z".into(), binary: None },
            RequestedOutput { name: "y".into(), binary: Some(true) },
        ];
        let mixed = encode_response("m", "1", &req, vec![y.clone(), z.clone()]).unwrap();
        let n = mixed.header_length.unwrap();
        let v: Value = serde_json::from_slice(&mixed.body[..n]).unwrap();
        assert_eq!(v["outputs"][0]["name"], "z");
        assert_eq!(v["outputs"][1]["parameters"]["binary_data_size"], 8);
        assert_eq!(floats(&mixed.body[n..]), vec![1.0, 2.0]);

        req.outputs = vec![RequestedOutput { name: "nope".into(), binary: None }];
        assert!(encode_response("m", "1", &req, vec![y, z]).unwrap_err().contains("unknown output `nope`"));
    }

    #[test]
    fn mirrored_outputs_agree_within_tolerance() {
        let t = |values: &[f32]| Tensor {
            name: "y".into(),
            datatype: "FP32".into(),
            shape: vec![values.len() as i64],
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        assert!(outputs_agree(&[t(&[1.0, 0.5])], &[t(&[1.0004, 0.5])]));
        assert!(!outputs_agree(&[t(&[1.0, 0.5])], &[t(&[1.01, 0.5])]));
        assert!(!outputs_agree(&[t(&[1.0, 0.5])], &[t(&[1.0])]), "another shape");
        assert!(!outputs_agree(&[t(&[1.0])], &[]), "an output missing");
    }
}
