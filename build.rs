//! Rebuild when `scenarios/` changes, for two reasons: rstest's `#[files]` turns every file in
//! it into its own test case, and the binary carries the bundled scenarios (`racegate scenarios`,
//! and `run`/`probe` outside a checkout), generated here as a list of `include_str!`s.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=scenarios");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    // Sorted: the bundled set's order is the listing's and the gate's, whatever the filesystem.
    files.sort();
    let mut out = String::from("/// The bundled scenario files: (file name, contents), by name.\n");
    out.push_str("pub(crate) const BUNDLED: &[(&str, &str)] = &[\n");
    for path in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let target = Path::new(&std::env::var("OUT_DIR").unwrap_or_default()).join("bundled.rs");
    if let Err(e) = std::fs::write(&target, out) {
        panic!("could not write {}: {e}", target.display());
    }
}
