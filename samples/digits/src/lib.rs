//! `digits`: recognises a handwritten digit from an 8x8 image.
//!
//! Body `{"pixels": [64 numbers in 0..=16]}` (row-major, scikit-learn's digits format). The
//! function checks the input, divides by 16 in the sandbox, runs the tenant's `digits` model
//! on the host through wasi:nn, and answers `{"digit": d, "probabilities": [10 numbers]}`.
//! Anything but 64 numbers in 0..=16 is a 400 naming the problem.

use infercell_guest::nn::{Graph, Tensor};
use infercell_guest::{Error, Handler, Request, Response};
use serde_json::{Value, json};

struct Digits;

/// The 64 pixels scaled to 0..=1, or a message saying what is wrong with the body.
fn pixels(req: &Request) -> Result<Vec<f32>, Error> {
    let body: Value = req.json()?;
    let Some(pixels) = body.get("pixels") else {
        return Err(Error::BadRequest("expected {\"pixels\": [64 numbers in 0..16]}".into()));
    };
    let Some(pixels) = pixels.as_array() else {
        return Err(Error::BadRequest("`pixels` must be an array of 64 numbers in 0..16".into()));
    };
    if pixels.len() != 64 {
        return Err(Error::BadRequest(format!("`pixels` must have 64 numbers (8x8), got {}", pixels.len())));
    }
    pixels
        .iter()
        .enumerate()
        .map(|(i, p)| match p.as_f64() {
            Some(v) if (0.0..=16.0).contains(&v) => Ok((v / 16.0) as f32),
            Some(v) => Err(Error::BadRequest(format!("pixels[{i}] = {v} is outside 0..16"))),
            None => Err(Error::BadRequest(format!("pixels[{i}] is not a number: {p}"))),
        })
        .collect()
}

impl Handler for Digits {
    fn handle(req: Request) -> Result<Response, Error> {
        let input = Tensor::from_f32(&[1, 64], &pixels(&req)?)?;
        let graph = Graph::load_by_name("digits")?;
        let outputs = graph.run(&[("input", &input)])?;
        let probabilities = outputs.get("probabilities")?.to_f32()?;
        let digit = probabilities
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .ok_or_else(|| Error::Internal("the model returned no probabilities".into()))?;
        Response::json(&json!({ "digit": digit, "probabilities": probabilities }))
    }
}

infercell_guest::export!(Digits);
