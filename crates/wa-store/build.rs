// New files in migrations/ must rebuild the embedded migrator.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
