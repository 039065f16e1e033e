//! Access justifications (docs/justifications.md): the purpose and reference a caller declares
//! on the data path, the tenant's rule on the purposes that may decrypt, and their checks.

use std::fmt;

/// The vocabulary of purposes: the proto's `keyward.v1.Purpose` without `UNSPECIFIED`. The
/// discriminant is the proto number, and the bit of [`keyward_store::TenantPolicy`]'s
/// `decrypt_purposes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Purpose {
    ModelInference = 1,
    CustomerSupport = 2,
    AbuseInvestigation = 3,
    LegalHold = 4,
    DataExport = 5,
    SystemMaintenance = 6,
}

impl Purpose {
    /// Every purpose, in proto order.
    pub const ALL: [Purpose; 6] = [
        Purpose::ModelInference,
        Purpose::CustomerSupport,
        Purpose::AbuseInvestigation,
        Purpose::LegalHold,
        Purpose::DataExport,
        Purpose::SystemMaintenance,
    ];

    /// The snake_case name the audit log and the Cedar policies use (`model_inference`).
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::ModelInference => "model_inference",
            Purpose::CustomerSupport => "customer_support",
            Purpose::AbuseInvestigation => "abuse_investigation",
            Purpose::LegalHold => "legal_hold",
            Purpose::DataExport => "data_export",
            Purpose::SystemMaintenance => "system_maintenance",
        }
    }

    /// The purpose of a proto enum number; `None` for 0 (unspecified) and unknown numbers.
    pub fn from_number(n: i32) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| *p as i32 == n)
    }

    /// The purpose named `name` (snake_case, as [`Purpose::as_str`] spells it).
    pub fn from_name(name: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Its bit in a tenant's `decrypt_purposes`.
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// The purposes of a bit set, in proto order (bits of no known purpose are ignored).
    pub fn from_bits(bits: u32) -> Vec<Purpose> {
        Purpose::ALL
            .into_iter()
            .filter(|p| bits & p.bit() != 0)
            .collect()
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest reference, in bytes.
pub const MAX_REFERENCE_BYTES: usize = 128;

/// A declared reason for a data-path call: a purpose and, optionally, a reference the caller's
/// organisation can trace (a ticket id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Justification {
    pub purpose: Purpose,
    pub reference: Option<String>,
}

impl Justification {
    /// The reference, if any.
    pub fn reference(&self) -> Option<&str> {
        self.reference.as_deref()
    }
}

/// Why a tenant's rule refuses a decrypt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleViolation {
    /// The tenant lists decrypt purposes and the call declared none.
    Missing,
    /// The declared purpose is not one of the tenant's.
    NotAllowed(Purpose),
}

/// Checks a decrypt's justification against a tenant's `decrypt_purposes` bit set (0: no rule).
pub fn check_decrypt_rule(
    bits: u32,
    justification: Option<&Justification>,
) -> Result<(), RuleViolation> {
    if bits == 0 {
        return Ok(());
    }
    match justification {
        None => Err(RuleViolation::Missing),
        Some(j) if bits & j.purpose.bit() == 0 => Err(RuleViolation::NotAllowed(j.purpose)),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_bits_round_trip() {
        for p in Purpose::ALL {
            assert_eq!(Purpose::from_number(p as i32), Some(p));
            assert_eq!(Purpose::from_name(p.as_str()), Some(p));
            assert_eq!(Purpose::from_bits(p.bit()), vec![p]);
            assert_eq!(
                p.bit() & !keyward_store::TenantPolicy::PURPOSE_BITS,
                0,
                "{p}"
            );
        }
        assert_eq!(Purpose::from_number(0), None);
        assert_eq!(Purpose::from_number(7), None);
        assert_eq!(Purpose::from_name("Model_Inference"), None);
    }

    #[test]
    fn the_rule_allows_listed_purposes_only_and_requires_one_when_set() {
        let j = |p| Justification {
            purpose: p,
            reference: None,
        };
        assert_eq!(check_decrypt_rule(0, None), Ok(()));
        assert_eq!(check_decrypt_rule(0, Some(&j(Purpose::LegalHold))), Ok(()));
        let bits = Purpose::ModelInference.bit() | Purpose::LegalHold.bit();
        assert_eq!(check_decrypt_rule(bits, None), Err(RuleViolation::Missing));
        assert_eq!(
            check_decrypt_rule(bits, Some(&j(Purpose::LegalHold))),
            Ok(())
        );
        assert_eq!(
            check_decrypt_rule(bits, Some(&j(Purpose::CustomerSupport))),
            Err(RuleViolation::NotAllowed(Purpose::CustomerSupport))
        );
    }
}
