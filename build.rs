//! Rebuild the test binaries when a scenario file is added or removed, so rstest's `#[files]`
//! turns every file in `scenarios/` into its own test case without a clean build.
fn main() {
    println!("cargo:rerun-if-changed=scenarios");
}
