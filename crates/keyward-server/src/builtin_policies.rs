//! A copy of the shipped `policies/` compiled into the binary, so that development mode works
//! from any directory (`keyward serve` outside the repository). Only used when `[authz]` is left
//! at its defaults, TLS is off, and `./policies` does not exist; the files are written to
//! `<data_dir>/policies` (if not already there) and loaded from there like any others.
//! A test checks that this list matches the repository's `policies/` directory.

use std::path::Path;

use crate::authz::PolicyFiles;

/// Subdirectory of the data directory the built-in policies are written to.
pub(crate) const DIR: &str = "policies";

/// (file name, contents) of every shipped policy file.
pub(crate) const FILES: &[(&str, &str)] = &[
    (
        "schema.cedarschema",
        include_str!("../../../policies/schema.cedarschema"),
    ),
    (
        "identities.toml",
        include_str!("../../../policies/identities.toml"),
    ),
    (
        "auditors.cedar",
        include_str!("../../../policies/auditors.cedar"),
    ),
    (
        "common.cedar",
        include_str!("../../../policies/common.cedar"),
    ),
    ("dev.cedar", include_str!("../../../policies/dev.cedar")),
    (
        "guards.cedar",
        include_str!("../../../policies/guards.cedar"),
    ),
    (
        "operators.cedar",
        include_str!("../../../policies/operators.cedar"),
    ),
    (
        "services.cedar",
        include_str!("../../../policies/services.cedar"),
    ),
    (
        "tenant_admins.cedar",
        include_str!("../../../policies/tenant_admins.cedar"),
    ),
];

/// Writes the built-in policies under `data_dir` (files already there are left alone: an
/// operator may have edited them) and returns where they are.
pub(crate) fn materialize(data_dir: &Path) -> std::io::Result<PolicyFiles> {
    let dir = data_dir.join(DIR);
    std::fs::create_dir_all(&dir)?;
    for (name, contents) in FILES {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, contents)?;
        }
    }
    Ok(PolicyFiles {
        identities_file: dir.join("identities.toml"),
        policies_dir: dir,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn the_built_in_copy_matches_the_shipped_policies() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let mut on_disk: Vec<String> = std::fs::read_dir(&shipped)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.file_name().into_string().unwrap())
            .filter(|n| {
                n.ends_with(".cedar") || n.ends_with(".cedarschema") || n == "identities.toml"
            })
            .collect();
        on_disk.sort();
        let mut built_in: Vec<String> = FILES.iter().map(|(n, _)| (*n).to_owned()).collect();
        built_in.sort();
        assert_eq!(built_in, on_disk, "update FILES in builtin_policies.rs");
        for (name, contents) in FILES {
            assert_eq!(
                std::fs::read_to_string(shipped.join(name)).unwrap(),
                *contents,
                "{name}"
            );
        }
    }

    #[test]
    fn materialized_policies_load() {
        let dir = tempfile::tempdir().unwrap();
        let files = materialize(dir.path()).unwrap();
        crate::authz::Authz::load(files).unwrap();
    }
}
