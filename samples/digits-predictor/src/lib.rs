//! `digits-predictor`: the digits model wrapped as a tensor function (the `predictor` world),
//! served under `/v2/models/digits-predictor` so Triton and KServe clients call it like a model.
//!
//! Input `pixels` FP32 `[N, 64]` with raw values 0..=16 (scikit-learn's digits format). The
//! guest checks the range and scales by 1/16 (pre-processing), runs the tenant's `digits` model
//! through wasi:nn, and adds the arg-max (post-processing): outputs `probabilities` FP32
//! `[N, 10]` and `digit` INT64 `[N]`.

use infercell_guest::Error;
use infercell_guest::nn::{Graph, Tensor as NnTensor};
use infercell_guest::predict::{Predictor, Tensor, input};

struct DigitsPredictor;

impl Predictor for DigitsPredictor {
    fn predict(inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let pixels = input(&inputs, "pixels")?;
        let rows = usize::try_from(pixels.shape.first().copied().unwrap_or(0)).unwrap_or(0);
        let raw = pixels.to_f32()?;
        if let Some((i, v)) = raw.iter().enumerate().find(|(_, v)| !(0.0..=16.0).contains(*v)) {
            return Err(Error::BadRequest(format!("pixels[{}][{}] = {v} is outside 0..16", i / 64, i % 64)));
        }
        let scaled: Vec<f32> = raw.iter().map(|v| v / 16.0).collect();
        let graph = Graph::load_by_name("digits")?;
        let outputs = graph.run(&[("input", &NnTensor::from_f32(&[rows as u32, 64], &scaled)?)])?;
        let probabilities = outputs.get("probabilities")?.to_f32()?;
        let digits: Vec<i64> = probabilities
            .chunks(10)
            .map(|row| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(d, _)| d as i64))
            .collect();
        Ok(vec![
            Tensor::from_f32("probabilities", &[rows as i64, 10], &probabilities),
            Tensor::from_i64("digit", &[rows as i64], &digits),
        ])
    }
}

infercell_guest::export_predictor!(DigitsPredictor);
