//! Bills: meter sums times the plan's unit prices, in exact decimal arithmetic.
//!
//! `amount = quantity x unit_price` exactly (no rounding per line), `total` is the exact sum of
//! the amounts, and only `total_due` is rounded, half to even, to the currency's minor unit.

use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};

use super::{Kind, METERS, Meters};
use crate::config::Prices;

/// One line: a function's or a model's use of one meter.
#[derive(Debug, Clone)]
pub struct Line {
    pub kind: Kind,
    /// The function's or the model's name.
    pub function: String,
    pub meter: &'static str,
    pub quantity: Decimal,
    pub unit_price: Decimal,
    pub amount: Decimal,
}

/// Per-function (or per-model) summary.
#[derive(Debug, Clone)]
pub struct FunctionCost {
    pub kind: Kind,
    pub function: String,
    pub invocations: i64,
    pub cost: Decimal,
}

/// A tenant's bill over `[from, to)`.
#[derive(Debug, Clone)]
pub struct Bill {
    pub tenant: String,
    pub currency: String,
    pub from: String,
    pub to: String,
    pub lines: Vec<Line>,
    pub functions: Vec<FunctionCost>,
    pub total: Decimal,
    pub total_due: Decimal,
}

/// Digits after the decimal point of a currency's minor unit (ISO 4217).
pub fn minor_unit_digits(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" | "PYG" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "LYD" | "IQD" => 3,
        _ => 2,
    }
}

impl Bill {
    pub fn new(
        tenant: &str,
        currency: &str,
        from: String,
        to: String,
        totals: &[((Kind, String), Meters)],
        prices: &Prices,
    ) -> Self {
        let mut lines = Vec::new();
        let mut functions = Vec::new();
        for ((kind, function), meters) in totals {
            let kind = *kind;
            let mut cost = Decimal::ZERO;
            for meter in METERS {
                let quantity = meters.quantity(meter);
                let unit_price = prices.of(meter);
                let amount = quantity * unit_price;
                cost += amount;
                lines.push(Line { kind, function: function.clone(), meter, quantity, unit_price, amount });
            }
            functions.push(FunctionCost { kind, function: function.clone(), invocations: meters.invocations, cost });
        }
        let total: Decimal = lines.iter().map(|l| l.amount).sum();
        let total_due =
            total.round_dp_with_strategy(minor_unit_digits(currency), RoundingStrategy::MidpointNearestEven);
        Self { tenant: tenant.into(), currency: currency.into(), from, to, lines, functions, total, total_due }
    }

    pub fn to_json(&self) -> Value {
        let digits = minor_unit_digits(&self.currency);
        json!({
            "tenant": self.tenant,
            "currency": self.currency,
            "from": self.from,
            "to": self.to,
            "lines": self.lines.iter().map(|l| json!({
                "kind": l.kind.as_str(),
                "function": l.function,
                "meter": l.meter,
                "quantity": dec(l.quantity),
                "unit_price": dec(l.unit_price),
                "amount": dec(l.amount),
            })).collect::<Vec<_>>(),
            "functions": self.functions.iter().map(|f| json!({
                "kind": f.kind.as_str(),
                "function": f.function,
                "invocations": f.invocations,
                "cost": dec(f.cost),
                "cost_per_1000": dec(per_thousand(f.cost, f.invocations)),
            })).collect::<Vec<_>>(),
            "total": dec(self.total),
            "total_due": format!("{:.*}", digits as usize, self.total_due),
        })
    }

    /// `function,meter,quantity,unit_price,amount,kind`, one row per line (`kind` was added
    /// last, so scripts reading the first five columns by position keep working).
    pub fn to_csv(&self) -> String {
        let mut out = String::from("function,meter,quantity,unit_price,amount,kind\n");
        for l in &self.lines {
            out.push_str(&format!(
                "{},{},{},{},{},{}\n",
                l.function,
                l.meter,
                dec(l.quantity),
                dec(l.unit_price),
                dec(l.amount),
                l.kind.as_str()
            ));
        }
        out
    }
}

/// Cost per 1,000 invocations, to 10 decimal places (the one derived figure that divides).
fn per_thousand(cost: Decimal, invocations: i64) -> Decimal {
    if invocations == 0 {
        return Decimal::ZERO;
    }
    (cost * Decimal::from(1000) / Decimal::from(invocations))
        .round_dp_with_strategy(10, RoundingStrategy::MidpointNearestEven)
}

/// A decimal as its exact plain string, without trailing zeros.
fn dec(d: Decimal) -> String {
    d.normalize().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn amounts_are_exact_and_only_the_total_due_is_rounded() {
        let prices = Config::embedded().plans["free"].prices.clone();
        let echo = Meters { invocations: 3, guest_us: 2_500, bytes_in: 10, bytes_out: 10, ..Meters::default() };
        let bill =
            Bill::new("acme", "USD", "a".into(), "b".into(), &[((Kind::Function, "echo".into()), echo)], &prices);
        assert_eq!(bill.lines.len(), METERS.len());
        let inv = bill.lines.iter().find(|l| l.meter == "invocations").expect("line");
        assert_eq!(dec(inv.amount), "0.0000006");
        let guest = bill.lines.iter().find(|l| l.meter == "guest_ms").expect("line");
        assert_eq!(dec(guest.quantity), "2.5");
        assert_eq!(dec(guest.amount), "0.00000005");
        // 0.0000006 + 0.00000005 + 10 x 0.00000000009
        assert_eq!(dec(bill.total), "0.0000006509");
        assert_eq!(bill.to_json()["total_due"], "0.00");
        let csv = bill.to_csv();
        assert!(
            csv.starts_with(
                "function,meter,quantity,unit_price,amount,kind\necho,invocations,3,0.0000002,0.0000006,function\n"
            ),
            "{csv}"
        );
    }

    #[test]
    fn total_due_rounds_half_to_even() {
        let mut prices = Config::embedded().plans["free"].prices.clone();
        prices.invocations = Decimal::new(5, 3); // 0.005 each
        let one = Meters { invocations: 1, ..Meters::default() };
        let bill = Bill::new("t", "USD", "a".into(), "b".into(), &[((Kind::Function, "f".into()), one)], &prices);
        assert_eq!(bill.to_json()["total_due"], "0.00"); // 0.005 -> 0.00 (half to even)
        let three = Meters { invocations: 3, ..Meters::default() };
        let bill = Bill::new("t", "USD", "a".into(), "b".into(), &[((Kind::Function, "f".into()), three)], &prices);
        assert_eq!(bill.to_json()["total_due"], "0.02"); // 0.015 -> 0.02
        assert_eq!(Bill::new("t", "JPY", "a".into(), "b".into(), &[], &prices).to_json()["total_due"], "0");
    }
}
