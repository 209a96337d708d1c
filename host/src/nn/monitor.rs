//! Model monitoring: per named model version, running statistics of what its computes take
//! and give, and a drift score of the current window against a reference window.
//!
//! Every compute of a named model counts, whether a function ran it through wasi:nn or `/v2`
//! did (a mirrored copy's does not: it repeats a call already counted). Per call the cost is
//! bounded: at most [`MAX_ROWS`] samples of a batch count; an input sample contributes at most
//! [`MAX_FEATURES`] values (a larger sample contributes two summary features, its mean and its
//! standard deviation, over at most [`SUMMARY_STRIDE_MAX`] elements it strides through), and a
//! classifier output (a `[N, C]` or `[C]` float tensor with 2 to [`MAX_CLASSES`] classes, `C`
//! fixed by its first call) its argmax. Values that are not finite (NaN, infinities) are
//! counted apart, never in the statistics.
//!
//! Per feature: count, mean and variance (Welford), min and max, and a histogram over
//! [`BINS`] equal bins between the min and max of the first [`WARMUP`] samples, with one open
//! bin on each side. Per classifier output: the histogram of predicted classes. Per output:
//! its value range.
//!
//! `baseline()` makes the current window the reference and starts a new current window (a
//! feature still in its warm-up gets its bins from the values seen so far). The
//! drift score is the population stability index (PSI, sum of `(c - r) * ln(c / r)` over the
//! bins' shares, each share at least [`PSI_FLOOR`]) of the current window against the
//! reference: per input feature and per classifier output. The overall score is the larger of
//! the predictions' PSI and the mean PSI of the input features; it is reported once both
//! windows hold [`MIN_SAMPLES`] samples. Read it as the field does: under 0.1 no shift, 0.1 to
//! 0.25 a moderate shift, over 0.25 a significant one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Value, json};

use super::{ElemType, HostTensor};

/// Values one input sample contributes as features; a larger sample contributes summaries.
pub const MAX_FEATURES: usize = 256;
/// Elements a summary reads of one large sample (evenly strided).
pub const SUMMARY_STRIDE_MAX: usize = 4096;
/// Classes a classifier output may have to be counted as one.
pub const MAX_CLASSES: usize = 1000;
/// Equal bins between the warm-up range's ends (plus one open bin on each side).
pub const BINS: usize = 10;
/// Samples whose range fixes the bins.
pub const WARMUP: usize = 32;
/// Samples each window needs before a drift score is reported.
pub const MIN_SAMPLES: u64 = 30;
/// The smallest share a bin counts with in the PSI (an empty bin would be infinite).
pub const PSI_FLOOR: f64 = 1e-4;
/// Model versions monitored at once, and per tenant; past them, new ones are not monitored.
pub const MAX_MONITORS: usize = 4096;
pub const MAX_MONITORS_PER_TENANT: usize = 256;
/// Samples (rows along dimension 0) one compute contributes at most: a larger batch is
/// strided through.
pub const MAX_ROWS: usize = 64;

/// What one compute contributes, extracted before the engine takes its inputs.
pub struct Observation {
    /// Per input (by name): each sample's features.
    inputs: Vec<(String, Vec<Vec<f64>>)>,
}

/// Extracts the features of `inputs` (see the module docs).
pub fn observe_inputs(inputs: &[(String, HostTensor)]) -> Observation {
    Observation { inputs: inputs.iter().filter_map(|(name, t)| Some((name.clone(), samples(t)?))).collect() }
}

/// The values of `t` as f64, for the element types monitoring reads.
fn value_at(t: &HostTensor, i: usize) -> Option<f64> {
    let size = t.ty.size();
    let b = t.data.get(i * size..(i + 1) * size)?;
    Some(match t.ty {
        ElemType::F32 => f64::from(f32::from_le_bytes(b.try_into().ok()?)),
        ElemType::F64 => f64::from_le_bytes(b.try_into().ok()?),
        ElemType::I32 => f64::from(i32::from_le_bytes(b.try_into().ok()?)),
        ElemType::I64 => i64::from_le_bytes(b.try_into().ok()?) as f64,
        ElemType::U8 => f64::from(b[0]),
        _ => return None,
    })
}

