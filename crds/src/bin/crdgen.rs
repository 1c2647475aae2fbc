//! Writes the CRD YAML of the five kinds, one file per kind, to `crds/manifests/` (for
//! `kubectl apply -f`) and to the Helm chart's copy in `charts/keygate/files/crds/` (Helm can read
//! no file outside its chart); or only to the folder given. `crdgen_in_sync` fails when either
//! copy differs from the types, so both always match.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dirs = match std::env::args_os().nth(1) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => keygate_crds::resources::crd_dirs().to_vec(),
    };
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for (file, yaml) in keygate_crds::resources::crd_files() {
            std::fs::write(dir.join(&file), yaml)?;
            println!("wrote {}", dir.join(file).display());
        }
    }
    Ok(())
}
