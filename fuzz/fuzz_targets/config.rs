//! The config parser on arbitrary text: never panics, and every error it reports says something.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|text: &str| {
    if let Err(errors) = scopegate::config::parse(Path::new("fuzz.yaml"), text) {
        assert!(!errors.problems.is_empty(), "an error with no problem");
        for p in &errors.problems {
            assert!(
                !p.message.trim().is_empty(),
                "a problem without a message: {p:?}"
            );
            assert_eq!(p.file, Path::new("fuzz.yaml"));
        }
        assert!(!errors.to_string().is_empty());
    }
});