fn readable(ty: ElemType) -> bool {
    matches!(ty, ElemType::F32 | ElemType::F64 | ElemType::I32 | ElemType::I64 | ElemType::U8)
}

/// Each sample's features: dimension 0 is the batch when there are two dimensions or more.
fn samples(t: &HostTensor) -> Option<Vec<Vec<f64>>> {
    if !readable(t.ty) {
        return None;
    }
    let elements = t.data.len() / t.ty.size().max(1);
    let n = if t.dims.len() >= 2 { t.dims[0] as usize } else { 1 };
    if n == 0 || elements == 0 {
        return None;
    }
    let per = elements / n;
    let step = n.div_ceil(MAX_ROWS);
    Some(
        (0..n)
            .step_by(step)
            .map(|s| {
                let base = s * per;
                if per <= MAX_FEATURES {
                    (0..per).filter_map(|i| value_at(t, base + i)).collect()
                } else {
                    let stride = per.div_ceil(SUMMARY_STRIDE_MAX);
                    let (mut count, mut sum, mut sq) = (0.0, 0.0, 0.0);
                    for i in (0..per).step_by(stride) {
                        if let Some(v) = value_at(t, base + i) {
                            count += 1.0;
                            sum += v;
                            sq += v * v;
                        }
                    }
                    let mean = if count > 0.0 { sum / count } else { 0.0 };
                    let var = if count > 0.0 { (sq / count - mean * mean).max(0.0) } else { 0.0 };
                    vec![mean, var.sqrt()]
                }
            })
            .collect(),
    )
}

/// The predicted class of each row of a classifier output, or `None` for another output.
fn predictions(t: &HostTensor) -> Option<(usize, Vec<usize>)> {
    if !matches!(t.ty, ElemType::F32 | ElemType::F64) {
        return None;
    }
    let (rows, classes) = match t.dims.as_slice() {
        [c] => (1, *c as usize),
        [n, c] => (*n as usize, *c as usize),
        _ => return None,
    };
    if !(2..=MAX_CLASSES).contains(&classes) {
        return None;
    }
    let argmax = (0..rows)
        .step_by(rows.div_ceil(MAX_ROWS))
        .map(|r| {
            (0..classes)
                .filter_map(|c| Some((c, value_at(t, r * classes + c)?)))
                .fold((0, f64::NEG_INFINITY), |best, (c, v)| if v > best.1 { (c, v) } else { best })
                .0
        })
        .collect();
    Some((classes, argmax))
}

/// Running statistics of one value.
#[derive(Clone, Default)]
struct Running {
    count: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
}

impl Running {
    fn add(&mut self, v: f64) {
        if self.count == 0 {
            (self.min, self.max) = (v, v);
        }
        self.count += 1;
        let delta = v - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (v - self.mean);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    fn variance(&self) -> f64 {
        if self.count > 1 { self.m2 / (self.count - 1) as f64 } else { 0.0 }
    }

    fn to_json(&self) -> Value {
        json!({"count": self.count, "mean": self.mean, "variance": self.variance(), "min": self.min, "max": self.max})
    }
}

/// One window's statistics of one feature.
#[derive(Clone, Default)]
struct FeatureWindow {
    stats: Running,
    /// `BINS + 2` counts once the edges are fixed.
    bins: Vec<u64>,
}

/// One feature: its bin edges (fixed after the warm-up) and its two windows.
#[derive(Clone, Default)]
struct Feature {
    /// `(lo, width)` of the equal bins.
    edges: Option<(f64, f64)>,
    warmup: Vec<f64>,
    current: FeatureWindow,
    reference: Option<FeatureWindow>,
    /// NaN and infinite values seen (kept out of the statistics).
    non_finite: u64,
}

impl Feature {
    fn bin(&self, v: f64) -> Option<usize> {
        let (lo, width) = self.edges?;
        let at = (v - lo) / width;
        Some(if at < 0.0 { 0 } else { (at as usize).min(BINS) + 1 })
    }

