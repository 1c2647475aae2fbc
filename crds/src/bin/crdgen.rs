//! Writes the CRD YAML of the five kinds to `crds/manifests/` (or the folder given), one file
//! per kind. CI regenerates and diffs it, so the committed YAML always matches the types.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests"));
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in keygate_crds::resources::crd_files() {
        std::fs::write(dir.join(&file), yaml)?;
        println!("wrote {}", dir.join(file).display());
    }
    Ok(())
}
