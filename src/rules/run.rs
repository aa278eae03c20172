//! Running a rule set where it cannot hurt: bounded sets inline, the rest on the blocking pool
//! under the configured budget. Both the proxy (API responses) and the refresher (token
//! responses) evaluate through [`run`], so both obey `evaluation.*`.
//!
//! Owns the thread hand-off and the budget; what a rule means is [`super::RuleSet`]'s.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::engine::Cancel;
use super::{Facts, Outcome, RuleSet};
use crate::config::EvaluationConfig;

/// The engine checks its own deadline; this grace lets it report a precise error first.
const BUDGET_GRACE: Duration = Duration::from_millis(20);

/// Runs the rules. Bounded rule sets (see [`RuleSet::is_bounded`]) run inline: the engine
/// stops them within the budget, and a thread hand-off would cost more than the rules
/// (measured in `benches/engines.rs`). Others run on the blocking pool; if the budget runs
/// out there (some builtins ignore the engine's time limit) the evaluation is cancelled and
/// the response passes through: a slow rule costs one blocking thread, never an async
/// worker or other traffic.
pub async fn run(
    rules: Arc<RuleSet>,
    facts: Facts,
    body: Bytes,
    eval: &EvaluationConfig,
) -> Outcome {
    let cancel = Cancel::default();
    if rules.is_bounded() {
        return rules.evaluate(&facts, &body, eval, &cancel);
    }
    let eval = eval.clone();
    let budget = eval.timeout;
    let task_cancel = cancel.clone();
    let task =
        tokio::task::spawn_blocking(move || rules.evaluate(&facts, &body, &eval, &task_cancel));
    match tokio::time::timeout(budget + BUDGET_GRACE, task).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(join)) => Outcome::RuleError {
            rule: "(engine)".into(),
            message: format!("evaluation thread failed: {join}"),
        },
        Err(_) => {
            cancel.cancel();
            Outcome::RuleError {
                rule: "(budget)".into(),
                message: format!("rules did not finish within the {budget:?} evaluation budget"),
            }
        }
    }
}