    /// Fixes the bins from the warm-up values, and counts those in them.
    fn fix_edges(&mut self) {
        if self.warmup.is_empty() {
            return;
        }
        let lo = self.warmup.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.warmup.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // A constant feature gets bins a unit wide around its value.
        let (lo, width) = if hi - lo > 1e-12 { (lo, (hi - lo) / BINS as f64) } else { (lo - 0.5, 0.1) };
        self.edges = Some((lo, width));
        self.current.bins = vec![0; BINS + 2];
        for v in std::mem::take(&mut self.warmup) {
            if let Some(b) = self.bin(v) {
                self.current.bins[b] += 1;
            }
        }
    }

    fn add(&mut self, v: f64) {
        if !v.is_finite() {
            self.non_finite += 1;
            return;
        }
        self.current.stats.add(v);
        if self.edges.is_none() {
            self.warmup.push(v);
            if self.warmup.len() >= WARMUP {
                self.fix_edges();
            }
            return;
        }
        if let Some(b) = self.bin(v) {
            self.current.bins[b] += 1;
        }
    }
}

/// The predicted classes of one classifier output, per window.
#[derive(Clone, Default)]
struct Classes {
    current: Vec<u64>,
    reference: Option<Vec<u64>>,
}

/// One model version's monitor.
#[derive(Default)]
struct Monitor {
    samples: u64,
    reference_samples: Option<u64>,
    /// Per input (by name), per feature index.
    features: Vec<(String, Vec<Feature>)>,
    /// Per classifier output (by name).
    classes: Vec<(String, Classes)>,
    /// Per output (by name): its values' range in the current window.
    ranges: Vec<(String, Running)>,
    baseline_at: Option<String>,
}

/// PSI of `current` against `reference` (counts over the same bins).
fn psi(current: &[u64], reference: &[u64]) -> Option<f64> {
    let (c_total, r_total) = (current.iter().sum::<u64>() as f64, reference.iter().sum::<u64>() as f64);
    if c_total == 0.0 || r_total == 0.0 || current.len() != reference.len() {
        return None;
    }
    Some(
        current
            .iter()
            .zip(reference)
            .map(|(c, r)| {
                let (c, r) = ((*c as f64 / c_total).max(PSI_FLOOR), (*r as f64 / r_total).max(PSI_FLOOR));
                (c - r) * (c / r).ln()
            })
            .sum(),
    )
}

impl Monitor {
    fn add(&mut self, observed: &Observation, outputs: &[(String, HostTensor)]) {
        let mut samples = 0;
        for (name, rows) in &observed.inputs {
            samples = samples.max(rows.len() as u64);
            let features = match self.features.iter().position(|(n, _)| n == name) {
                Some(i) => &mut self.features[i].1,
                None => {
                    self.features.push((name.clone(), Vec::new()));
                    &mut self.features.last_mut().expect("just pushed").1
                }
            };
            for row in rows {
                if features.len() < row.len() {
                    features.resize_with(row.len(), Feature::default);
                }
                for (feature, v) in features.iter_mut().zip(row) {
                    feature.add(*v);
                }
            }
        }
        self.samples += samples.max(1);
        for (name, t) in outputs {
            if let Some((classes, argmax)) = predictions(t) {
                let entry = match self.classes.iter().position(|(n, _)| n == name) {
                    Some(i) => &mut self.classes[i].1,
                    None => {
                        self.classes.push((name.clone(), Classes::default()));
                        &mut self.classes.last_mut().expect("just pushed").1
                    }
                };
                // The classes are fixed by the first call; another width is not this output.
                if entry.current.is_empty() {
                    entry.current = vec![0; classes];
                }
                if entry.current.len() != classes {
                    continue;
                }
                for c in argmax {
                    entry.current[c] += 1;
                }
            }
            if readable(t.ty) {
                let range = match self.ranges.iter().position(|(n, _)| n == name) {
                    Some(i) => &mut self.ranges[i].1,
                    None => {
                        self.ranges.push((name.clone(), Running::default()));
                        &mut self.ranges.last_mut().expect("just pushed").1
                    }
                };
                let elements = t.data.len() / t.ty.size().max(1);
                let stride = elements.div_ceil(SUMMARY_STRIDE_MAX).max(1);
                for i in (0..elements).step_by(stride) {
                    if let Some(v) = value_at(t, i).filter(|v| v.is_finite()) {
                        range.add(v);
                    }
                }
            }
        }
    }

