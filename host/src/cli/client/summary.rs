//! Readable summaries in the commands' output: the bill table, and the short forms of
//! digests, tensor lists and import lists.

use serde_json::Value;

/// A bill as a readable table.
pub(super) fn bill_table(v: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let currency = s(&v["currency"]);
    let mut out = format!("Bill for {}, {} to {} ({currency})\n\n", s(&v["tenant"]), s(&v["from"]), s(&v["to"]));
    out.push_str(&format!(
        "{:<8} {:<20} {:<14} {:>22} {:>16} {:>24}\n",
        "KIND", "NAME", "METER", "QUANTITY", "UNIT PRICE", "AMOUNT"
    ));
    for l in v["lines"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<8} {:<20} {:<14} {:>22} {:>16} {:>24}\n",
            s(&l["kind"]),
            s(&l["function"]),
            s(&l["meter"]),
            s(&l["quantity"]),
            s(&l["unit_price"]),
            s(&l["amount"])
        ));
    }
    out.push_str(&format!(
        "\n{:<8} {:<20} {:>12} {:>24} {:>24}\n",
        "KIND", "NAME", "INVOCATIONS", "COST", "COST PER 1000"
    ));
    for f in v["functions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<8} {:<20} {:>12} {:>24} {:>24}\n",
            s(&f["kind"]),
            s(&f["function"]),
            f["invocations"].to_string(),
            s(&f["cost"]),
            s(&f["cost_per_1000"])
        ));
    }
    out.push_str(&format!("\nTOTAL      {} {currency}\nTOTAL DUE  {} {currency}", s(&v["total"]), s(&v["total_due"])));
    out
}

/// `input FP32 [-1, 64], ...`
pub(super) fn tensors(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let shape: Vec<String> = t["shape"].as_array().into_iter().flatten().map(|d| d.to_string()).collect();
            format!(
                "{} {} [{}]",
                t["name"].as_str().unwrap_or_default(),
                t["datatype"].as_str().unwrap_or_default(),
                shape.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn short_digest(d: &str) -> String {
    d.chars().take(19).collect()
}

/// Import names grouped by package and version: `wasi:io/{error,poll,streams}@0.2.6, ...`.
pub(super) fn join(v: &Value) -> String {
    let mut groups: Vec<(String, String, Vec<String>)> = Vec::new();
    for name in v.as_array().into_iter().flatten().filter_map(Value::as_str) {
        let (path, version) = name.split_once('@').unwrap_or((name, ""));
        let (package, interface) = path.split_once('/').unwrap_or((path, ""));
        match groups.iter_mut().find(|(p, v, _)| p == package && v == version) {
            Some((_, _, interfaces)) => interfaces.push(interface.to_string()),
            None => groups.push((package.to_string(), version.to_string(), vec![interface.to_string()])),
        }
    }
    if groups.is_empty() {
        return "(none)".into();
    }
    groups
        .into_iter()
        .map(|(package, version, interfaces)| {
            let at = if version.is_empty() { String::new() } else { format!("@{version}") };
            if interfaces.len() == 1 {
                format!("{package}/{}{at}", interfaces[0])
            } else {
                format!("{package}/{{{}}}{at}", interfaces.join(","))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A model monitor's report: the drift score, then each input and output.
pub(super) fn monitor(v: &Value) -> String {
    let score = |s: &Value| s.as_f64().map_or_else(|| "-".to_string(), |s| format!("{s:.3}"));
    let mut out = format!(
        "{}@{}: drift score {} ({} calls since the baseline{}; a score needs {} in each window)\n",
        v["name"].as_str().unwrap_or_default(),
        v["version"],
        score(&v["drift_score"]),
        v["samples"],
        match v["baseline_at"].as_str() {
            Some(at) => format!(", taken {at} over {} calls", v["reference_samples"]),
            None => ": no baseline yet, set one with --baseline now".to_string(),
        },
        v["min_samples"],
    );
    for input in v["inputs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "input  {:<16} {:>5} features  drift {}  (largest feature {})\n",
            input["name"].as_str().unwrap_or_default(),
            input["features"],
            score(&input["drift_score"]),
            score(&input["max_feature_drift"]),
        ));
    }
    for output in v["outputs"].as_array().into_iter().flatten() {
        let range = &output["range"];
        out.push_str(&format!(
            "output {:<16} range [{}, {}]",
            output["name"].as_str().unwrap_or_default(),
            score(&range["min"]),
            score(&range["max"]),
        ));
        if let Some(classes) = output["predicted_classes"].as_object() {
            out.push_str(&format!("  predicted classes {}  drift {}", classes["current"], score(&classes["psi"])));
        }
        out.push('\n');
    }
    out.trim_end().to_string()
}
