//! Feeds arbitrary bytes to the `shipwreck.toml` parser.
//!
//! Manifests come from users' repositories, so `Manifest::parse` must return an error, never
//! panic, on any input. Besides not crashing, the target checks the promises the rest of the
//! platform relies on: accepted manifests obey the documented rules, and errors point at a
//! line and column that exist in the input.

#![no_main]

use kraken_core::manifest::{Manifest, ManifestError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Manifests are UTF-8; `Manifest::from_dir` rejects anything else before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::parse(text) {
        Ok(manifest) => {
            let name = &manifest.app.name;
            assert!((1..=63).contains(&name.len()));
            assert!(!name.starts_with('-') && !name.ends_with('-'));
            assert!(manifest.config.port >= 1);
            assert!(!manifest.env.contains_key("PORT"));
            if manifest.config.lang.requires_run() {
                assert!(manifest.config.run.is_some());
            }
            if let Some(cpus) = manifest.resources.cpus {
                assert!(cpus > 0.0 && cpus <= 256.0);
            }
            // What was accepted survives a JSON round trip unchanged.
            let json = serde_json::to_string(&manifest).expect("a manifest serializes");
            let back: Manifest = serde_json::from_str(&json).expect("and deserializes");
            assert_eq!(back, manifest);
        }
        Err(ManifestError::Syntax { line, column, .. })
        | Err(ManifestError::Invalid { line, column, .. }) => {
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(line >= 1 && line <= lines.len(), "line {line} out of range");
            let width = lines[line - 1].chars().count();
            assert!(
                column >= 1 && column <= width + 1,
                "column {column} out of range"
            );
        }
        Err(ManifestError::TooLarge { size, limit }) => assert!(size > limit),
        Err(other) => panic!("parse cannot fail with {other:?}"),
    }
});