    fn baseline(&mut self, at: String) {
        self.reference_samples = Some(self.samples);
        self.samples = 0;
        for (_, features) in &mut self.features {
            for f in features.iter_mut() {
                if f.edges.is_none() {
                    f.fix_edges();
                }
                let fresh = FeatureWindow { stats: Running::default(), bins: vec![0; f.current.bins.len()] };
                f.reference = Some(std::mem::replace(&mut f.current, fresh));
            }
        }
        for (_, c) in &mut self.classes {
            let fresh = vec![0; c.current.len()];
            c.reference = Some(std::mem::replace(&mut c.current, fresh));
        }
        for (_, r) in &mut self.ranges {
            *r = Running::default();
        }
        self.baseline_at = Some(at);
    }

    /// The overall drift score, once both windows are large enough.
    fn score(&self) -> Option<f64> {
        if self.samples < MIN_SAMPLES || self.reference_samples? < MIN_SAMPLES {
            return None;
        }
        let feature_psis: Vec<f64> = self
            .features
            .iter()
            .flat_map(|(_, fs)| fs.iter())
            .filter_map(|f| psi(&f.current.bins, &f.reference.as_ref()?.bins))
            .collect();
        let inputs = (!feature_psis.is_empty()).then(|| feature_psis.iter().sum::<f64>() / feature_psis.len() as f64);
        let predictions = self
            .classes
            .iter()
            .filter_map(|(_, c)| psi(&c.current, c.reference.as_ref()?))
            .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))));
        match (inputs, predictions) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0).max(b.unwrap_or(0.0))),
        }
    }

    fn report(&self) -> Value {
        let inputs: Vec<Value> = self
            .features
            .iter()
            .map(|(name, features)| {
                let psis: Vec<Option<f64>> = features
                    .iter()
                    .map(|f| psi(&f.current.bins, &f.reference.as_ref()?.bins))
                    .collect();
                let known: Vec<f64> = psis.iter().flatten().copied().collect();
                json!({
                    "name": name,
                    "features": features.len(),
                    "drift_score": (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64),
                    "max_feature_drift": known.iter().copied().fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p)))),
                    "per_feature": features.iter().zip(&psis).enumerate().map(|(i, (f, p))| json!({
                        "index": i,
                        "current": f.current.stats.to_json(),
                        "reference": f.reference.as_ref().map(|r| r.stats.to_json()),
                        "psi": p,
                        "non_finite": f.non_finite,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let outputs: Vec<Value> = self
            .ranges
            .iter()
            .map(|(name, range)| {
                let classes = self.classes.iter().find(|(n, _)| n == name).map(|(_, c)| c);
                json!({
                    "name": name,
                    "range": range.to_json(),
                    "predicted_classes": classes.map(|c| json!({
                        "current": c.current,
                        "reference": c.reference,
                        "psi": c.reference.as_ref().and_then(|r| psi(&c.current, r)),
                    })),
                })
            })
            .collect();
        json!({
            "drift_score": self.score(),
            "samples": self.samples,
            "reference_samples": self.reference_samples,
            "baseline_at": self.baseline_at,
            "min_samples": MIN_SAMPLES,
            "inputs": inputs,
            "outputs": outputs,
        })
    }
}

/// Every model version's monitor, by tenant, then model, then version: a lookup borrows the
/// call's names, and each monitor has a lock of its own.
type Index = HashMap<String, HashMap<String, HashMap<u32, Arc<Mutex<Monitor>>>>>;

/// Every model version's monitor.
#[derive(Default)]
pub struct Monitors {
    monitors: RwLock<Index>,
}

fn lock(m: &Mutex<Monitor>) -> std::sync::MutexGuard<'_, Monitor> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Monitors {
    fn find(&self, tenant: &str, name: &str, version: u32) -> Option<Arc<Mutex<Monitor>>> {
        let index = self.monitors.read().unwrap_or_else(|e| e.into_inner());
        index.get(tenant)?.get(name)?.get(&version).cloned()
    }

    /// Counts one compute of `tenant`'s model `name@version`.
    pub fn record(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
        observed: &Observation,
        outputs: &[(String, HostTensor)],
    ) {
        let monitor = match self.find(tenant, name, version) {
            Some(m) => m,
            None => {
                let mut index = self.monitors.write().unwrap_or_else(|e| e.into_inner());
                let total: usize = index.values().flat_map(|m| m.values()).map(HashMap::len).sum();
                let mine: usize = index.get(tenant).map_or(0, |m| m.values().map(HashMap::len).sum());
                let known = index.get(tenant).and_then(|m| m.get(name)).is_some_and(|v| v.contains_key(&version));
                if !known && (total >= MAX_MONITORS || mine >= MAX_MONITORS_PER_TENANT) {
                    return;
                }
                index
                    .entry(tenant.to_string())
                    .or_default()
                    .entry(name.to_string())
                    .or_default()
                    .entry(version)
                    .or_default()
                    .clone()
            }
        };
        lock(&monitor).add(observed, outputs);
    }

    /// Makes the calls seen so far of `name@version` the reference window; false when the
    /// version has seen no call.
    pub fn baseline(&self, tenant: &str, name: &str, version: u32) -> bool {
        match self.find(tenant, name, version) {
            Some(m) => {
                lock(&m).baseline(crate::clock::now_rfc3339());
                true
            }
            None => false,
        }
    }

    /// The report of `name@version` (see the module docs), `None` before its first call.
    pub fn report(&self, tenant: &str, name: &str, version: u32) -> Option<Value> {
        self.find(tenant, name, version).map(|m| lock(&m).report())
    }

    /// Forgets every version of `tenant`'s model `name` (deleted).
    pub fn forget(&self, tenant: &str, name: &str) {
        if let Some(models) = self.monitors.write().unwrap_or_else(|e| e.into_inner()).get_mut(tenant) {
            models.remove(name);
        }
    }

    /// Every drift score there is: (tenant, model, version, score).
    pub fn scores(&self) -> Vec<(String, String, u32, f64)> {
        let monitors: Vec<(String, String, u32, Arc<Mutex<Monitor>>)> = {
            let index = self.monitors.read().unwrap_or_else(|e| e.into_inner());
            index
                .iter()
                .flat_map(|(t, models)| {
                    models.iter().flat_map(move |(n, versions)| {
                        versions.iter().map(move |(v, m)| (t.clone(), n.clone(), *v, m.clone()))
                    })
                })
                .collect()
        };
        monitors.into_iter().filter_map(|(t, n, v, m)| Some((t, n, v, lock(&m).score()?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(values: &[f32]) -> Vec<(String, HostTensor)> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        vec![("x".into(), HostTensor { dims: vec![1, values.len() as u32], ty: ElemType::F32, data })]
    }

    fn output(probabilities: &[f32]) -> Vec<(String, HostTensor)> {
        let data = probabilities.iter().flat_map(|v| v.to_le_bytes()).collect();
        vec![("p".into(), HostTensor { dims: vec![1, probabilities.len() as u32], ty: ElemType::F32, data })]
    }

    /// A deterministic spread of values in [0, 1).
    fn spread(i: usize) -> f32 {
        ((i * 37) % 100) as f32 / 100.0
    }

    #[test]
    fn drift_rises_when_the_inputs_shift_and_stays_low_when_they_do_not() {
        let monitors = Monitors::default();
        let call = |shift: f32, i: usize| {
            let x = [spread(i) + shift, spread(i + 7) + shift, 0.5];
            let class = if x[0] > 0.5 { [0.1, 0.9] } else { [0.9, 0.1] };
            monitors.record("t", "m", 1, &observe_inputs(&input(&x)), &output(&class));
        };
        for i in 0..200 {
            call(0.0, i);
        }
        assert_eq!(monitors.report("t", "m", 1).unwrap()["drift_score"], Value::Null, "no baseline yet");
        assert!(monitors.baseline("t", "m", 1));
        for i in 200..400 {
            call(0.0, i);
        }
        let same = monitors.report("t", "m", 1).unwrap()["drift_score"].as_f64().unwrap();
        assert!(same < 0.1, "the same distribution: {same}");
        assert!(monitors.baseline("t", "m", 1));
        for i in 0..200 {
            call(0.0, i);
        }
        monitors.baseline("t", "m", 1);
        for i in 0..200 {
            call(0.4, i);
        }
        let report = monitors.report("t", "m", 1).unwrap();
        let shifted = report["drift_score"].as_f64().unwrap();
        assert!(shifted > 0.25, "shifted by 0.4: {shifted}");
        // The predictions shifted too, and the constant feature did not.
        let classes = &report["outputs"][0]["predicted_classes"];
        assert!(classes["psi"].as_f64().unwrap() > 0.25, "{classes}");
        assert!(report["inputs"][0]["per_feature"][2]["psi"].as_f64().unwrap() < 0.01, "{report}");
        assert_eq!(monitors.scores().len(), 1);
        monitors.forget("t", "m");
        assert!(monitors.report("t", "m", 1).is_none());
    }

    #[test]
    fn a_baseline_taken_in_the_warmup_and_odd_values_keep_the_score_sound() {
        let monitors = Monitors::default();
        let call =
            |v: f32, classes: &[f32]| monitors.record("t", "m", 1, &observe_inputs(&input(&[v])), &output(classes));
        // A baseline before the bins are fixed (fewer than WARMUP calls) fixes them.
        for i in 0..(MIN_SAMPLES as usize) {
            call(spread(i), &[0.2, 0.8]);
        }
        assert!(monitors.baseline("t", "m", 1));
        for i in 0..(MIN_SAMPLES as usize) {
            call(spread(i), &[0.2, 0.8]);
        }
        // Not finite values and an output of another width are kept out.
        call(f32::NAN, &[0.1, 0.2, 0.7]);
        call(f32::INFINITY, &[0.2, 0.8]);
        let report = monitors.report("t", "m", 1).unwrap();
        let score = report["drift_score"].as_f64().unwrap();
        assert!(score < 0.1, "{report}");
        assert_eq!(report["inputs"][0]["per_feature"][0]["non_finite"], 2, "{report}");
        assert!(report["inputs"][0]["per_feature"][0]["current"]["mean"].as_f64().unwrap().is_finite());
        let classes: u64 = report["outputs"][0]["predicted_classes"]["current"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(classes, MIN_SAMPLES + 1, "the 3-class output is not counted: {report}");
    }

    #[test]
    fn large_samples_are_summarized_at_bounded_cost() {
        let values: Vec<f32> = (0..150_528).map(|i| (i % 255) as f32).collect();
        let observed = observe_inputs(&input(&values));
        assert_eq!(observed.inputs[0].1[0].len(), 2, "mean and standard deviation");
        // A batch of three samples is three rows.
        let data = (0..12).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let batch = vec![("x".into(), HostTensor { dims: vec![3, 4], ty: ElemType::F32, data })];
        assert_eq!(observe_inputs(&batch).inputs[0].1.len(), 3);
        // A batch of 4096 counts at most MAX_ROWS samples.
        let data = (0..4096 * 2).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let batch = vec![("x".into(), HostTensor { dims: vec![4096, 2], ty: ElemType::F32, data })];
        assert_eq!(observe_inputs(&batch).inputs[0].1.len(), MAX_ROWS);
    }
}
