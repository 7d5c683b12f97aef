//! Every dependency must be usable in an MIT OR Apache-2.0 project: no copyleft-only licence, no
//! missing licence. Reads the locked dependency graph with `cargo metadata`.

/// Licences that are fine on their own (any one of them in an `OR` is enough).
const PERMISSIVE: &[&str] = &[
    "MIT",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "Unicode-3.0",
    "Unlicense",
    "CC0-1.0",
    "MIT-0",
    "BSL-1.0",
    "CDLA-Permissive-2.0",
    "0BSD",
];

/// True when an SPDX-ish expression allows permissive use: every `AND` part has a permissive
/// alternative.
fn acceptable(expr: &str) -> bool {
    let expr = expr.replace('/', " OR ").replace(['(', ')'], " ");
    expr.split(" AND ").all(|part| {
        part.split(" OR ")
            .map(str::trim)
            .any(|alt| PERMISSIVE.contains(&alt))
    })
}

#[test]
fn all_dependencies_have_permissive_licences() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut bad = Vec::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().unwrap_or("?");
        match p["license"].as_str() {
            Some(l) if acceptable(l) => {}
            other => bad.push(format!("{name}: {other:?}")),
        }
    }
    assert!(
        bad.is_empty(),
        "dependencies without a permissive licence: {bad:?}"
    );
}

#[test]
fn the_checker_rejects_copyleft() {
    assert!(acceptable("MIT OR Apache-2.0 OR LGPL-2.1-or-later"));
    assert!(acceptable("ISC AND (Apache-2.0 OR ISC)"));
    assert!(!acceptable("GPL-3.0"));
    assert!(!acceptable("MIT AND GPL-2.0"));
}
