//! What a function's call leaves behind besides its answer: the denials it met (audited,
//! counted, logged), its log lines (with granted secrets redacted), its dropped log bytes, and
//! the active-instance gauge while it runs.

use crate::app::App;
use crate::registry::{Deployment, LogEntry};
use crate::runtime::{LogLevel, Outcome};

/// Records what a finished function call left: its denials and its log.
pub(super) async fn after_function<T>(
    app: &App,
    actor: &str,
    request_id: &str,
    deployment: &Deployment,
    outcome: &mut Outcome<T>,
) {
    let denials = std::mem::take(&mut outcome.denials);
    record_denials(app, actor, deployment, &mut outcome.logs, denials).await;
    if outcome.logs_dropped > 0 {
        let fm = deployment.metrics.get_or_init(|| app.metrics.function(&deployment.tenant, &deployment.name));
        fm.log_bytes_dropped.inc_by(outcome.logs_dropped as u64);
    }
    record_logs(app, deployment, request_id, std::mem::take(&mut outcome.logs), outcome.logs_dropped);
}

/// Host calls a guest was refused for want of a grant: audited (actor: the calling key),
/// counted in `infercell_denials_total`, and written to the function's log.
async fn record_denials(
    app: &App,
    actor: &str,
    deployment: &Deployment,
    logs: &mut Vec<crate::runtime::LogLine>,
    denials: Vec<crate::runtime::Denial>,
) {
    // A guest can be denied in a loop: the first few are written out, the rest counted.
    const AUDITED: usize = 10;
    let total = denials.len();
    for (i, mut denial) in denials.into_iter().enumerate() {
        if denial.target.len() > 256 {
            let cut = (0..=256).rev().find(|i| denial.target.is_char_boundary(*i)).unwrap_or(0);
            denial.target.truncate(cut);
            denial.target.push('…');
        }
        if i == AUDITED {
            app.metrics.denied(&deployment.tenant, denial.capability, (total - AUDITED) as u64);
            logs.push(crate::runtime::LogLine {
                level: LogLevel::Warn,
                message: format!("[infercell] {} more denials in this call (not logged one by one)", total - AUDITED),
            });
            break;
        }
        app.metrics.denied(&deployment.tenant, denial.capability, 1);
        logs.push(crate::runtime::LogLine {
            level: LogLevel::Warn,
            message: match denial.capability {
                // Refused by the platform whatever the grant: nothing to grant.
                "network" | "outbound_requests" => {
                    format!("[infercell] denied: {} `{}`: {}", denial.capability, denial.target, denial.reason)
                }
                _ => format!(
                    "[infercell] denied: {} `{}` ({}): grant it under [capabilities]",
                    denial.capability, denial.target, denial.reason
                ),
            },
        });
        let mut entry = crate::audit::entry(
            actor,
            Some(&deployment.tenant),
            &format!("deny:{}", denial.capability),
            Some(&denial.target),
            "denied",
        );
        entry.detail = Some(format!("function {}@{}: {}", deployment.name, deployment.version, denial.reason));
        app.audit.record(entry).await;
    }
}

/// Appends a call's log lines to its function's log, with the values of the secrets it is
/// granted redacted.
fn record_logs(
    app: &App,
    deployment: &Deployment,
    request_id: &str,
    lines: Vec<crate::runtime::LogLine>,
    dropped: usize,
) {
    let version = deployment.version;
    if lines.is_empty() && dropped == 0 {
        return;
    }
    let time = crate::clock::now_rfc3339();
    let mut entries: Vec<LogEntry> = lines
        .into_iter()
        .map(|l| LogEntry {
            time: time.clone(),
            request_id: request_id.to_string(),
            version,
            level: l.level,
            message: if deployment.redact.is_empty() {
                l.message
            } else {
                crate::registry::secrets::redact(&l.message, &deployment.redact)
            },
        })
        .collect();
    if dropped > 0 {
        entries.push(LogEntry {
            time,
            request_id: request_id.to_string(),
            version,
            level: LogLevel::Warn,
            message: format!(
                "[infercell] {dropped} bytes of log output dropped: over the per-call cap of {} bytes",
                app.runtime.config().max_log_bytes_per_call
            ),
        });
    }
    app.registry.logs.append(&deployment.tenant, &deployment.name, entries);
}

/// Counts a running instance for the `active_instances` gauge, even if the client goes away.
pub(super) struct ActiveGuard<'a>(&'a App);

impl<'a> ActiveGuard<'a> {
    pub(super) fn new(app: &'a App) -> Self {
        app.metrics.active_instances.inc();
        Self(app)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.active_instances.dec();
    }
}
