//! Records the commit the binary is built from, for `portcullis --version` and the
//! `portcullis_build_info` metric. `PORTCULLIS_COMMIT` in the build environment wins (a container
//! build has no `.git`); otherwise git is asked; without either it is "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=PORTCULLIS_COMMIT");
    // A new commit moves HEAD or the branch it names: only then is the answer different.
    for path in ["HEAD", "refs/heads"] {
        if let Some(file) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(file) = git(&["rev-parse", "--git-path", &reference])
    {
        println!("cargo:rerun-if-changed={file}");
    }
    let commit = std::env::var("PORTCULLIS_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PORTCULLIS_COMMIT={commit}");
}
