//! Per-tenant admission: request rate (token bucket), concurrent calls, monthly budget.
//!
//! Why per tenant and in front of the sandbox: a tenant flooding the server must be refused
//! before it costs anything (no instance, no record, no bill), and its refusals must not slow
//! anyone else down. The checks are in-memory and lock-free on the hot path except for one
//! short map lookup; refused calls are counted in metrics by the caller and never billed.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rust_decimal::Decimal;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Plan;

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("rate limit of {rate} requests/s (burst {burst}) exceeded; retry in {retry_after_secs} s")]
    Rate { rate: u32, burst: u32, retry_after_secs: u64 },
    #[error(
        "too many concurrent calls: this tenant may run {limit} at once (its plan and the platform's per-tenant share)"
    )]
    Concurrency { limit: u32 },
    #[error(
        "monthly budget of {budget} {currency} is spent ({spent} {currency} used this month); calls resume next month or on a bigger plan"
    )]
    Budget { budget: Decimal, spent: Decimal, currency: String },
}

impl Refusal {
    /// Label for `infercell_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Rate { .. } => "rate",
            Refusal::Concurrency { .. } => "concurrency",
            Refusal::Budget { .. } => "budget",
        }
    }
}

struct TenantQuota {
    plan: String,
    rate: Option<(DefaultDirectRateLimiter, u32, u32)>,
    slots: Arc<Semaphore>,
    limit: u32,
}

/// Holds a concurrency slot for the duration of a call.
pub struct Admission {
    _slot: OwnedSemaphorePermit,
    _also: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// A slot of a pool of the caller's own (mirrored calls have theirs).
    pub fn of(slot: OwnedSemaphorePermit) -> Self {
        Self { _slot: slot, _also: None }
    }

    /// Holds `also` too, for as long as the call.
    pub fn with(self, also: OwnedSemaphorePermit) -> Self {
        Self { _also: Some(also), ..self }
    }
}

/// Quota state of every tenant, created on first use from the tenant's plan.
#[derive(Default)]
pub struct Quotas {
    tenants: Mutex<HashMap<String, Arc<TenantQuota>>>,
    /// The platform's cap on one tenant's calls at once, whatever its plan allows, so that
    /// no tenant takes every instance slot (`runtime.max_instances_per_tenant`; 0: none).
    per_tenant: u32,
}

impl Quotas {
    /// Quotas with the platform's per-tenant cap on calls at once.
    pub fn new(per_tenant: u32) -> Self {
        Self { tenants: Mutex::default(), per_tenant }
    }

    /// Admits one call of `tenant` on `plan`, whose month-to-date spend is `spent`.
    pub fn admit(&self, tenant: &str, plan_name: &str, plan: &Plan, spent: Decimal) -> Result<Admission, Refusal> {
        if let Some(budget) = plan.monthly_budget
            && spent >= budget
        {
            return Err(Refusal::Budget { budget, spent, currency: plan.currency.clone() });
        }
        let quota = self.quota(tenant, plan_name, plan);
        if let Some((limiter, rate, burst)) = &quota.rate
            && let Err(not_until) = limiter.check()
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(Refusal::Rate { rate: *rate, burst: *burst, retry_after_secs: ceil_secs(wait) });
        }
        let slot = quota.slots.clone().try_acquire_owned().map_err(|_| Refusal::Concurrency { limit: quota.limit })?;
        Ok(Admission { _also: None, _slot: slot })
    }

    fn quota(&self, tenant: &str, plan_name: &str, plan: &Plan) -> Arc<TenantQuota> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = tenants.get(tenant)
            && q.plan == plan_name
        {
            return q.clone();
        }
        let rate = plan.requests_per_second.and_then(NonZeroU32::new).map(|rps| {
            let burst = plan.burst.and_then(NonZeroU32::new).unwrap_or(rps);
            (RateLimiter::direct(Quota::per_second(rps).allow_burst(burst)), rps.get(), burst.get())
        });
        let limit = if self.per_tenant > 0 { plan.max_concurrency.min(self.per_tenant) } else { plan.max_concurrency };
        let quota = Arc::new(TenantQuota {
            plan: plan_name.to_string(),
            rate,
            slots: Arc::new(Semaphore::new(limit as usize)),
            limit,
        });
        tenants.insert(tenant.to_string(), quota.clone());
        quota
    }
}

fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn rate_burst_and_concurrency() {
        let config = Config::embedded();
        let mut plan = config.plans["free"].clone();
        plan.max_concurrency = 30;
        // One token a second: the 21 admissions below cannot see a refill on any machine.
        plan.requests_per_second = Some(1);
        let quotas = Quotas::default();
        let mut held = Vec::new();
        for _ in 0..20 {
            held.push(quotas.admit("a", "free", &plan, Decimal::ZERO).expect("within the burst"));
        }
        let refusal = quotas.admit("a", "free", &plan, Decimal::ZERO).err().expect("over the burst");
        assert!(matches!(refusal, Refusal::Rate { rate: 1, burst: 20, retry_after_secs: 1 }), "{refusal:?}");
        // Another tenant has its own bucket.
        assert!(quotas.admit("b", "free", &plan, Decimal::ZERO).is_ok());

        let mut tight = plan.clone();
        tight.requests_per_second = None;
        tight.max_concurrency = 2;
        let one = quotas.admit("c", "tight", &tight, Decimal::ZERO).expect("first");
        let _two = quotas.admit("c", "tight", &tight, Decimal::ZERO).expect("second");
        assert_eq!(quotas.admit("c", "tight", &tight, Decimal::ZERO).err(), Some(Refusal::Concurrency { limit: 2 }));
        drop(one);
        assert!(quotas.admit("c", "tight", &tight, Decimal::ZERO).is_ok());
        // The platform's share caps a plan that allows more.
        let shared = Quotas::new(1);
        let _held = shared.admit("d", "tight", &tight, Decimal::ZERO).expect("first");
        assert_eq!(shared.admit("d", "tight", &tight, Decimal::ZERO).err(), Some(Refusal::Concurrency { limit: 1 }));
        assert!(shared.admit("e", "tight", &tight, Decimal::ZERO).is_ok(), "another tenant has its own share");
    }

    #[test]
    fn a_spent_budget_refuses() {
        let config = Config::embedded();
        let plan = &config.plans["free"];
        let quotas = Quotas::default();
        assert!(quotas.admit("a", "free", plan, Decimal::new(99, 2)).is_ok());
        let refusal = quotas.admit("a", "free", plan, Decimal::new(100, 2)).err().expect("budget spent");
        assert_eq!(refusal.reason(), "budget");
        assert!(refusal.to_string().contains("1.00 USD"), "{refusal}");
    }
}
