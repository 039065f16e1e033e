//! `keyward policy check`: validate the Cedar policies and replay their test cases.

use std::io::Write as _;

use crate::cli::PolicyCommand;
use crate::exit;

pub(crate) fn policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    let PolicyCommand::Check {
        policies,
        identities,
        cases,
    } = cmd;
    let identities = identities.unwrap_or_else(|| policies.join("identities.toml"));
    let cases = cases.unwrap_or_else(|| policies.join("tests"));
    let loaded = keyward_authz::Policies::load(&policies, &identities)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "policies: {} policies in {} validate against the schema; {} principals in {} validate",
        loaded.policy_count(),
        policies.display(),
        loaded.principal_count(),
        identities.display()
    )?;
    let report = keyward_authz::cases::run(&loaded, &cases)?;
    for failure in &report.failures {
        writeln!(out, "FAILED {failure}")?;
    }
    writeln!(
        out,
        "cases: {} passed, {} failed ({})",
        report.passed,
        report.failures.len(),
        cases.display()
    )?;
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(exit::problems(anyhow::anyhow!(
            "{} policy test case(s) failed",
            report.failures.len()
        )))
    }
}
